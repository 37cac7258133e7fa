"""Tests for steerlab.erasure.leace: LEACE against EleutherAI's concept-erasure, sklearn
classifiers that must learn nothing after erasure, float64 closed forms, and invariants.

All arithmetic is float64. Identities of the eraser (idempotence, equal class means, mean kept)
hold to round-off ~ d·eps·‖x‖ ≈ 1e-13 for d = 128 and ‖x‖ ~ 10; tolerances are stated per test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

import steerlab.artifacts
from steerlab.erasure.leace import (
    LeaceEraser,
    LeaceFitter,
    erasure_report,
    majority_rate,
    optimal_linear_shrinkage,
)

ce = pytest.importorskip("concept_erasure")

# Agreement with concept-erasure: both run the same float64 eigh/SVD pipeline on d = 128, so
# they differ by round-off amplified by the conditioning of Σ_xx^{-1/2} (observed <= 1e-13).
REF_ATOL = 1e-11
# concept-erasure's own bound on sklearn coefficients after erasure (tests/test_leace.py)
COEF_EPS = 2e-9
# float64 identities on O(10)-sized data in d <= 128
ATOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny float64 ops: OpenMP threads only add contention on a shared 2-core runner
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(num_classes: int, n: int = 2048, d: int = 128, seed: int = 42):
    """concept-erasure's test data; ``num_classes == 1`` means binary labels as one column."""
    distinct = max(num_classes, 2)
    X, y = make_classification(
        n_samples=n, n_features=d, n_classes=distinct, n_informative=distinct, random_state=seed
    )
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    Z = torch.nn.functional.one_hot(y_t, num_classes) if num_classes > 1 else y_t
    return X_t, y_t, Z


def _check_guarded(x: np.ndarray, y: np.ndarray, eps: float) -> None:
    """As in concept-erasure's tests: logistic regression and a linear SVM learn ~nothing.

    ``C=np.inf`` is sklearn >= 1.8's spelling of ``penalty=None`` (unregularised).
    """
    lr = LogisticRegression(C=np.inf, tol=0.0).fit(x - x.mean(0), y)  # lbfgs needs centring
    assert abs(lr.coef_).max() < eps
    svm = LinearSVC(dual=False, intercept_scaling=1e6, tol=eps).fit(x, y)
    assert abs(svm.coef_).max() < eps


# --- against concept-erasure ------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 2, 3, 5])
@pytest.mark.parametrize(
    "method,shrinkage,affine",
    [("leace", True, True), ("leace", False, True), ("leace", True, False), ("orth", False, True)],
)
def test_matches_concept_erasure(num_classes, method, shrinkage, affine):
    X, y, Z = _data(num_classes)
    ref = ce.LeaceFitter.fit(X, Z, method=method, shrinkage=shrinkage, affine=affine).eraser
    ours = LeaceFitter.fit(X, Z, method=method, shrinkage=shrinkage, affine=affine).eraser
    # concept-erasure's P is the linear part I − L R, our Q
    assert (ours.Q - ref.P).abs().max() <= REF_ATOL
    assert (ours(X) - ref(X)).abs().max() <= REF_ATOL
    if num_classes > 1:  # class indices give the same eraser as one-hot rows
        by_index = LeaceEraser.fit(X, y, method=method, shrinkage=shrinkage, affine=affine)
        assert (by_index.P - ours.P).abs().max() <= REF_ATOL


def test_shrinkage_matches_reference():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 8, generator=g, dtype=torch.float64)
    S = A.T @ A / 50
    ref = ce.optimal_linear_shrinkage(S, 50)
    assert torch.allclose(optimal_linear_shrinkage(S, 50), ref, atol=1e-14, rtol=0)
    zero = torch.zeros(4, 4, dtype=torch.float64)  # concept-erasure PR #3: finite, no-op
    assert torch.equal(optimal_linear_shrinkage(zero, 10), zero)


def test_shrinkage_clamped_for_small_n():
    """n = 8, d = 2, nearly isotropic: concept-erasure's intensity goes negative, its estimate is
    indefinite and its eraser leaves the class means apart; ours clamps α to [0, 1]."""
    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.arange(2), torch.randint(0, 2, (6,), generator=g)])
    X = torch.randn(8, 2, generator=g, dtype=torch.float64) + y[:, None]
    fitter = LeaceFitter.fit(X, y)
    S = (X - X.mean(0)).T @ (X - X.mean(0)) / 8
    assert torch.linalg.eigvalsh(ce.optimal_linear_shrinkage(S, 8)).min() < 0  # the reference
    assert torch.linalg.eigvalsh(fitter.sigma_xx).min() > 0
    out = fitter.eraser(X)
    assert torch.allclose(out[y == 0].mean(0), out[y == 1].mean(0), atol=ATOL, rtol=0)


