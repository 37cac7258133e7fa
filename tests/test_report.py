"""steerlab.report: the stage cache, the sink rule, the atlas baseline against closed forms, and
the whole pipeline on a tiny GPT-2 (resume, recompute downstream, numbers checked against
independent recomputations, the page)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from steerlab.report import (
    Context,
    ReportConfig,
    atlas,
    capture,
    erasure,
    pca,
    probes,
    run_report,
    sae,
    steering,
)
from steerlab.report.atlas import orthonormal_rows, random_max_cosine
from steerlab.report.capture import sink_mask
from steerlab.report.page import Section, table_html, write_page
from steerlab.report.stages import StageCache, StageResult, stage_key

# --- pieces -----------------------------------------------------------------------------------


def test_sink_mask_against_its_definition():
    g = torch.Generator().manual_seed(0)
    n = 200
    pos = torch.arange(n) % 50
    norms = 100 + 10 * torch.rand(n, 3, generator=g)
    norms[7, 1] = 1000.0  # a massive later token at one site
    norms[0, :] = 5000.0  # first tokens are sinks whatever their norm
    norms[50, :] = 1.0
    got = sink_mask(norms, pos, 4.0)
    later = pos != 0
    median = norms[later].median(0).values
    expected = [bool(pos[i] == 0) or any(norms[i, j] > 4.0 * median[j] for j in range(3))
                for i in range(n)]  # fmt: skip
    assert got.tolist() == expected
    assert got.sum() == 4 + 1  # four windows, one massive token
    with pytest.raises(ValueError, match="norms must be"):
        sink_mask(norms[:10], pos, 4.0)


def test_random_max_cosine_matches_the_closed_form():
    # two random directions in R^d: E|cos| = Γ(d/2) / (√π Γ((d+1)/2))
    d, n = 40, 4000
    mean, sd = random_max_cosine(1, 1, d, n, seed=1)
    exact = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    # the standard error of a mean of 4000 draws is sd/√n ≈ 0.0014; 5 of them
    assert abs(mean - exact) < 5 * sd / math.sqrt(n)
    # a larger subspace against a direction: cos θ₁ = ‖projection‖, E cos² = a/d exactly
    m8, s8 = random_max_cosine(8, 1, d, n, seed=2)
    assert abs((m8**2 + s8**2) - 8 / d) < 0.01  # E[x²] = mean² + var, within sampling error


def test_orthonormal_rows_centres_class_rows():
    g = torch.Generator().manual_seed(0)
    common = torch.randn(16, generator=g)
    rows = torch.randn(4, 16, generator=g) + 50 * common  # softmax rows share a big offset
    plain = orthonormal_rows(rows)
    centred = orthonormal_rows(rows, center=True)
    assert plain.shape == (4, 16) and centred.shape == (3, 16)  # 4 classes: 3 differences
    torch.testing.assert_close(centred @ centred.T, torch.eye(3, dtype=torch.float64),
                               atol=1e-12, rtol=0)  # fmt: skip
    diffs = rows.double() - rows.double().mean(0)
    # every class difference lies in the centred span (residual at float64 rounding)
    resid = diffs - diffs @ centred.T @ centred
    assert resid.abs().max() < 1e-10
    with pytest.raises(ValueError, match="span nothing"):
        orthonormal_rows(torch.zeros(2, 4))


def test_stage_cache_round_trip_and_keys(tmp_path):
    cache = StageCache(tmp_path)
    key = stage_key("pca", {"a": 1}, {"capture": "k0"})
    assert key != stage_key("pca", {"a": 2}, {"capture": "k0"})
    assert key != stage_key("pca", {"a": 1}, {"capture": "k1"})
    res = StageResult({"x": [1.5, float("nan")]}, {"t": torch.arange(6.0).reshape(2, 3)[:, 1:]})
    cache.save("pca", key, {"a": 1}, {"capture": "k0"}, res, 1.25)
    loaded, meta = cache.load("pca", key)
    assert meta["seconds"] == 1.25 and meta["config"] == {"a": 1}
    assert loaded.data["x"][0] == 1.5 and math.isnan(loaded.data["x"][1])
    torch.testing.assert_close(loaded.tensors["t"], res.tensors["t"])
    assert cache.load("pca", "another key") is None
    (tmp_path / "pca" / "result.json").write_text("{broken")
    assert cache.load("pca", key) is None  # a damaged stage is recomputed, not trusted
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_page_escapes_text_and_inlines_plotly_once(tmp_path):
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    s1 = Section("a", "A <title>", "x < y & z", [("cap <1>", fig), (None, go.Figure(fig))],
                 blocks=[table_html(["n", "v"], [["<b>", 1234567], ["f", 0.12345]])])  # fmt: skip
    s1.config, s1.seconds = {"k": "<v>"}, 3.0
    path = write_page(tmp_path / "p.html", [s1], title="T & co", lead="lead <b>",
                      summary=[("model", "m<1>")])  # fmt: skip
    text = path.read_text()
    assert text.count("Plotly.newPlot") == 2
    assert len(re.findall(r"\* plotly\.js v\d", text)) == 1  # the bundle's banner, once
    assert "<script src=" not in text  # (the bundle mentions cdn.plot.ly only for map data)
    for raw in ("x < y & z", "A <title>", "cap <1>", "lead <b>", "<v>", "m<1>"):
        assert raw not in text
    assert "x &lt; y &amp; z" in text and "1,234,567" in text and "0.123" in text
    assert "computed in 3.0 s" in text and '<section id="a">' in text


# --- the pipeline on a tiny model ---------------------------------------------------------------

TINY = {
    "capture": capture.CaptureConfig(tokens=1024, seq_len=64),
    "pca": pca.PCAConfig(scatter_layers=(0, 2), max_points=150, max_sinks=10, atlas_components=6),
    "probes": probes.ProbesConfig(n_snippets=6, max_files=8, n_years=40, pls_max_components=3),
    "erasure": erasure.ErasureConfig(n_texts=100, lm_windows=2),
    "sae": sae.SaeStageConfig(width=96, k=4, epochs=2, batch_size=128, n_latents=2, n_contexts=3,
                              atlas_dims=3, loss_windows=2),
    "steering": steering.SteeringStageConfig(n_prompts=2, alphas=(-0.1, 0.1), max_new_tokens=3),
    "atlas": atlas.AtlasConfig(pca_dims=4, n_random=20),
}  # fmt: skip
SHARED = ReportConfig(model="tiny-gpt2", layers=(2, 0, 1), atlas_layer=1)


class Recorder:
    def __init__(self):
        self.events = []

    def start(self, stage, reused):
        self.events.append(("start", stage, reused))

    def progress(self, phase, done, total):
        assert 0 <= done <= total, (phase, done, total)
        self.events.append(("progress", phase))

    def finish(self, record):
        self.events.append(("finish", record.name, record.reused))


@pytest.fixture(scope="module")
def tiny(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    ctx = Context(out, SHARED, handle=tiny_models["gpt2"])
    rec = Recorder()
    first = run_report(out, SHARED, TINY, reporter=rec, context=ctx)
    return out, ctx, first, rec


def test_report_runs_every_stage_and_writes_the_page(tiny):
    out, ctx, first, rec = tiny
    names = ["capture", "pca", "probes", "erasure", "sae", "steering", "atlas"]
    assert [r.name for r in first.records] == names and not any(r.reused for r in first.records)
    assert [e for e in rec.events if e[0] == "finish"] == [("finish", n, False) for n in names]
    assert any(e[0] == "progress" for e in rec.events)
    html = first.path.read_text()
    for key in names:
        assert f'<section id="{key}">' in html
    assert len(re.findall(r"\* plotly\.js v\d", html)) == 1 and "<script src=" not in html
    assert html.count("Plotly.newPlot") >= 12
    # the PCA section states both numbers: rows fitted and rows drawn
    n_fit = ctx.results["pca"].data["per_site"]["resid_post.1"]["n_fit"]
    assert f"fitted on {n_fit:,} of the 1,024 captured rows" in html
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["stages"]) == set(names) and timings["total_s"] > 0
    assert len(timings["load_average"]) == 3


def test_pca_stage_against_sklearn(tiny):
    out, ctx, _, _ = tiny
    sink = ctx.results["capture"].tensors["sink"].bool()
    assert sink.sum() >= 1024 // 64  # at least the first token of every window
    x = ctx.store().site("resid_post.1").to_tensor(torch.float64).numpy()
    ref = PCA(svd_solver="full").fit(x[~sink.numpy()])
    spec = ctx.results["pca"].tensors["spectrum/resid_post.1"].double().numpy()
    # float64 covariance eigenvalues vs sklearn's float64 SVD, stored as float32: 1e-6 relative
    np.testing.assert_allclose(spec[:20], ref.explained_variance_ratio_[:20], rtol=1e-5, atol=1e-8)
    comps = ctx.results["pca"].tensors["atlas_components"].double().numpy()
    cos = np.abs((comps[:3] * ref.components_[:3]).sum(1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)  # same directions up to sign (float32)


def test_sae_stage_metrics_recomputed(tiny):
    from steerlab.saes import SaeConfig, build_sae

    _, ctx, _, _ = tiny
    res = ctx.results["sae"]
    model = build_sae(SaeConfig.from_dict(res.data["sae_config"]))
    model.load_state_dict({k[4:]: v for k, v in res.tensors.items() if k.startswith("sae/")})
    sink = ctx.results["capture"].tensors["sink"].bool()
    x = ctx.store().site("resid_post.1").to_tensor(torch.float32)
    seq = 64
    n_win = x.shape[0] // seq
    n_eval = max(1, round(n_win * TINY["sae"].held_out))
    held = torch.zeros(len(x), dtype=torch.bool)
    held[(n_win - n_eval) * seq :] = True
    xe = x[held & ~sink].double()
    with torch.no_grad():
        xh = model.reconstruct(xe.float()).double()
    fvu = float((xe - xh).pow(2).sum() / (xe - xe.mean(0)).pow(2).sum())
    # float32 SAE forward, float64 sums on both sides: agreement to float32 rounding
    assert res.data["metrics"]["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert res.data["metrics"]["l0"] == pytest.approx(TINY["sae"].k, abs=1e-9)  # TopK: exactly k
    ce = res.data["loss"]["ce"]
    assert ce["vs_zero"] == pytest.approx((ce["zero_abl"] - ce["spliced"]) /
                                          (ce["zero_abl"] - ce["clean"]), rel=1e-9)  # fmt: skip


def test_atlas_matrix_against_numpy(tiny):
    _, ctx, _, _ = tiny
    res = ctx.results["atlas"]
    names = res.data["names"]
    bases = {n: res.tensors[f"basis/{n}"].double().numpy() for n in names}
    cos = np.asarray(res.data["cos"])
    for i, a in enumerate(names):
        B = bases[a]
        np.testing.assert_allclose(B @ B.T, np.eye(len(B)), atol=1e-5)  # float32 storage
        for j, b in enumerate(names):
            if i != j:
                top = np.linalg.svd(B @ bases[b].T, compute_uv=False)[0]
                assert cos[i, j] == pytest.approx(min(top, 1.0), abs=1e-5)
    assert res.data["dims"][names.index("LEACE: gender")] == 1  # binary concept: rank 1
    assert res.data["dims"][names.index("probe: token roles")] <= 7  # 8 classes, centred


def test_other_stages_are_consistent(tiny):
    _, ctx, _, _ = tiny
    for r in ctx.results["probes"].data["tokens"]["rows"]:
        assert r["selectivity"] == pytest.approx(r["task_acc"] - r["control_acc"], abs=1e-12)
    assert [r["layer"] for r in ctx.results["probes"].data["years"]["rows"]] == [0, 1, 2]
    er = ctx.results["erasure"].data
    assert er["best_site"] in {"resid_post.0", "resid_post.1", "resid_post.2"}
    assert 0 <= er["report"]["accuracy"] <= 1 and er["report"]["rank"] == 1
    st = ctx.results["steering"].data
    assert {r["label"] for r in st["sweep"]["table"]} >= {"alpha=-0.1", "unsteered", "alpha=+0.1"}
    assert len(st["projection"]["tokens"]) == len(st["projection"]["scores"])


def test_rerun_reuses_and_a_change_recomputes_downstream(tiny):
    out, ctx, first, _ = tiny
    again = run_report(out, SHARED, TINY, context=ctx)
    assert all(r.reused for r in again.records)
    assert [r.seconds for r in again.records] == [r.seconds for r in first.records]
    changed = {**TINY, "sae": sae.SaeStageConfig(**{**TINY["sae"].__dict__, "k": 3})}
    third = run_report(out, SHARED, changed, context=ctx)
    recomputed = [r.name for r in third.records if not r.reused]
    assert recomputed == ["sae", "atlas"]  # the SAE and the one stage that reads it
    assert ctx.results["sae"].data["k"] == 3
    with pytest.raises(ValueError, match="--pca-scatter-layers"):
        run_report(out, SHARED, {**TINY, "pca": pca.PCAConfig(scatter_layers=(5,))}, context=ctx)


# --- the page in a real browser (marker browser; tests/views/chromium.py drives Chromium) ------


@pytest.mark.browser
def test_report_draws_in_chromium(tiny):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "chromium", Path(__file__).parent / "views" / "chromium.py"
    )
    chromium = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chromium)
    out, _, first, _ = tiny
    with chromium.open_or_skip() as browser:
        page = chromium.check_page(browser, first.path, "report-tiny")
    for title in ("The capture", "Principal directions per layer", "Probes", "Erasure",
                  "Sparse autoencoder", "Steering", "Subspace atlas"):  # fmt: skip
        assert title in page.text
    assert len(page.figures) >= 12
