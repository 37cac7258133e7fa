"""Tests for steerlab.subspace: invariants (hypothesis) and independent references.

References: numpy ranks and least squares, scipy.linalg.subspace_angles, sklearn PCA, and a
closed-form spectrum. Most checks run in float64, where every identity holds to ~d·eps ≈ 1e-15
for d <= 16; the tolerances below leave a wide margin over that and say why.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.decomposition import PCA

import steerlab.artifacts
from steerlab.subspace import Subspace

# float64 identities over d <= 16 with O(1) entries: round-off ~ d·eps64 ≈ 4e-15; 1e-10 leaves
# a margin for inputs of norm up to ~100 without masking real errors (which would be O(1)).
ATOL64 = 1e-10
# principal angles come from arccos of singular values: near 0, a cosine error δ ≈ 1e-16
# becomes an angle error sqrt(2δ) ≈ 1.5e-8, so small angles are only resolved to ~1e-8.
ANGLE_ATOL = 1e-6

PROPS = settings(max_examples=50, deadline=None)


@st.composite
def subspaces(draw, max_d: int = 16):
    """A random float64 subspace with random origin, plus a batch of points ``x`` [2, 3, d]."""
    d = draw(st.integers(1, max_d))
    k = draw(st.integers(1, d))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    vecs = torch.randn(k, d, generator=g, dtype=torch.float64)
    origin = torch.randn(d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.0, 3.0]))
    assume(torch.linalg.matrix_rank(vecs) == k)  # random Gaussian rows: almost surely true
    s = Subspace.from_vectors(vecs, origin)
    x = torch.randn(2, 3, d, generator=g, dtype=torch.float64) * 5
    return s, x, g


def _random_orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


# --- from_vectors ---------------------------------------------------------------------------


@PROPS
@given(
    arrays(
        np.float64, st.tuples(st.integers(1, 6), st.integers(1, 16)), elements=st.integers(-3, 3)
    )
)
def test_from_vectors_orthonormal_spanning(v):
    # small integer entries: exact duplicates, zeros and dependent rows are common, and any
    # independent row has a residual far above rtol, so numpy's rank is an unambiguous reference
    assume(np.any(v != 0))
    s = Subspace.from_vectors(torch.from_numpy(v))
    B = s.basis
    assert B.dtype == torch.float64
    assert torch.allclose(B.T @ B, torch.eye(s.k, dtype=torch.float64), atol=ATOL64)
    assert s.k == np.linalg.matrix_rank(v)
    # every input row lies in the span
    V = torch.from_numpy(v)
    assert torch.allclose(V @ B @ B.T, V, atol=ATOL64)
    # order is kept: the first column is the first nonzero row, normalised
    first = V[np.flatnonzero(np.any(v != 0, axis=1))[0]]
    assert torch.allclose(B[:, 0], first / first.norm(), atol=ATOL64)


def test_from_vectors_single_vector_and_dropped_warning(caplog):
    v = torch.tensor([3.0, 4.0])
    s = Subspace.from_vectors(v)
    assert s.k == 1 and s.basis.dtype == torch.float32
    # float32: entries rounded from exact 0.6, 0.8 -> within one float32 ulp
    assert torch.allclose(s.basis[:, 0], torch.tensor([0.6, 0.8]), atol=1e-7)
    with caplog.at_level(logging.WARNING, logger="steerlab.subspace"):
        s2 = Subspace.from_vectors(torch.stack([v, 2 * v, torch.zeros(2)]))
    assert s2.k == 1
    assert "dropped 2 of 3" in caplog.text
    assert s2.meta["dropped"] == [1, 2]


def test_from_vectors_all_zero_raises():
    with pytest.raises(ValueError, match="all vectors are zero"):
        Subspace.from_vectors(torch.zeros(3, 5))


# --- maps -----------------------------------------------------------------------------------


@PROPS
@given(subspaces())
def test_projector_idempotent_symmetric(sxg):
    s, _, _ = sxg
    P = s.projector()
    assert torch.allclose(P @ P, P, atol=ATOL64)
    assert torch.allclose(P, P.T, atol=ATOL64)
    assert math.isclose(torch.trace(P).item(), s.k, abs_tol=ATOL64)


@PROPS
@given(subspaces())
def test_erase_invariants(sxg):
    s, x, _ = sxg
    e = s.erase(x)
    assert e.shape == x.shape
    assert torch.allclose(s.project(e), torch.zeros(2, 3, s.k, dtype=x.dtype), atol=ATOL64)
    assert torch.allclose(s.erase(e), e, atol=ATOL64)
    assert torch.allclose(e + s.component(x), x, atol=ATOL64)


@PROPS
@given(subspaces())
def test_set_coords_then_project(sxg):
    s, x, g = sxg
    c = torch.randn(2, 3, s.k, generator=g, dtype=torch.float64)
    y = s.set_coords(x, c)
    assert torch.allclose(s.project(y), c, atol=ATOL64)
    # only the subspace component moves
    assert torch.allclose(s.erase(y), s.erase(x), atol=ATOL64)
    # c broadcasts over leading dims
    y1 = s.set_coords(x, c[0, 0])
    assert torch.allclose(s.project(y1), c[0, 0].expand(2, 3, s.k), atol=ATOL64)


@PROPS
@given(subspaces())
def test_embed_project_is_nearest_point(sxg):
    s, x, _ = sxg
    p = s.embed(s.project(x))
    assert torch.allclose(p, s.component(x) + s.origin, atol=ATOL64)
    # independent reference: least squares min_c ‖B c − (x − o)‖ gives the nearest point
    flat = (x - s.origin).reshape(-1, s.d_model).T.numpy()
    c_ref = np.linalg.lstsq(s.basis.numpy(), flat, rcond=None)[0]
    assert np.allclose(s.project(x).reshape(-1, s.k).numpy(), c_ref.T, atol=ATOL64)


@PROPS
@given(subspaces(), st.integers(0, 2**31 - 1))
def test_principal_angles(sxg, seed):
    s, _, _ = sxg
    self_angles = s.principal_angles(s)
    assert self_angles.shape == (s.k,)
    assert torch.allclose(self_angles, torch.zeros(s.k, dtype=torch.float64), atol=ANGLE_ATOL)

    d = s.d_model
    g = torch.Generator().manual_seed(seed)
    other = Subspace.from_vectors(torch.randn(max(1, d // 2), d, generator=g, dtype=torch.float64))
    ab, ba = s.principal_angles(other), other.principal_angles(s)
    assert ab.shape == (min(s.k, other.k),)
    assert torch.all(ab[1:] >= ab[:-1])  # ascending
    assert torch.allclose(ab, ba, atol=ANGLE_ATOL)
    ref = np.sort(scipy.linalg.subspace_angles(s.basis.numpy(), other.basis.numpy()))
    assert np.allclose(ab.numpy(), ref, atol=ANGLE_ATOL)


@PROPS
@given(st.integers(2, 16), st.integers(0, 2**31 - 1), st.data())
def test_principal_angles_orthogonal(d, seed, data):
    q = _random_orthogonal(d, seed)
    k1 = data.draw(st.integers(1, d - 1))
    k2 = data.draw(st.integers(1, d - k1))
    a, b = Subspace(q[:, :k1].contiguous()), Subspace(q[:, k1 : k1 + k2].contiguous())
    # cosines are ~1e-16, and arccos is well conditioned near 0 -> tight tolerance
    expected = torch.full((min(k1, k2),), math.pi / 2, dtype=torch.float64)
    assert torch.allclose(a.principal_angles(b), expected, atol=ATOL64)
    u = a.union(b)
    assert u.k == k1 + k2
    assert torch.allclose(
        u.principal_angles(a), torch.zeros(k1, dtype=torch.float64), atol=ANGLE_ATOL
    )
    assert a.union(a).k == k1


def test_dtype_follows_x():
    s = Subspace.from_vectors(torch.randn(3, 8, dtype=torch.float64))
    x = torch.randn(4, 8)
    assert s.project(x).dtype == torch.float32
    assert s.erase(x).dtype == torch.float32
    s32 = s.to(dtype=torch.float32)
    assert s32.basis.dtype == s32.origin.dtype == torch.float32
    # float32 rounding of O(1) quantities over d=8: ~1e-6; 1e-5 leaves margin
    assert torch.allclose(s32.project(x), s.project(x.double()).float(), atol=1e-5)


# --- PCA ------------------------------------------------------------------------------------


def _anisotropic(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -1, d, dtype=torch.float64)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64) * scales @ _random_orthogonal(d, 1)
        + 2.0
    )


def test_from_pca_matches_sklearn():
    x = _anisotropic(300, 12)
    s = Subspace.from_pca(x, k=4)
    ref = PCA(n_components=4, svd_solver="full").fit(x.numpy())
    # eigen-gaps of this spectrum are O(1), so the subspaces agree to ~eps·λ_max/gap; the
    # cosine-based angles resolve that only to ~1e-8
    angles = s.principal_angles(Subspace.from_vectors(torch.from_numpy(ref.components_)))
    assert torch.all(angles < ANGLE_ATOL)
    # ratios of eigenvalues computed two ways (covariance eigh vs data SVD), both float64
    assert np.allclose(s.meta["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-9)
    assert torch.allclose(s.origin, x.mean(0), atol=ATOL64)
    assert s.meta["method"] == "pca" and s.meta["n_samples"] == 300
    # var-driven k agrees with sklearn's float n_components rule away from ties
    s_var = Subspace.from_pca(x, var=0.9)
    assert s_var.k == PCA(n_components=0.9, svd_solver="full").fit(x.numpy()).n_components_


def test_from_pca_uncentered_and_batched():
    x = _anisotropic(60, 6).reshape(3, 20, 6)
    s = Subspace.from_pca(x, k=2, center=False)
    assert torch.equal(s.origin, torch.zeros(6, dtype=torch.float64))
    # reference: top right singular vectors of the raw (uncentred) data
    _, _, vh = np.linalg.svd(x.reshape(-1, 6).numpy(), full_matrices=False)
    ref = Subspace.from_vectors(torch.from_numpy(vh[:2]))
    assert torch.all(s.principal_angles(ref) < ANGLE_ATOL)
    s32 = Subspace.from_pca(x.float(), k=2)
    assert s32.basis.dtype == torch.float32


@pytest.mark.parametrize(
    ("var", "k_expected"),
    # lam = [8, 4, 2, 1, 0.5, 0.5] / 16; cumulative = 0.5, 0.75, 0.875, 0.9375, 0.96875, 1
    [(0.4, 1), (0.5001, 2), (0.76, 3), (0.9, 4), (0.95, 5), (0.99, 6), (1.0, 6)],
)
def test_var_threshold_smallest_k(var, k_expected):
    lam = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    n, d = 50, 6
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = torch.linalg.qr(z)[0] * math.sqrt(n - 1)  # centred, with sample covariance exactly I
    R = _random_orthogonal(d, 3)
    x = z * lam.sqrt() @ R.T + 1.0  # sample covariance exactly R diag(lam) Rᵀ
    s = Subspace.from_pca(x, var=var)
    assert s.k == k_expected
    ratio = (lam / lam.sum())[:k_expected]
    # ratios of an exactly constructed covariance: only float64 round-off (~1e-15) separates them
    assert np.allclose(s.meta["explained_variance_ratio"], ratio.numpy(), atol=ATOL64)
    if k_expected <= 3:  # distinct eigenvalues: the eigenvectors are determined
        ref = Subspace(R[:, :k_expected].contiguous())
        assert torch.all(s.principal_angles(ref) < ANGLE_ATOL)
    assert Subspace.from_pca(x, var=var, max_k=2).k == min(k_expected, 2)


def test_from_pca_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        Subspace.from_pca(torch.randn(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        Subspace.from_pca(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    # 3 centred samples span at most 2 dims
    with pytest.raises(ValueError, match="rank=2"):
        Subspace.from_pca(torch.randn(3, 5), k=3)
    with pytest.raises(ValueError, match="must be in"):
        Subspace.from_pca(torch.randn(10, 4), k=5)
    with pytest.raises(ValueError, match="zero variance"):
        Subspace.from_pca(torch.ones(5, 3))


# --- validation -----------------------------------------------------------------------------


def test_bad_inputs():
    with pytest.raises(ValueError, match="from_vectors"):
        Subspace(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        Subspace(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        Subspace(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(ValueError, match="origin must have shape"):
        Subspace(torch.eye(3)[:, :1], torch.zeros(4))
    s = Subspace(torch.eye(4)[:, :2])
    with pytest.raises(ValueError, match="last dim must be 4"):
        s.project(torch.randn(2, 5))
    with pytest.raises(ValueError, match="last dim must be 2"):
        s.embed(torch.randn(3))
    with pytest.raises(ValueError, match="d_model differs"):
        s.principal_angles(Subspace(torch.eye(5)[:, :1]))
    with pytest.raises(ValueError, match="JSON"):
        Subspace(torch.eye(2), meta={"t": torch.zeros(1)})


def test_orthonormality_tolerance_scales_with_dtype():
    q = _random_orthogonal(256, 0)[:, :8]
    # rounding a float64 orthonormal basis costs at most eps(dtype) per Gram entry
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        Subspace(q.to(dtype))
    # a 1e-3 perturbation is far above float32's tolerance (4·eps32·256 ≈ 1.2e-4) ...
    bad = q.clone()
    bad[:, 0] *= 1 + 1e-3
    with pytest.raises(ValueError, match="not orthonormal"):
        Subspace(bad.float())
    # ... but within bfloat16's (capped at 0.1), whose own eps is 7.8e-3
    Subspace(bad.to(torch.bfloat16))


# --- disk -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_save_load_round_trip(tmp_path, dtype):
    s = Subspace.from_pca(_anisotropic(40, 6).to(dtype), k=3, meta={"site": "resid_post.6"})
    s.save(tmp_path / "sub")
    t = Subspace.load(tmp_path / "sub")
    assert torch.equal(t.basis, s.basis) and torch.equal(t.origin, s.origin)
    assert t.basis.dtype == dtype
    assert t.meta == s.meta and t.meta["site"] == "resid_post.6"
    u = steerlab.artifacts.load(tmp_path / "sub")
    assert isinstance(u, Subspace) and torch.equal(u.basis, s.basis) and u.meta == s.meta
    assert repr(u) == "Subspace(d_model=6, k=3, method='pca')"
