"""Tests for steerlab.erasure.evaluation and steerlab.views.erasure on synthetic data.

The data are Gaussian clouds whose label shifts a few directions, so the answers are known:
LEACE (rank 1 for two classes) leaves a held-out probe at the majority rate, INLP needs about
as many directions as carry the label, the most informative "site" is the best.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
import torch
from threadpoolctl import threadpool_limits

from steerlab.erasure.evaluation import (
    RankCurve,
    RankCurves,
    SiteProbe,
    accuracy_vs_rank,
    best_site,
    directions_needed,
    evaluate_eraser,
    inlp_prefix,
    inlp_sweep_point,
    mean_difference_cosine,
    probe_by_site,
    rank_curve,
    rlace_rescaled,
)
from steerlab.erasure.inlp import InlpConfig, inlp
from steerlab.erasure.leace import AffineEraser, LeaceEraser, majority_rate
from steerlab.erasure.rlace import RlaceConfig
from steerlab.views.erasure import (
    accuracy_vs_rank_figure,
    erasure_pca_figure,
    probe_by_site_figure,
)

# a held-out probe on n_test = 400 balanced rows that learned nothing scores the majority rate
# up to which side of 0 round-off puts its (constant) decision value: within 3 binomial
# standard deviations, 3 · 0.5 / sqrt(400) = 0.075
CHANCE_TOL = 0.075


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small problems on a shared 2-core runner: one torch and one BLAS thread (sklearn's probes
    # ran 25x slower with an oversubscribed BLAS pool, measured)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def _data(n: int = 1200, d: int = 24, informative: int = 3, seed: int = 0):
    """Label y shifts ``informative`` orthogonal directions; train/test split 2:1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, :informative] += 1.5 * (2 * y[:, None] - 1).double()
    x = x * 3 + 5  # off-centre and scaled, as real activations are
    cut = 2 * n // 3
    return x[:cut], y[:cut], x[cut:], y[cut:]


@pytest.fixture(scope="module")
def data():
    return _data()


def test_evaluate_eraser(data):
    xtr, ytr, xte, yte = data
    ev = evaluate_eraser(LeaceEraser.fit(xtr, ytr), xtr, ytr, xte, yte)
    assert ev.rank == 1
    assert ev.accuracy_before > 0.95
    assert abs(ev.accuracy - ev.majority) <= CHANCE_TOL
    assert ev.majority == majority_rate(yte)
    # the constant baseline: the training majority class's share of the test labels
    top = int(torch.bincount(ytr).argmax())
    assert ev.constant == float((yte == top).double().mean())
    assert math.isclose(ev.constant, ev.majority) or math.isclose(ev.constant, 1 - ev.majority)
    assert abs(ev.accuracy - ev.constant) <= CHANCE_TOL  # the probe learned ~nothing
    # relative_mse is mse over the total variance, recomputed independently in float64
    total = ((xte - xte.mean(0)) ** 2).sum(1).mean()
    assert math.isclose(ev.relative_mse, ev.mse / float(total), rel_tol=1e-12)
    assert 0 < ev.relative_mse < 1


def test_accuracy_vs_rank_three_methods(data):
    xtr, ytr, xte, yte = data
    curves = accuracy_vs_rank(
        xtr, ytr, xte, yte,
        rlace_ranks=(1, 2),
        rlace_config=RlaceConfig(max_iter=400, eval_every=100, lr_P=0.01, lr_predictor=0.01),
        inlp_config=InlpConfig(n_iter=6, epsilon=0.0),
    )  # fmt: skip
    assert set(curves.curves) == {"leace", "rlace", "inlp"}
    for c in curves.curves.values():
        assert c.ranks[0] == 0 and c.accuracy[0] == curves.accuracy_before and c.mse[0] == 0
        assert c.erasers[0] is None and len(c.ranks) == len(c.accuracy) == len(c.erasers)
    leace = curves.curves["leace"]
    assert leace.ranks == [0, 1] and abs(leace.accuracy[1] - curves.majority) <= CHANCE_TOL
    assert curves.curves["rlace"].ranks == [0, 1, 2]
    inl = curves.curves["inlp"]
    assert inl.ranks == list(range(len(inl.ranks)))  # one direction per binary classifier
    assert inl.accuracy[-1] < inl.accuracy[0] - 0.2
    # the rank-r point is exactly the first r directions of one run
    full = inl.erasers[-1]
    assert torch.equal(inl.erasers[1].proj_left, full.proj_left[:, :1])
    json_ = curves.to_json()
    assert set(json_["curves"]["inlp"]) == {"ranks", "accuracy", "mse"}


def test_inlp_needs_about_as_many_directions_as_carry_the_label():
    xtr, ytr, xte, yte = _data(informative=3, d=16)
    curves = accuracy_vs_rank(xtr, ytr, xte, yte, methods=("inlp",),
                              inlp_config=InlpConfig(n_iter=10, epsilon=0.0))  # fmt: skip
    needed = directions_needed(curves.curves["inlp"], curves.majority, tolerance=CHANCE_TOL)
    # the label lives in span(e1, e2, e3): a rank-1 cut of its mean difference leaves the
    # class-conditional variances and finite-sample noise, so INLP may need a few more
    assert needed is not None and 1 <= needed <= 6


