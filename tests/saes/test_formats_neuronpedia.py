"""Neuronpedia export: files, columns and JSON types against a fixture in the layout Neuronpedia's
own exporter writes (tests/saes/fixtures/neuronpedia_export.json states the source), and the
values against the dashboard data they come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steerlab.saes import SaeConfig, build_sae
from steerlab.saes.io.neuronpedia import export_sae, read_export
from steerlab.steering.exchange import export_neuronpedia_vector
from steerlab.steering.vectors import SteeringVector
from steerlab.views.saes import logit_effects, top_activations
from tests.views.test_saes_views import small_store

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "neuronpedia_export.json").read_text())
TABLES = ("model", "sourceset", "source", "features", "activations")


def json_type(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return ("list", json_type(v[0]) if v else None)
    return type(v).__name__


def check_row(row: dict, expected: dict, table: str) -> None:
    assert set(row) == set(expected), (table, set(row) ^ set(expected))
    for key, ev in expected.items():
        et, gt = json_type(ev), json_type(row[key])
        if et is None or gt is None:  # nullable in the schema
            continue
        if isinstance(et, tuple) and isinstance(gt, tuple):
            assert None in (et[1], gt[1]) or et[1] == gt[1], (table, key, et, gt)
        else:
            assert et == gt, (table, key, et, gt)


def check_layout(source_dir: Path) -> dict:
    files = sorted(str(p.relative_to(source_dir)) for p in source_dir.rglob("*") if p.is_file())
    assert files == sorted(FIXTURE["files"])
    rows = read_export(source_dir)
    for table in TABLES:
        for row in rows[table]:
            check_row(row, FIXTURE[table], table)
    return rows


def test_sae_export_matches_the_fixture_and_the_dashboard(tmp_path, model):
    store = small_store(tmp_path / "store", model)
    torch.manual_seed(0)
    sae = build_sae(SaeConfig(d_in=model.d_model, d_sae=32, k=4, site="resid_post.3"))
    latents = [0, 5, 17]
    top = top_activations(sae, store, latents, n=3)
    eff = logit_effects(sae, model, latents, n=5)
    out = export_sae(sae, tmp_path / "np", top=top, effects=eff, store=store,
                     tokenizer=model.tokenizer, model_id="smollm2-135m", window=4, n_layers=30)  # fmt: skip
    assert out == tmp_path / "np" / "smollm2-135m" / "3-steerlab-res"
    rows = check_layout(out)
    feats = {r["index"]: r for r in rows["features"]}
    assert sorted(feats, key=int) == ["0", "5", "17"]
    for li, latent in enumerate(latents):
        f = feats[str(latent)]
        assert f["layer"] == "3-steerlab-res" and f["hookName"] == "blocks.3.hook_resid_post"
        # JSON stores float32 values as decimal float64: exact to float32 precision
        assert f["maxActApprox"] == pytest.approx(float(top.values[li, 0]), rel=1e-6)
        assert f["frac_nonzero"] == pytest.approx(float(top.density[li]), rel=1e-6)
        assert f["pos_str"] == [model.tokenizer.decode([t]) for t in eff.top_ids[li].tolist()]
        assert f["neg_values"] == pytest.approx(eff.bottom_values[li].tolist(), rel=1e-6)
        acts = [a for a in rows["activations"] if a["index"] == str(latent)]
        assert len(acts) == int((top.rows[li] >= 0).sum())
        for a, r, v in zip(acts, top.rows[li].tolist(), top.values[li].tolist()):
            # the context holds the dashboard's top token with its value (recomputed from the
            # store in float32: equal to rounding); a neighbour may fire harder
            assert min(abs(x - v) for x in a["values"]) <= 1e-5 * abs(v)
            assert a["maxValue"] >= v * (1 - 1e-5)
            assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
            assert len(a["tokens"]) == len(a["values"]) <= 2 * 4 + 1
            assert r >= 0


def test_vector_export_matches_the_fixture(tmp_path):
    v = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    sv = SteeringVector.from_direction(v, "resid_post.2,resid_post.4")
    paths = export_neuronpedia_vector(sv, tmp_path, model_id="tiny", label="joy", strength=4.0)
    assert [p.name for p in paths] == ["2-steerlab-vector", "4-steerlab-vector"]
    files = sorted(str(p.relative_to(paths[0])) for p in paths[0].rglob("*") if p.is_file())
    assert files == sorted(FIXTURE["files"])
    rows = read_export(paths[0])
    for table in ("model", "sourceset", "source", "features"):
        for row in rows[table]:
            check_row(row, FIXTURE[table], table)
    (f,) = rows["features"]
    assert f["hasVector"] is True and f["vectorLabel"] == "joy"
    assert f["hookName"] == "blocks.2.hook_resid_post" and f["vectorDefaultSteerStrength"] == 4.0
    assert f["vector"] == pytest.approx([0.6, 0.8, 0.0], abs=1e-7)  # unit direction, float32
