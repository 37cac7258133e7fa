"""Tests for steerlab.erasure.rlace: the fantope projection against its definition and closed
forms, and the R-LACE game on synthetic data with a planted linear concept.

The games use larger learning rates and fewer iterations than the paper's defaults (which
target 50k steps on real embeddings): the planted concepts here are found in ~1k steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import steerlab.artifacts
from steerlab.erasure.leace import LeaceEraser, erasure_report
from steerlab.erasure.rlace import (
    RlaceConfig,
    RlaceEraser,
    _Factored,
    _fantope_shift,
    fantope_project,
    leace_start,
    rlace,
)

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


@settings(max_examples=40, deadline=None)
@given(
    lam=st.lists(st.floats(-3, 3), min_size=1, max_size=8),
    mult=st.data(),
    data=st.data(),
)
def test_fantope_shift_multiplicities(lam, mult, data):
    # a multiplicity-m eigenvalue solves like m copies of it (the factored solver's complement)
    m = mult.draw(st.lists(st.integers(0, 4), min_size=len(lam), max_size=len(lam)))
    if sum(m) == 0:
        return
    k = data.draw(st.integers(1, sum(m)))
    lam_a = np.array(lam)
    expanded = np.repeat(lam_a, m)
    t1 = _fantope_shift(lam_a, k, np.array(m, dtype=float))
    t2 = _fantope_shift(expanded, k)
    # θ may be any point of a flat piece; compare the clipped spectra it gives, not θ itself
    # (float64 bisection over <= 32 breakpoints of magnitude <= 4: round-off ~1e-14)
    c1 = np.repeat(np.clip(lam_a - t1, 0, 1), m)
    c2 = np.clip(expanded - t2, 0, 1)
    assert np.allclose(c1, c2, atol=1e-10, rtol=0)
    assert abs(c1.sum() - k) <= 1e-10


@pytest.mark.parametrize("complement", [0.0, 0.05])
@pytest.mark.parametrize("k", [1, 3])
def test_factored_step_matches_dense_projection(complement, k):
    # one factored step == the dense update followed by the dense fantope projection, with and
    # without mass on the complement (c > 0 makes the projection full-rank)
    d, r, c = 10, 3, 2
    g = torch.Generator().manual_seed(k)
    Q = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    M = torch.diag(torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64))
    fac = _Factored(Q, M, complement)
    P = fac.dense()
    G = torch.randn(d, c, generator=g, dtype=torch.float64)
    W = torch.randn(d, c, generator=g, dtype=torch.float64)
    lr, wd = 0.3, 0.01
    dense = fantope_project((1 - lr * wd) * P - lr * (G @ W.T + W @ G.T) / 2, k)
    fac.step_(G, W, lr, wd, k)
    # float64 eigendecompositions of 10x10 matrices of norm ~ 1: round-off ~1e-14
    assert torch.allclose(fac.dense(), dense, atol=ATOL, rtol=0)
    assert torch.allclose(fac.Q.T @ fac.Q, torch.eye(fac.Q.shape[1], dtype=Q.dtype), atol=ATOL)


@pytest.mark.parametrize("n_classes,rank", [(2, 1), (2, 3), (3, 2)])
def test_factored_solver_matches_dense_game(n_classes, rank):
    # the same seeded game (same batches, same initial P) with the reference's dense P and the
    # factored P: every held-out evaluation and the final eraser agree to round-off
    X, y, _ = _planted(6, n_classes=n_classes, d=10, n=600)
    runs = [
        rlace(X, y, _fast(rank, max_iter=120, eval_every=20, batch_size=64, solver=s))
        for s in ("dense", "factored")
    ]
    h_dense, h_fac = (e.meta["history"] for e in runs)
    assert [h["iter"] for h in h_dense] == [h["iter"] for h in h_fac]
    for a, b in zip(h_dense, h_fac):
        # sklearn's lbfgs on inputs that differ by ~1e-13 (tol 1e-4 stopping): losses to 1e-6
        assert abs(a["dev_loss"] - b["dev_loss"]) < 1e-6
        assert a["dev_accuracy"] == pytest.approx(b["dev_accuracy"], abs=1e-12)
    # 120 steps of float64 SGD from the same state: trajectories agree to ~1e-12
    assert torch.allclose(runs[0].P, runs[1].P, atol=1e-9, rtol=0)


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


@pytest.mark.parametrize("k", [1, 2, 4])
def test_leace_start_is_in_the_fantope_at_the_guard(k):
    X, y, _ = _planted(7, d=10, n=2000)
    P = leace_start(X, y, k)
    lam = torch.linalg.eigvalsh(P)
    assert torch.allclose(P, P.T, atol=ATOL, rtol=0)
    assert lam.min() >= -ATOL and lam.max() <= 1 + ATOL
    assert abs(float(torch.trace(P)) - k) <= ATOL
    # the class-mean difference is erased in full (P δ = δ): an orthogonal guard
    delta = X[y == 1].mean(0) - X[y == 0].mean(0)
    assert torch.allclose(P @ delta, delta, atol=1e-9 * float(delta.norm()), rtol=0)
    if k >= 2:  # and so is LEACE's row direction (its whitened discriminant)
        r = LeaceEraser.fit(X, y).proj_right[0].double()
        assert torch.allclose(P @ r, r, atol=1e-9 * float(r.norm()), rtol=0)
    if k == 4:  # two directions in the LEACE span, the rest spread over the 8 others
        assert torch.allclose(lam[:8], torch.full((8,), 2 / 8, dtype=lam.dtype), atol=ATOL)


def test_leace_warm_start_starts_at_majority():
    # the game's first evaluation (step 0) is the warm start itself: a guard, so a fresh probe
    # on the dev split is at the majority rate (within 3 binomial sd of 300 dev rows: 0.09)
    X, y, _ = _planted(8, d=12, n=1500)
    e = rlace(X, y, _fast(1, init="leace", max_iter=50, eval_every=25))
    first = e.meta["history"][0]
    assert first["iter"] == 0
    assert abs(first["dev_accuracy"] - e.meta["majority"]) <= 0.09
    assert e.meta["config"]["init"] == "leace"


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
        ({"init": "zeros"}, "init"),
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
