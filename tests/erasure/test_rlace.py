"""Tests for steerlab.erasure.rlace: the fantope projection against its definition and closed
forms, and the R-LACE game on synthetic data with a planted linear concept.

The games use larger learning rates and fewer iterations than the paper's defaults (which
target 50k steps on real embeddings): the planted concepts here are found in ~1k steps.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import steerlab.artifacts
from steerlab.erasure.leace import erasure_report
from steerlab.erasure.rlace import RlaceConfig, RlaceEraser, fantope_project, rlace

# float64 eigh/reconstruction on d <= 12 matrices of norm <= ~100: round-off ~ 1e-13
ATOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the game is thousands of tiny float64 ops: OpenMP threads only add contention
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]


# --- fantope projection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "a,k,expected",
    [
        # one dominant eigenvalue: clip(λ − θ) = (1, 0, 0, 0) for any θ in [0.5, 2]
        ([3.0, 0.5, 0.2, -1.0], 1, [1.0, 0.0, 0.0, 0.0]),
        # θ = −0.15: (1, 0.65, 0.35, 0)
        ([3.0, 0.5, 0.2, -1.0], 2, [1.0, 0.65, 0.35, 0.0]),
        # all active: θ = (1.2 − 1)/3 = 1/15
        ([0.6, 0.5, 0.1], 1, [0.6 - 1 / 15, 0.5 - 1 / 15, 0.1 - 1 / 15]),
        # already in the fantope: unchanged
        ([0.5, 0.25, 0.25, 0.0], 1, [0.5, 0.25, 0.25, 0.0]),
        # zero matrix: spread evenly, θ = −k/d
        ([0.0, 0.0, 0.0, 0.0, 0.0], 2, [0.4] * 5),
        # k = d: the identity
        ([5.0, -2.0, 0.3], 3, [1.0, 1.0, 1.0]),
    ],
)
def test_fantope_diagonal_closed_form(a, k, expected):
    A = torch.diag(torch.tensor(a, dtype=torch.float64))
    E = torch.diag(torch.tensor(expected, dtype=torch.float64))
    assert torch.allclose(fantope_project(A, k), E, atol=ATOL, rtol=0)
    # orthogonal invariance: Π(V A Vᵀ) = V Π(A) Vᵀ
    V = _rotation(len(a), 0)
    assert torch.allclose(fantope_project(V @ A @ V.T, k), V @ E @ V.T, atol=ATOL, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 12),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_fantope_definition(d, data, seed, scale):
    k = data.draw(st.integers(1, d))
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) * scale
    A = (A + A.T) / 2
    Pi = fantope_project(A, k)
    lam = torch.linalg.eigvalsh(Pi)
    # in the fantope: symmetric, eigenvalues in [0, 1], trace k
    assert torch.allclose(Pi, Pi.T, atol=ATOL, rtol=0)
    assert lam.min() >= -ATOL and lam.max() <= 1 + ATOL
    assert abs(float(torch.trace(Pi)) - k) <= ATOL
    # a projection: projecting again changes nothing
    assert torch.allclose(fantope_project(Pi, k), Pi, atol=ATOL, rtol=0)
    # closest point: the variational inequality <A − Π, F − Π> <= 0 for every F in the fantope
    # (checked on random members: rank-k projections, their mixtures, and projected matrices)
    for _ in range(5):
        U = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :k]
        W = fantope_project(torch.randn(d, d, generator=g, dtype=torch.float64), k)
        for F in (U @ U.T, (U @ U.T + W) / 2, W):
            inner = float(((A - Pi) * (F - Pi)).sum())
            assert inner <= ATOL * max(1.0, scale) * d
            assert torch.dist(A, Pi) <= torch.dist(A, F) + ATOL * max(1.0, scale)


def test_fantope_bad_input():
    with pytest.raises(ValueError, match="rank k"):
        fantope_project(torch.eye(3, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="square"):
        fantope_project(torch.zeros(2, 3), 1)


# --- the game -------------------------------------------------------------------------------


def _planted(seed: int, n_classes: int = 2, d: int = 12, n: int = 2500):
    """Isotropic Gaussian x; the label is a deterministic function of x's projection onto a
    planted subspace (rank 1 for binary, rank 2 for 3 classes: sectors of a plane). Removing
    that subspace exactly leaves x independent of the label."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 1
    if n_classes == 2:
        B = torch.nn.functional.normalize(
            torch.randn(d, 1, generator=g, dtype=torch.float64), dim=0
        )
        y = ((X - 1) @ B[:, 0] > 0).long()
    else:
        B = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))[0]
        c = (X - 1) @ B
        angle = torch.atan2(c[:, 1], c[:, 0]) + torch.pi
        y = (angle / (2 * torch.pi) * n_classes).long().clamp(max=n_classes - 1)
    return X, y, B


