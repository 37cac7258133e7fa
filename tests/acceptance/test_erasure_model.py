"""Done-means of concept erasure on the embedded model, through the recipe a new user runs.

At the best layer for gender (data/erasure/gender.jsonl, held-out names): a fresh probe after
LEACE scores what a probe that learned nothing scores (within 2 points of the majority rate or
of the constant training-majority probe: the majority class can flip between the splits);
R-LACE rank 1 removes most of the concept (measured 3.1 points above the majority on the full
data, see docs/results_probes.md); INLP's curve comes down (measured 0.98 -> 0.88 over 40
directions: it does not reach the majority, see docs/results_probes.md); in-model LEACE leaves a fresh
probe at chance and its cross-entropy cost on prose is finite and positive. Takes ~10 min of
one CPU core (the capture of 1,000 sentences at 30 layers and the R-LACE game dominate).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).parents[2] / "probes" / "erase_concept.py"


@pytest.mark.slow
def test_erase_gender_at_best_layer(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("erase_concept", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    # the recipe defines dataclasses, which look their module up in sys.modules
    monkeypatch.setitem(sys.modules, spec.name, recipe)
    spec.loader.exec_module(recipe)
    summary = recipe.main([
        "--n", "1000", "--rlace-ranks", "1", "--inlp-n-iter", "40", "--inlp-epsilon", "0",
        "--ce-tokens", "2048",
        "--out", str(tmp_path),
    ])  # fmt: skip
    maj = summary["majority"]
    curves = summary["accuracy_vs_rank"]["curves"]
    best = max(summary["probe_by_site"].values(), key=lambda v: v["accuracy"])["accuracy"]
    assert summary["probe_by_site"][summary["site"]]["accuracy"] == best
    assert summary["accuracy_vs_rank"]["accuracy_before"] > 0.9  # gender is decodable
    chance = (maj, summary["constant"])  # the majority rate; the constant probe's score

    def near_chance(acc: float, tol: float) -> bool:
        return min(abs(acc - c) for c in chance) <= tol

    before = summary["accuracy_vs_rank"]["accuracy_before"]
    assert near_chance(curves["leace"]["accuracy"][1], 0.02), curves["leace"]
    # R-LACE's game is stochastic: rank 1 leaves 0.539 on the full data (3.1 points above the
    # majority, docs/results_probes.md); on this 1,000-text subset check only that it removes most of it
    assert curves["rlace"]["accuracy"][1] < before - 0.25, curves["rlace"]
    inlp_acc = curves["inlp"]["accuracy"]
    assert inlp_acc[-1] < before - 0.05 and min(inlp_acc[1:]) < inlp_acc[1], inlp_acc
    lea = summary["in_model"]["leace"]
    assert near_chance(lea["probe_accuracy"], 0.05)  # captured through steer(), float32
    assert math.isfinite(lea["ce_increase"]) and lea["ce_increase"] > 0
    assert lea["n_tokens"] > 2000 - 20
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["site"] == summary["site"]
    assert (tmp_path / "report.html").stat().st_size > 100_000
    assert (tmp_path / "erasers" / "leace" / "cfg.json").is_file()