def test_inlp_prefix():
    xtr, ytr, _, _ = _data()
    e = inlp(xtr, ytr, InlpConfig(n_iter=4, epsilon=0.0))
    assert torch.equal(inlp_prefix(e, e.rank).P, e.P)
    assert inlp_prefix(e, 0).edit_rank == 0
    x = xtr[:5]
    assert torch.equal(inlp_prefix(e, 0)(x), x)
    with pytest.raises(ValueError, match="rank must be in"):
        inlp_prefix(e, e.rank + 1)


def test_rlace_rescaled_is_scale_free(data):
    xtr, ytr, _, _ = data
    cfg = RlaceConfig(max_iter=20, eval_every=10, lr_P=0.02, lr_predictor=0.02)
    a = rlace_rescaled(xtr, ytr, cfg)
    b = rlace_rescaled(100.0 * xtr, ytr, cfg)  # the game sees the same unit-RMS inputs
    # x / s and (100 x) / (100 s) differ by round-off (1e-16 relative) over 20 SGD steps
    assert torch.allclose(a.P, b.P, atol=1e-9)
    assert torch.allclose(100.0 * a.bias, b.bias, rtol=1e-9)
    assert math.isclose(b.meta["input_scale"], 100.0 * a.meta["input_scale"], rel_tol=1e-12)
    with pytest.raises(ValueError, match="zero variance"):
        rlace_rescaled(torch.ones(10, 3, dtype=torch.float64), torch.arange(10) % 2)


def test_directions_needed():
    c = RankCurve("inlp", [0, 1, 2, 3], [0.99, 0.8, 0.53, 0.5], [0, 1, 2, 3], [None] * 4)
    assert directions_needed(c, 0.5, 0.02) == 3
    assert directions_needed(c, 0.5, 0.05) == 2
    assert directions_needed(c, 0.3, 0.02) is None


def test_probe_by_site_and_best_site():
    g = torch.Generator().manual_seed(1)
    n = 400
    y = torch.randint(0, 2, (n,), generator=g)
    noise = torch.randn(n, 8, generator=g)
    weak, strong = noise.clone(), noise.clone()
    weak[:, 0] += 0.5 * y
    strong[:, 0] += 4.0 * y
    train, test = torch.arange(n) < 300, torch.arange(n) >= 300
    scores = probe_by_site({"resid_post.0": noise, "resid_post.1": weak, "resid_post.2": strong},
                           y, train, test)  # fmt: skip
    assert best_site(scores) == "resid_post.2"
    assert scores["resid_post.2"].accuracy > scores["resid_post.0"].accuracy
    # ties in accuracy go to the lower log-loss
    tie = {"a": SiteProbe(1.0, 0.2), "b": SiteProbe(1.0, 0.05), "c": SiteProbe(0.9, 0.01)}
    assert best_site(tie) == "b"
    with pytest.raises(ValueError, match="rows"):
        probe_by_site({"x": noise[:10]}, y, train, test)
    with pytest.raises(ValueError, match="no sites"):
        best_site({})


def test_bad_input(data):
    xtr, ytr, xte, yte = data
    with pytest.raises(ValueError, match="width mismatch"):
        accuracy_vs_rank(xtr, ytr, xte[:, :5], yte, methods=("leace",))
    with pytest.raises(ValueError, match="unknown methods"):
        accuracy_vs_rank(xtr, ytr, xte, yte, methods=("pca",))
    with pytest.raises(ValueError, match="single class"):
        accuracy_vs_rank(xtr, torch.zeros_like(ytr), xte, yte, methods=("leace",))
    with pytest.raises(ValueError, match="rlace_ranks"):
        accuracy_vs_rank(xtr, ytr, xte, yte, methods=("rlace",), rlace_ranks=(0,))
    with pytest.raises(ValueError, match="width mismatch"):
        evaluate_eraser(AffineEraser(torch.zeros(3, 1), torch.zeros(1, 3)), xtr, ytr, xte, yte)


# --- views ------------------------------------------------------------------------------------