# --- guarantees -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 2, 3, 5])
@pytest.mark.parametrize("method", ["leace", "orth"])
def test_linear_guardedness(num_classes, method):
    X, y, Z = _data(num_classes, n=1024, d=64)  # half of concept-erasure's size: ~4x faster
    eraser = LeaceEraser.fit(X, Z, method=method, shrinkage=method == "leace")
    X_ = eraser(X)
    # before: both classifiers do find the concept
    lr = LogisticRegression(C=np.inf, tol=0.0).fit(X.numpy() - X.numpy().mean(0), y.numpy())
    assert abs(lr.coef_).max() > 0.05
    _check_guarded(X_.numpy(), y.numpy(), COEF_EPS)

    distinct = max(num_classes, 2)
    means = torch.stack([X_[y == c].mean(0) for c in range(distinct)])
    assert torch.allclose(means[1:], means[:-1], atol=ATOL, rtol=0)
    assert torch.allclose(X_.mean(0), X.mean(0), atol=ATOL, rtol=0)  # affine: mean kept
    assert torch.allclose(eraser(X_), X_, atol=ATOL, rtol=0)  # idempotent
    assert eraser.edit_rank == distinct - 1
    assert torch.linalg.matrix_rank(X - X_) <= distinct - 1


def test_first_order_optimality():
    """Affine LEACE without shrinkage minimises E‖L(r(x) − x)‖² for *any* inner product L
    among projections with its nullspace (concept-erasure's check, Belrose et al. Thm 3.1)."""
    X, _, Z = _data(3)
    for shrinkage in (False, True):
        eraser = LeaceEraser.fit(X, Z, shrinkage=shrinkage)
        Q = eraser.Q
        A, s, Bt = torch.linalg.svd(Q)
        A, B = A[:, s > 0.5].requires_grad_(True), Bt[s > 0.5].T
        Pm = A @ torch.inverse(B.T @ A) @ B.T  # oblique projector with Q's nullspace
        mu = X.mean(0)
        x_ = (X - mu) @ Pm.T + mu
        L = torch.randn(128, 128, dtype=X.dtype, generator=torch.Generator().manual_seed(1))
        torch.nn.functional.mse_loss(x_ @ L / 128**0.5, X @ L / 128**0.5).backward()
        assert (A.grad.norm() < COEF_EPS) == (not shrinkage)


def test_streaming_equals_one_shot():
    X, y, _ = _data(3, n=600, d=24)
    one = LeaceFitter(24, 3, shrinkage=False).update(X, y)
    streamed = LeaceFitter(24, 3, shrinkage=False)
    for lo, hi in [(0, 1), (1, 37), (37, 300), (300, 301), (301, 600)]:  # uneven chunks
        streamed.update(X[lo:hi], y[lo:hi])
    for a, b in [(one.sigma_xx, streamed.sigma_xx), (one.sigma_xz, streamed.sigma_xz)]:
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert torch.allclose(one.eraser.P, streamed.eraser.P, atol=1e-12, rtol=0)
    # closed forms: Bessel-corrected covariances of the whole data set
    Xc = X - X.mean(0)
    Zc = torch.nn.functional.one_hot(y, 3).double()
    Zc = Zc - Zc.mean(0)
    assert torch.allclose(one.sigma_xx, Xc.T @ Xc / 599, atol=1e-12, rtol=0)
    assert torch.allclose(one.sigma_xz, Xc.T @ Zc / 599, atol=1e-12, rtol=0)


def test_cache_invalidated_on_update():
    X, y, _ = _data(2, n=200, d=8)
    fitter = LeaceFitter(8, 2).update(X[:100], y[:100])
    first = fitter.eraser
    assert fitter.eraser is first
    fitter.update(X[100:], y[100:])
    assert fitter.eraser is not first
    assert not torch.allclose(fitter.eraser.P, first.P)


def test_orth_is_orthogonal_projection():
    X, y, _ = _data(3, n=500, d=16)
    eraser = LeaceEraser.fit(X, y, method="orth")
    P = eraser.P
    assert torch.allclose(P, P.T, atol=ATOL, rtol=0)
    assert torch.allclose(P @ P, P, atol=ATOL, rtol=0)
    # the Subspace of an orthogonal eraser erases exactly like the eraser
    assert torch.allclose(eraser.subspace.erase(X), eraser(X), atol=ATOL, rtol=0)


