"""The AST-Probe recipe end to end on the embedded MiniLM (7 depths) and a few snippets.

The recipe's default random-weights depths (0, 5, 10, 15, 20) were chosen for SmolLM2's 30
blocks; on a smaller model the recipe must keep the ones the model has instead of stopping
after every probe was trained. The run must also resume from its results.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _recipe():
    name = "recipe_ast_probe_e2e"
    spec = importlib.util.spec_from_file_location(name, ROOT / "probes" / "ast_probe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ast_recipe")
    argv = ["--model", "minilm-l6", "--n-train", "24", "--n-dev", "8", "--n-test", "8",
            "--epochs", "2", "--layers", "0,3", "--ranks", "8,16", "--threads", "1",
            "--out", str(out)]  # fmt: skip
    _recipe().main(argv)
    return out, argv


def test_default_random_depths_fit_a_small_model(run):
    out, _ = run
    res = json.loads((out / "results.json").read_text())
    random_depths = sorted(r["depth"] for r in res["runs"] if r["model"] == "random")
    # MiniLM has depths 0..6: the default's 0 and 5 remain, plus the best depth (0 or 3)
    assert {0, 5} <= set(random_depths) and max(random_depths) <= 6
    best = res["summary"]["best"]
    assert best["depth"] in random_depths
    model_runs = {(r["depth"], r["rank"]) for r in res["runs"] if r["model"] == "model"}
    assert {(0, 128), (3, 128), (best["depth"], 8), (best["depth"], 16)} <= model_runs
    for r in res["runs"]:
        assert 0.0 <= r["f1"] <= 1.0, r
    assert res["data"]["straddling_tokens"] == 0
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "probe" / "cfg.json").is_file() and (out / "subspace" / "cfg.json").is_file()


def test_rerun_resumes_from_results(run, capsys):
    out, argv = run
    before = json.loads((out / "results.json").read_text())["runs"]
    _recipe().main(argv)
    assert "resuming: " in capsys.readouterr().out
    after = json.loads((out / "results.json").read_text())["runs"]
    assert after == before  # nothing retrained: the same records, in the same order