def test_figures(data):
    xtr, ytr, xte, yte = data
    curves = RankCurves(
        {"leace": RankCurve("leace", [0, 1], [0.99, 0.5], [0.0, 1.0], [None, None]),
         "inlp": RankCurve("inlp", [0, 1, 2], [0.99, 0.7, 0.5], [0.0, 1.0, 2.0], [None] * 3)},
        0.5, 0.99, 0.48,
    )  # fmt: skip
    fig = accuracy_vs_rank_figure(curves)
    assert isinstance(fig, go.Figure) and [t.name for t in fig.data] == ["LEACE", "INLP"]
    assert len(fig.layout.shapes) == 2  # majority and constant lines (they differ here)
    assert accuracy_vs_rank_figure(curves.to_json()).data[1].y == (0.99, 0.7, 0.5)
    e = LeaceEraser.fit(xtr, ytr)
    for basis in ("own", "before"):
        fig = erasure_pca_figure(xte, {"LEACE": e(xte)}, yte, class_names=["f", "m"],
                                 basis=basis)  # fmt: skip
        assert len(fig.data) == 4  # two panels x two classes
        assert {t.name for t in fig.data} == {"f", "m"}
    with pytest.raises(ValueError, match="labels"):
        erasure_pca_figure(xte, e(xte), yte[:3])
    scores = {"resid_post.0": SiteProbe(0.7, 0.6), "resid_post.1": SiteProbe(0.9, 0.3)}
    fig = probe_by_site_figure(scores, 0.5)
    assert fig.data[1].name == "best: resid_post.1"
    as_json = {k: v._asdict() for k, v in scores.items()}  # as summary.json stores them
    assert probe_by_site_figure(as_json).data[1].name == "best: resid_post.1"


# --- data -------------------------------------------------------------------------------------


def test_gender_data_is_balanced_and_regenerates_exactly():
    import importlib.util
    import json
    from collections import Counter

    from steerlab.datasets.concepts import gender_path, load_concept

    spec = importlib.util.spec_from_file_location(
        "make_gender", gender_path().with_name("make_gender.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.build()
    assert [json.dumps(r) for r in rows] == gender_path().read_text().splitlines()
    assert len(rows) >= 1000
    cells = Counter((r["template"], r["profession"], r["label"]) for r in rows)
    assert len(set(cells.values())) == 1  # every (template, profession, gender) cell equal
    train_names = {r["name"] for r in rows if r["split"] == "train"}
    test_names = {r["name"] for r in rows if r["split"] == "test"}
    assert not (train_names & test_names) - {None}  # held-out rows name unseen people
    for r in rows:
        for a, b in r["cues"]:
            assert r["text"][a:b].lower() in {r["name"] and r["name"].lower(), "she", "he",
                                              "her", "him", "his"}  # fmt: skip
    data = load_concept(n=100, seed=1)
    assert len(data.texts) == 100 and data.class_names == ["female", "male"]
    assert data.labels.dtype == torch.int64 and data.test.dtype == torch.bool


def test_mean_difference_cosine_closed_forms():
    x, y, _, _ = _data(seed=3)
    diff = x[y == 1].mean(0) - x[y == 0].mean(0)
    # float64 means of 800 rows and one SVD: round-off ~1e-15
    assert mean_difference_cosine(diff, x, y) == pytest.approx(1.0, abs=1e-12)
    assert mean_difference_cosine(-3 * diff, x, y) == pytest.approx(1.0, abs=1e-12)
    ortho = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    ortho -= (ortho @ diff) / (diff @ diff) * diff
    assert mean_difference_cosine(ortho, x, y) == pytest.approx(0.0, abs=1e-12)
    # three classes: any combination of the class-mean differences lies in their span
    g = torch.Generator().manual_seed(1)
    y3 = torch.randint(0, 3, (x.shape[0],), generator=g)
    x3 = x + torch.eye(x.shape[1], dtype=x.dtype)[y3 + 5] * 2
    mus = [x3[y3 == c].mean(0) for c in range(3)]
    v = 0.3 * (mus[0] - mus[2]) - 1.7 * (mus[1] - mus[2])
    assert mean_difference_cosine(v, x3, y3) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="entries"):
        mean_difference_cosine(diff[:3], x, y)


def test_rank_curve_and_inlp_sweep_point():
    xtr, ytr, xte, yte = _data(seed=4)
    leace = LeaceEraser.fit(xtr, ytr)
    c = rank_curve("leace", [leace], xtr, ytr, xte, yte)
    ref = accuracy_vs_rank(xtr, ytr, xte, yte, methods=("leace",)).curves["leace"]
    assert c.ranks == ref.ranks and c.accuracy == ref.accuracy and c.mse == ref.mse
    # the sweep point scores the prefixes of one run, exactly as inlp_prefix + rank_curve
    cfg = InlpConfig(n_iter=4, C=1e-4, epsilon=None)
    pt = inlp_sweep_point(xtr, ytr, xte, yte, cfg, ranks=(1, 2, 4, 99))
    full = inlp(xtr, ytr, cfg)
    again = rank_curve("inlp", [inlp_prefix(full, r) for r in (1, 2, 4)], xtr, ytr, xte, yte)
    assert pt.curve.ranks == [0, 1, 2, 4]  # 99 is beyond the run and left out
    assert pt.curve.accuracy == again.accuracy
    assert pt.C == 1e-4
    assert pt.first_direction_cosine == pytest.approx(
        mean_difference_cosine(full.proj_left[:, 0], xtr, ytr), abs=1e-12
    )