def _fast(rank: int, **kw) -> RlaceConfig:
    # a faster P (lr 0.1) escapes the saddle where a rank-2 P has found one of two planted
    # directions; 1000 steps suffice on these 12-d problems (5 seeds tried, all within 3 points)
    base = dict(
        rank=rank, max_iter=1000, eval_every=250, lr_P=0.1, lr_predictor=0.02, momentum=0.9,
        batch_size=2048, epsilon=0.001,
    )  # fmt: skip
    return RlaceConfig(**{**base, **kw})


def _check_projection(eraser: RlaceEraser, d: int, k: int) -> None:
    P = eraser.P
    assert torch.allclose(P, P.T, atol=ATOL, rtol=0)
    assert torch.allclose(P @ P, P, atol=ATOL, rtol=0)
    assert eraser.edit_rank == k and abs(float(torch.trace(P)) - k) <= ATOL
    assert torch.linalg.matrix_rank(eraser.Q) == d - k


def test_rank1_binary_reaches_majority():
    X, y, B = _planted(0)
    eraser = rlace(X[:1500], y[:1500], _fast(1))
    _check_projection(eraser, 12, 1)
    rep = erasure_report(eraser, X[:1500], y[:1500], X[1500:], y[1500:])
    assert rep.accuracy_before > 0.95
    assert abs(rep.accuracy - rep.majority) <= 0.05  # the bar for rank-1 R-LACE
    # it found the planted direction: |cos| of the principal angle (a probe on the residual
    # sin θ·(w·x) of a deterministic label scores 0.5 + sin θ/π, so 0.97 is ~8 points at most)
    assert float(torch.linalg.svdvals(eraser.proj_left.T @ B).min()) > 0.97
    # the Subspace erases exactly like the (orthogonal) eraser
    assert torch.allclose(eraser.subspace.erase(X), eraser(X), atol=ATOL, rtol=0)
    assert eraser.meta["best"]["iter"] in [h["iter"] for h in eraser.meta["history"]]


def test_multiclass_rank2():
    X, y, B = _planted(1, n_classes=3)
    eraser = rlace(X[:1500], y[:1500], _fast(2))
    _check_projection(eraser, 12, 2)
    rep = erasure_report(eraser, X[:1500], y[:1500], X[1500:], y[1500:])
    assert rep.accuracy_before > 0.8
    assert abs(rep.accuracy - rep.majority) <= 0.05
    assert float(torch.linalg.svdvals(eraser.proj_left.T @ B).min()) > 0.97


def test_explicit_dev_set_linear_and_early_stop():
    X, y, _ = _planted(2, d=8, n=1500)
    cfg = _fast(1, affine=False, epsilon=0.05, max_iter=3000, eval_every=100)
    eraser = rlace(X[:1000], y[:1000], cfg, x_dev=X[1000:], z_dev=y[1000:])
    assert eraser.bias is None
    torch.testing.assert_close(eraser(X), X - X @ eraser.P)  # the paper's x(I − P)
    last = eraser.meta["history"][-1]
    assert last["iter"] < 2999  # stopped early: accuracy within 0.05 of majority
    assert abs(last["dev_accuracy"] - eraser.meta["majority"]) < 0.05


def test_save_load_round_trip(tmp_path):
    X, y, _ = _planted(3, d=6, n=400)
    eraser = rlace(X, y, _fast(1, max_iter=20, eval_every=10))
    eraser.save(tmp_path / "r")
    loaded = steerlab.artifacts.load(tmp_path / "r")
    assert type(loaded) is RlaceEraser and loaded.meta == eraser.meta
    assert torch.equal(loaded(X), eraser(X))
    assert loaded.meta["config"]["rank"] == 1


def test_seeded_runs_are_reproducible():
    X, y, _ = _planted(4, d=6, n=400)
    a = rlace(X, y, _fast(1, max_iter=30, eval_every=10))
    b = rlace(X, y, _fast(1, max_iter=30, eval_every=10))
    assert torch.equal(a.P, b.P)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"rank": 0}, "rank"),
        ({"lr_P": -1.0}, "lr_P"),
        ({"dev_fraction": 1.0}, "dev_fraction"),
        ({"momentum": 1.0}, "momentum"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        RlaceConfig(**kw)


def test_bad_input():
    X, y, _ = _planted(5, d=4, n=100)
    with pytest.raises(ValueError, match="single class"):
        rlace(X, torch.zeros(100, dtype=torch.long), _fast(1))
    with pytest.raises(ValueError, match="more classes than samples"):
        rlace(X[:3], torch.tensor([0, 7, 1]), _fast(1))
    with pytest.raises(ValueError, match="exceeds d_model"):
        rlace(X, y, _fast(5))
    bad = X.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        rlace(bad, y, _fast(1))
    with pytest.raises(ValueError, match="width mismatch"):
        rlace(X, y, _fast(1), x_dev=X[:, :3], z_dev=y)
    with pytest.raises(ValueError, match="both"):
        rlace(X, y, _fast(1), x_dev=X)
    eraser = rlace(X, y, _fast(1, max_iter=5, eval_every=5))
    with pytest.raises(ValueError, match="width mismatch"):
        eraser(torch.zeros(2, 5, dtype=torch.float64))