def test_subspace_holds_the_edit():
    X, y, _ = _data(3, n=500, d=16)
    eraser = LeaceEraser.fit(X, y)
    sub = eraser.subspace
    assert sub.k == 2 and torch.allclose(sub.origin, X.mean(0))
    delta = eraser(X) - X  # r(x) − x lies in span(L)
    assert torch.allclose(sub.component(X + delta) - sub.component(X), delta, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shrinkage", [True, False])
def test_rank_deficient_covariance_gives_no_nan(shrinkage):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(30, 5, generator=g, dtype=torch.float64)
    # d = 12 > n - 1 and duplicated / constant columns: Σ_xx has rank <= 5
    X = torch.cat([base, base[:, :3] * 2, torch.ones(30, 4, dtype=torch.float64)], dim=1)
    y = (base[:, 0] > 0).long()
    eraser = LeaceEraser.fit(X, y, shrinkage=shrinkage, svd_tol=0.0)
    out = eraser(X)
    assert torch.isfinite(eraser.P).all() and torch.isfinite(out).all()
    assert torch.allclose(out[y == 0].mean(0), out[y == 1].mean(0), atol=ATOL, rtol=0)


def test_constant_x_gives_identity_without_nan():
    X = torch.ones(20, 6, dtype=torch.float64)
    y = torch.arange(20) % 2
    eraser = LeaceEraser.fit(X, y)
    assert eraser.rank == 0 and torch.equal(eraser(X), X)
    with pytest.raises(ValueError, match="identity"):
        _ = eraser.subspace


# --- invariants (hypothesis) ------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(8, 60),
    d=st.integers(1, 10),
    k=st.integers(2, 4),
    seed=st.integers(0, 2**31 - 1),
    method=st.sampled_from(["leace", "orth"]),
    shrinkage=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_invariants(n, d, k, seed, method, shrinkage, scale):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])
    X = (torch.randn(n, d, generator=g, dtype=torch.float64) + y[:, None]) * scale
    eraser = LeaceEraser.fit(X, y, method=method, shrinkage=shrinkage, svd_tol=0.0)
    out = eraser(X)
    tol = 1e-9 * scale  # round-off relative to the data's scale (cond. of small Σ_xx)
    assert torch.isfinite(out).all()
    assert eraser.edit_rank <= min(k - 1, d)
    assert torch.allclose(eraser(out), out, atol=tol, rtol=0)  # idempotent
    assert torch.allclose(out.mean(0), X.mean(0), atol=tol, rtol=0)  # mean kept
    means = torch.stack([out[y == c].mean(0) for c in range(k)])
    assert torch.allclose(means, means[:1].expand_as(means), atol=tol, rtol=0)  # guarded


# --- artifact surface -----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    X, y, _ = _data(3, n=300, d=12)
    for affine in (True, False):
        eraser = LeaceEraser.fit(X, y, affine=affine)
        eraser.save(tmp_path / "e")
        loaded = steerlab.artifacts.load(tmp_path / "e")
        assert type(loaded) is LeaceEraser and loaded.meta == eraser.meta
        assert torch.equal(loaded(X), eraser(X))


def test_dtype_device_and_shapes():
    X, y, _ = _data(2, n=300, d=12)
    eraser = LeaceEraser.fit(X, y)
    x32 = X.float().reshape(10, 30, 12)  # [batch, pos, d_model]
    out = eraser(x32)
    assert out.dtype == torch.float32 and out.shape == x32.shape
    assert torch.allclose(out.double(), eraser(X).reshape(10, 30, 12), atol=1e-4)
    e32 = eraser.to(dtype=torch.float32)
    assert type(e32) is LeaceEraser and e32.proj_left.dtype == torch.float32


def test_erasure_report():
    X, y, _ = _data(2, n=1200, d=32, seed=3)
    eraser = LeaceEraser.fit(X[:800], y[:800])
    rep = erasure_report(eraser, X[:800], y[:800], X[800:], y[800:])
    assert rep.majority == majority_rate(y[800:])
    assert rep.accuracy_before > 0.8
    assert abs(rep.accuracy - rep.majority) <= 0.05  # held-out: fresh probe at chance
    assert rep.rank == 1
    direct = (X[800:] - eraser(X[800:])).square().sum(-1).mean()
    assert rep.mse == pytest.approx(float(direct), rel=1e-12)


# --- bad input ------------------------------------------------------------------------------


def test_bad_input():
    X, y, _ = _data(3, n=100, d=8)
    with pytest.raises(ValueError, match="single class"):
        LeaceEraser.fit(X, torch.zeros(100, dtype=torch.long))
    with pytest.raises(ValueError, match="single class"):  # streamed: caught at the end
        _ = LeaceFitter(8, 3).update(X, torch.zeros(100, dtype=torch.long)).eraser
    with pytest.raises(ValueError, match="more classes than samples"):
        LeaceEraser.fit(X[:3], torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="more classes than samples"):
        _ = LeaceFitter(8, 5).update(X[:3], torch.tensor([0, 4, 1])).eraser
    with pytest.raises(ValueError, match="width mismatch"):
        LeaceFitter(7, 3).update(X, y)
    with pytest.raises(ValueError, match="width mismatch"):
        LeaceEraser.fit(X, y)(X[:, :5])
    bad = X.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        LeaceEraser.fit(bad, y)
    with pytest.raises(ValueError, match="NaN"):
        LeaceEraser.fit(
            X,
            torch.nn.functional.one_hot(y).double().index_fill(0, torch.tensor([0]), float("inf")),
        )
    with pytest.raises(ValueError, match="labels but x has"):
        LeaceEraser.fit(X, y[:50])
    with pytest.raises(ValueError, match=">= n_classes"):
        LeaceFitter(8, 2).update(X, y)
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = LeaceFitter(8, 1).update(X[:1], torch.ones(1)).eraser
