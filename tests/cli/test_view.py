"""`steerlab store info` and `steerlab view ...`: saved stores, artifacts and results become
tables and HTML pages, with the tokenizer at most (no model weights), one line per failure."""

from __future__ import annotations

import json

import pytest
import torch

import steerlab.cli.common as common
from steerlab.cli import main
from steerlab.erasure.leace import LeaceEraser
from steerlab.erasure.scrub import EraserEdit
from steerlab.probes.linear import fit_ridge
from steerlab.probes.pls import PLSConfig, fit_pls
from steerlab.steering.vectors import SteeringVector

MODEL = "smollm2-135m-instruct"


@pytest.fixture
def weights_refused(monkeypatch):
    """Views and `store info` need the tokenizer at most: loading weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(common, "load_model", refuse)


def view(*argv: str) -> str:
    """Run `steerlab view ...` and return the page it wrote."""
    out = argv[argv.index("--out") + 1]
    assert main(["view", *argv]) == 0
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("<!DOCTYPE html>") and "plotly" in text
    return text


# --------------------------------------------------------------------------- store info


def test_store_info_table_and_json(store, capsys, weights_refused):
    assert main(["store", "info", str(store.path), "--verify"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        key, _, value = line.strip().partition("  ")
        rows[key] = value.strip()
    assert rows["model"] == MODEL and rows["tokens"] == f"{store.n_tokens:,}"
    assert rows["site resid_post.0"] == "width 16" and rows["complete"] == "yes"
    assert rows["shards"] == str(store.n_shards) and rows["checksums"].startswith("ok")
    assert main(["store", "info", str(store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_tokens"] == store.n_tokens and info["sites"] == {"resid_post.0": 16}


# --------------------------------------------------------------------------- figures


def test_view_pca(store, tmp_path, weights_refused):
    html = view("pca", str(store.path), "--out", str(tmp_path / "pca.html"), "--max-points", "50")
    assert "resid_post.0" in html and "attention sink" in html


def test_view_probe_results(tmp_path, weights_refused):
    rows = [{"layer": i, "task_acc": 0.9, "control_acc": 0.8, "selectivity": 0.1,
             "majority": 0.4} for i in range(3)]  # fmt: skip
    (tmp_path / "linear.json").write_text(json.dumps({"tokens": {"rows": rows}}))
    html = view("probe", str(tmp_path / "linear.json"), "--out", str(tmp_path / "a.html"))
    assert "selectivity" in html
    pls = {"entities": {"birth_year": {"all": {"rows": [{"layer": 0, "r2": 0.5},
                                                        {"layer": 1, "r2": 0.7}]}}},
           "flips": {"rows": [{"direction": "pls", "alpha": -8, "flip_rate": 0.4, "n": 10,
                               "flips": 4}, {"direction": "random", "alpha": -8,
                                             "flip_rate": 0.1, "n": 20, "flips": 2}]}}  # fmt: skip
    (tmp_path / "pls.json").write_text(json.dumps(pls))
    html = view("probe", str(tmp_path / "pls.json"), "--out", str(tmp_path / "b.html"))
    assert "held-out R²" in html and "answer-flip rate against α" in html
    run = {"model": "model", "site": "resid_post.1", "depth": 2, "rank": 8, "f1": 0.4,
           "dev_f1": 0.45}  # fmt: skip
    ast = {"runs": [run, {**run, "rank": 16, "f1": 0.5}, {**run, "depth": 1, "f1": 0.3},
                    {**run, "model": "random", "f1": 0.2}],
           "summary": {"best": run, "embeddings": {"f1": 0.25}, "paper": {"paper": 0.75}}}  # fmt: skip
    (tmp_path / "ast.json").write_text(json.dumps(ast))
    html = view("probe", str(tmp_path / "ast.json"), "--out", str(tmp_path / "c.html"))
    assert "F1 by layer" in html and "F1 by rank" in html


def test_view_probe_artifacts_over_a_store(store, tmp_path, weights_refused):
    x = store.site("resid_post.0").to_tensor().double()
    y = x[:, 0] - 2 * x[:, 3]
    fit_ridge(x, y).save(tmp_path / "ridge")
    html = view("probe", str(tmp_path / "ridge"), "--store", str(store.path), "--out",
                str(tmp_path / "r.html"))  # fmt: skip
    assert "probe prediction" in html
    fit_pls(x, y, PLSConfig(n_components=2)).probe.save(tmp_path / "pls")
    view("probe", str(tmp_path / "pls"), "--store", str(store.path), "--out",
         str(tmp_path / "p.html"))  # fmt: skip


def test_view_eraser(store, tmp_path, weights_refused):
    summary = {
        "majority": 0.5,
        "probe_by_site": {"resid_post.0": {"accuracy": 0.9, "log_loss": 0.3},
                          "resid_post.1": {"accuracy": 0.95, "log_loss": 0.2}},
        "accuracy_vs_rank": {"majority": 0.5, "constant": 0.5, "accuracy_before": 0.95,
                             "curves": {"leace": {"ranks": [0, 1], "accuracy": [0.95, 0.5],
                                                  "mse": [0.0, 1.0]}}},
    }  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = view("eraser", str(tmp_path / "summary.json"), "--out", str(tmp_path / "e.html"))
    assert "Probe accuracy by layer" in html and "Accuracy vs rank" in html
    x = store.site("resid_post.0").to_tensor().double()
    z = (x[:, 2] > 0).long()
    eraser = LeaceEraser.fit(x, z)
    eraser.save(tmp_path / "leace")
    view("eraser", str(tmp_path / "leace"), "--store", str(store.path), "--out",
         str(tmp_path / "l.html"))  # fmt: skip
    EraserEdit(eraser, "resid_post.0").save(tmp_path / "edit")  # the in-model form loads too
    html = view("eraser", str(tmp_path / "edit"), "--store", str(store.path), "--out",
                str(tmp_path / "m.html"))  # fmt: skip
    assert "before and after" in html


def test_view_sae(store, tmp_path, capsys, weights_refused, one_line):
    out = tmp_path / "run"
    assert main(["sae", "train", "--store", str(store.path), "--site", "resid_post.0", "--width",
                 "32", "--k", "4", "--batch-size", "32", "--tokens", "128", "--warmup-steps",
                 "2", "--init-tokens", "64", "--log-every", "1", "--out", str(out)]) == 0  # fmt: skip
    html = view("sae", str(out), "--out", str(tmp_path / "s.html"))
    assert "Training curves" in html and "Latent density" not in html
    html = view("sae", str(out), "--store", str(store.path), "--out", str(tmp_path / "t.html"))
    assert "Latent density" in html
    assert main(["sae", "eval", str(out), "--store", str(store.path), "--loss-windows", "0",
                 "--saelens", str(tmp_path / "sl")]) == 0  # fmt: skip
    html = view("sae", str(tmp_path / "sl"), "--out", str(tmp_path / "u.html"))
    assert "Latent density" in html  # from the saved sparsity
    capsys.readouterr()
    assert main(["view", "sae", str(tmp_path), "--out", str(tmp_path / "v.html")]) == 1
    assert "--store" in one_line(capsys.readouterr().err)


def test_view_vector_projects_a_stored_window(store, tmp_path, weights_refused):
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(16, generator=g)
    SteeringVector.from_direction(direction, "resid_post.0", norms=[1.0]).save(tmp_path / "v")
    html = view("vector", str(tmp_path / "v"), "--store", str(store.path), "--window", "3",
                "--out", str(tmp_path / "v.html"))  # fmt: skip
    # the projections shown equal h · v̂ computed here from the stored rows (hover values are
    # printed to 3 decimals; float64 on both sides, so the rounding agrees)
    rows = (store.site("doc_ids").to_tensor() == 3).nonzero().squeeze(1)
    h = store.site("resid_post.0")[rows].double()
    expected = h @ (direction.double() / direction.double().norm())
    for value in expected.tolist():
        assert f"projection {value:.3f}" in html


def test_view_sweep(tmp_path, weights_refused):
    row = {"concept": 0.1, "perplexity": 3.0, "repetition": 0.05, "fluency": 0.8,
           "relevance": 0.6, "combined_pos": 0.2, "combined_neg": 0.1}  # fmt: skip
    table = [{"label": f"a={a}", "alpha": a, "pole": None, **row} for a in (-0.2, 0.0, 0.2)]
    table += [{"label": "prompt+", "alpha": None, "pole": 1, **row}]
    (tmp_path / "sweep.json").write_text(json.dumps({"concept": "sentiment", "table": table}))
    html = view("sweep", str(tmp_path / "sweep.json"), "--out", str(tmp_path / "w.html"))
    assert "Strength sweep: sentiment" in html


def test_view_errors_are_one_line(store, tmp_path, capsys, weights_refused, one_line):
    (tmp_path / "other.json").write_text(json.dumps({"nothing": 1}))
    (tmp_path / "bad.json").write_text("{not json")
    cases = [
        (["probe", str(tmp_path / "other.json")], "no per-layer probe results"),
        (["probe", str(tmp_path / "bad.json")], "not a JSON file"),
        (["sweep", str(tmp_path / "missing.json")], "no such file"),
        (["eraser", str(tmp_path / "other.json")], "accuracy_vs_rank"),
        (["pca", str(store.path), "--site", "mlp_out.3"], "no site 'mlp_out.3'"),
        (["vector", str(tmp_path / "nothing")], "cfg.json"),
    ]
    for argv, message in cases:
        assert main(["view", *argv, "--out", str(tmp_path / "x.html")]) == 1, argv
        assert message in one_line(capsys.readouterr().err), argv
    assert not (tmp_path / "x.html").exists()
