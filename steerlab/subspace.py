"""Affine subspaces of activation space: the common currency of steerlab.

Every probe, eraser, SAE initialisation and steering method in steerlab produces or consumes a
:class:`Subspace`: an orthonormal basis ``B`` (``d_model x k``) and an origin ``o``. All maps
are affine and act on the last dimension of any batch of activations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.artifacts import FrozenArtifact, check_json, register
from steerlab.checks import check_finite
from steerlab.distributed import all_reduce_moments_

logger = logging.getLogger(__name__)

# Orthonormality tolerance: max|BᵀB − I| <= ORTHO_FACTOR · eps(dtype) · d_model. A basis built
# in `dtype` (Householder QR, Gram-Schmidt, SVD) carries inner-product errors that grow like
# d·eps (Higham's γ_d bound); merely rounding a float64 basis into `dtype` costs at most eps.
ORTHO_FACTOR = 4.0
# Above this deviation columns are not orthonormal in any useful sense, whatever the dtype: the
# cap keeps the check meaningful for bfloat16/float16 at large d_model.
ORTHO_CAP = 0.1


def _orthonormalize(
    vectors: Float[Tensor, "n d_model"], rtol: float
) -> tuple[Float[Tensor, "d_model k"], list[int]]:
    """Gram-Schmidt in float64 with re-orthogonalisation ("twice is enough", Giraud et al. 2005).

    Keeps the order of the rows: column ``i`` spans the first kept rows. A row whose residual
    after projecting out the kept columns is ``<= rtol * ‖row‖`` is linearly dependent.

    Returns:
        ``(basis, dropped)``: orthonormal columns and the indices of dropped rows.
    """
    kept: list[Tensor] = []
    dropped: list[int] = []
    for i, v in enumerate(vectors.double()):
        r = v
        if kept:
            Q = torch.stack(kept, dim=1)
            r = r - Q @ (Q.T @ r)
            r = r - Q @ (Q.T @ r)  # second pass removes the error of the first
        norm = torch.linalg.vector_norm(r)
        if norm <= rtol * torch.linalg.vector_norm(v):  # zero rows too
            dropped.append(i)
        else:
            kept.append(r / norm)
    d = vectors.shape[-1]
    basis = torch.stack(kept, dim=1) if kept else vectors.new_zeros(d, 0, dtype=torch.float64)
    return basis, dropped


@register("subspace")
@dataclass(frozen=True, eq=False, repr=False)
class Subspace(FrozenArtifact):
    """An affine subspace ``{o + B c}`` with orthonormal basis ``B`` and origin ``o``.

    With ``P = B Bᵀ`` the orthogonal projector, the maps are

    - coordinates:    ``c = Bᵀ (x − o)``                 (:meth:`project`)
    - embedding:      ``x = o + B c``                     (:meth:`embed`)
    - component:      ``P (x − o)``                       (:meth:`component`)
    - erasure:        ``x − P (x − o)``                   (:meth:`erase`)
    - set coordinate: ``x + B (c − Bᵀ (x − o))``           (:meth:`set_coords`)

    Subspaces are compared by their principal angles (Björck & Golub 1973). ``save(dir)`` /
    ``Subspace.load(dir)`` (from :class:`~steerlab.artifacts.FrozenArtifact`) write and read
    ``cfg.json`` (header, ``meta``) and ``subspace.safetensors`` (``basis``, ``origin``).
    """

    basis: Float[Tensor, "d_model k"]
    """Orthonormal columns spanning the subspace."""
    origin: Float[Tensor, " d_model"] | None = None
    """Affine origin; zeros when not given."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable info: site, method, explained variance, model id, ..."""

    def __post_init__(self) -> None:
        B = self.basis
        if not isinstance(B, Tensor) or B.ndim != 2:
            raise ValueError(
                f"basis must be a 2-D tensor [d_model, k], got {getattr(B, 'shape', type(B))}; "
                "for a single direction use Subspace.from_vectors(v)"
            )
        if not B.is_floating_point():
            raise ValueError(f"basis must be floating point, got {B.dtype}")
        d, k = B.shape
        if k < 1 or k > d:
            raise ValueError(f"basis has k={k} columns for d_model={d}; need 1 <= k <= d_model")
        if self.origin is None:
            object.__setattr__(self, "origin", B.new_zeros(d))
        o = self.origin
        if not isinstance(o, Tensor) or o.shape != (d,):
            raise ValueError(f"origin must have shape ({d},), got {getattr(o, 'shape', o)}")
        if o.dtype != B.dtype or o.device != B.device:
            raise ValueError(
                f"origin ({o.dtype}, {o.device}) must match basis ({B.dtype}, {B.device})"
            )
        if not (torch.isfinite(B).all() and torch.isfinite(o).all()):
            raise ValueError("basis and origin must be finite (found NaN or inf)")
        gram = B.T.double() @ B.double()
        err = (gram - torch.eye(k, dtype=torch.float64, device=B.device)).abs().max().item()
        tol = min(ORTHO_FACTOR * torch.finfo(B.dtype).eps * d, ORTHO_CAP)
        if err > tol:
            raise ValueError(
                f"basis columns are not orthonormal: max|BᵀB − I| = {err:.3g} > {tol:.3g}; "
                "use Subspace.from_vectors to orthonormalise arbitrary vectors"
            )
        check_json(self.meta)

    @property
    def d_model(self) -> int:
        """Dimension of the ambient activation space."""
        return self.basis.shape[0]

    @property
    def k(self) -> int:
        """Dimension of the subspace."""
        return self.basis.shape[1]

    def __repr__(self) -> str:
        return f"Subspace(d_model={self.d_model}, k={self.k}, method={self.meta.get('method')!r})"

    # --- maps ---------------------------------------------------------------------------------

    def _check(self, x: Tensor, width: int, name: str) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor")
        if x.ndim == 0 or x.shape[-1] != width:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}; its last dim must be {width} "
                f"(this subspace has d_model={self.d_model}, k={self.k})"
            )

    def _B_o(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.basis.to(x), self.origin.to(x)  # type: ignore[union-attr]

    def project(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... k"]:
        """Coordinates ``Bᵀ (x − o)``, in the dtype of ``x``."""
        self._check(x, self.d_model, "x")
        B, o = self._B_o(x)
        return (x - o) @ B

    def embed(self, c: Float[Tensor, "... k"]) -> Float[Tensor, "... d_model"]:
        """The point ``o + B c`` with coordinates ``c``, in the dtype of ``c``."""
        self._check(c, self.k, "c")
        B, o = self._B_o(c)
        return o + c @ B.T

    def component(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The part of ``x − o`` inside the subspace, ``B Bᵀ (x − o)``."""
        B, _ = self._B_o(x)
        return self.project(x) @ B.T

    def erase(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Remove the subspace component: ``x − B Bᵀ (x − o)``, so ``project(erase(x)) = 0``."""
        return x - self.component(x)

    def set_coords(
        self, x: Float[Tensor, "... d_model"], c: Float[Tensor, "... k"]
    ) -> Float[Tensor, "... d_model"]:
        """Move ``x`` inside the subspace so its coordinates become ``c``: ``x + B (c − Bᵀ(x − o))``.

        ``c`` broadcasts against the leading dims of ``x``.
        """
        self._check(c, self.k, "c")
        B, _ = self._B_o(x)
        return x + (c.to(x) - self.project(x)) @ B.T

    def projector(self) -> Float[Tensor, "d_model d_model"]:
        """The orthogonal projector ``P = B Bᵀ`` (dense ``d_model x d_model``)."""
        return self.basis @ self.basis.T

    def principal_angles(self, other: Subspace) -> Float[Tensor, " k"]:
        """Principal angles to ``other`` in radians, ascending, length ``min(k1, k2)``.

        ``θ_i = arccos σ_i(B1ᵀ B2)``, computed in float64 with ``σ`` clamped to ``[0, 1]``. Being
        cosine-based, angles below about ``sqrt(eps) ≈ 1e-8`` rad are not resolved.
        """
        if other.d_model != self.d_model:
            raise ValueError(f"d_model differs: {self.d_model} vs {other.d_model}")
        B1 = self.basis.double()
        B2 = other.basis.to(device=B1.device, dtype=torch.float64)
        sigma = torch.linalg.svdvals(B1.T @ B2).clamp(0.0, 1.0)  # descending
        return torch.arccos(sigma)

    def union(self, other: Subspace) -> Subspace:
        """The span of both subspaces, with this subspace's origin (``other``'s is ignored)."""
        if other.d_model != self.d_model:
            raise ValueError(f"d_model differs: {self.d_model} vs {other.d_model}")
        rows = torch.cat([self.basis.T, other.basis.T.to(self.basis)])
        basis, _ = _orthonormalize(rows, _default_rtol(self.basis.dtype, self.d_model))
        meta = {"method": "union", "parts": [self.meta, other.meta]}
        return Subspace(basis.to(self.basis), self.origin, meta)

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Subspace:
        """A copy on ``device`` and/or in ``dtype``."""
        o = self.origin.to(device=device, dtype=dtype)  # type: ignore[union-attr]
        return Subspace(self.basis.to(device=device, dtype=dtype), o, dict(self.meta))

    # --- constructors -------------------------------------------------------------------------

    @classmethod
    def from_vectors(
        cls,
        vectors: Float[Tensor, "n d_model"] | Float[Tensor, " d_model"],
        origin: Float[Tensor, " d_model"] | None = None,
        *,
        rtol: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Subspace:
        """Orthonormalise the rows of ``vectors`` (order kept: column 0 is ``v0 / ‖v0‖``).

        Args:
            vectors: ``[n, d_model]`` rows, or a single ``[d_model]`` vector.
            origin: affine origin; zeros if None.
            rtol: a row is dropped (with a logged warning) as linearly dependent when its
                residual after removing the earlier rows is ``<= rtol * ‖row‖``. Default
                ``eps(dtype) * d_model``, the usual numerical-rank tolerance.
            meta: extra JSON-serialisable info.
        """
        V = vectors.unsqueeze(0) if vectors.ndim == 1 else vectors
        if V.ndim != 2 or not V.is_floating_point():
            raise ValueError(f"vectors must be a float [n, d] or [d] tensor, got {vectors.shape}")
        check_finite(V, "vectors")
        rtol = _default_rtol(V.dtype, V.shape[1]) if rtol is None else rtol
        basis, dropped = _orthonormalize(V, rtol)
        if basis.shape[1] == 0:
            raise ValueError("all vectors are zero (or below rtol); cannot span a subspace")
        if dropped:
            logger.warning(
                "from_vectors: dropped %d of %d vectors as linearly dependent (rows %s, rtol=%.3g)",
                len(dropped), V.shape[0], dropped, rtol,
            )  # fmt: skip
        origin = None if origin is None else origin.to(V)
        info = {"method": "vectors", "n_vectors": V.shape[0], "dropped": dropped, **(meta or {})}
        return cls(basis.to(V), origin, info)

    @classmethod
    def from_pca(
        cls,
        x: Float[Tensor, "... d_model"],
        *,
        var: float = 0.99,
        k: int | None = None,
        center: bool = True,
        max_k: int | None = None,
        meta: dict[str, Any] | None = None,
        distributed: bool = False,
    ) -> Subspace:
        """Top principal directions of ``x`` (Pearson 1901), from a float64 covariance.

        ``Σ = (x − μ)ᵀ (x − μ) / (n − 1)`` (``μ = 0`` if not ``center``); the basis holds the
        eigenvectors of the ``k`` largest eigenvalues ``λ``, signed so that each column's largest
        entry is positive.

        Args:
            x: ``[n, d_model]`` samples; leading dims are flattened.
            var: keep the smallest ``k`` with ``Σ_{i<=k} λ_i / Σ λ >= var``; ignored if ``k`` given.
            k: number of components; overrides ``var``. Must not exceed the data's rank.
            center: subtract the mean (which then becomes the origin).
            max_k: upper bound on the ``k`` chosen by ``var`` (ignored when ``k`` is given).
            meta: extra JSON-serialisable info.
            distributed: ``x`` is this rank's share of the rows of a ``torch.distributed`` run:
                the mean and covariance are merged over ranks (:class:`PCAFitter`), and every
                rank gets the PCA of all rows (equal to one process to float64 round-off).
        """
        if x.ndim < 2:
            raise ValueError(f"x must be [n, d_model] (or [..., d_model]), got {tuple(x.shape)}")
        d = x.shape[-1]
        X = x.reshape(-1, d).double()
        check_finite(X, "x")
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        if distributed:
            fitter = PCAFitter(d, center=center, device=X.device).update(X).all_reduce_()
            return fitter.subspace(var=var, k=k, max_k=max_k, meta=meta, dtype=dtype)
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"PCA needs at least 2 samples, got {n}")
        mu = X.mean(0) if center else torch.zeros_like(X[0])
        Xc = X - mu
        sigma = Xc.T @ Xc / (n - 1)
        return _pca(mu, sigma, n, var=var, k=k, center=center, max_k=max_k, meta=meta,
                    dtype=dtype)  # fmt: skip


def _pca(
    mu: Tensor,
    sigma: Tensor,
    n: int,
    *,
    var: float,
    k: int | None,
    center: bool,
    max_k: int | None,
    meta: dict[str, Any] | None,
    dtype: torch.dtype,
) -> Subspace:
    """The PCA subspace of a float64 mean and (co)variance (see :meth:`Subspace.from_pca`)."""
    d = sigma.shape[0]
    sigma = (sigma + sigma.T) / 2  # round-off can leave it slightly non-symmetric
    lam, vecs = torch.linalg.eigh(sigma)  # ascending
    lam, vecs = lam.flip(0).clamp_min(0.0), vecs.flip(1)
    total = lam.sum()
    if total <= 0:
        raise ValueError("x has zero variance; PCA is undefined")
    # eigenvalues of a float64 covariance carry absolute error ~ eps·d·λ_max: smaller is noise
    rank = int((lam > lam[0] * d * torch.finfo(torch.float64).eps).sum())
    ratio = lam / total
    if k is None:
        if not 0 < var <= 1:
            raise ValueError(f"var must be in (0, 1], got {var}")
        # tolerate the round-off of the cumulative sum, so var=1.0 reaches the full rank
        reach = ratio.cumsum(0) >= var - d * torch.finfo(torch.float64).eps
        k_var = int(reach.nonzero()[0]) + 1 if reach.any() else rank
        k = min(k_var, rank, max_k if max_k is not None else d)
    if not 1 <= k <= rank:
        raise ValueError(f"k={k} must be in [1, rank={rank}] (n={n}, d_model={d}, center={center})")
    basis = vecs[:, :k]
    idx = basis.abs().argmax(0)
    basis = basis * basis.gather(0, idx[None]).sign()
    info = {
        "method": "pca",
        "n_samples": n,
        "center": center,
        "explained_variance_ratio": ratio[:k].tolist(),
        **(meta or {}),
    }
    return Subspace(basis.to(dtype), mu.to(dtype), info)


def add_rows_(n: int, mean: Tensor, scatter: Tensor, X: Tensor) -> int:
    """Add the rows of ``X`` to running moments in place (Chan et al.'s pairwise update).

    With ``n`` rows summarised by ``mean`` and ``scatter = Σ (x − mean)(x − mean)ᵀ``, and a batch
    of ``m`` rows with mean ``μ_b`` and scatter ``S_b``: ``δ = μ_b − mean``,
    ``scatter += S_b + δδᵀ · n·m/(n + m)``, ``mean += δ · m/(n + m)``. Returns ``n + m``. Used by
    every streaming fitter of means and covariances (PCA, the SAE initialisation statistics),
    so they agree to rounding with the one-pass float64 covariance.
    """
    nb = X.shape[0]
    if nb == 0:
        return n
    mb = X.mean(0)
    Xc = X - mb
    delta = mb - mean
    total = n + nb
    scatter += Xc.T @ Xc + torch.outer(delta, delta) * (n * nb / total)
    mean += delta * (nb / total)
    return total


class PCAFitter:
    """Streams the float64 mean and scatter of rows for PCA, mergeable across ranks.

    The streaming form of :meth:`Subspace.from_pca`: Chan et al.'s batched update
    (``S ← S + S_b + δδᵀ · n n_b / (n + n_b)``) keeps ``S = Σ (x − x̄)(x − x̄)ᵀ`` exact for any
    batch split, and :meth:`all_reduce_` merges the ranks of a ``torch.distributed`` run, so
    :meth:`subspace` equals ``Subspace.from_pca`` on all rows to float64 round-off.

    Args:
        d: row width (d_model).
        center: subtract the mean (as ``from_pca(center=True)``); False takes the second
            moment about 0, ``Σ x xᵀ / (n − 1)``.
        device: where the float64 accumulators live.
    """

    def __init__(self, d: int, *, center: bool = True, device: str | torch.device | None = None):
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        self.d, self.center = int(d), center
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.scatter = torch.zeros(d, d, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, x: Float[Tensor, "... d_model"]) -> PCAFitter:
        """Add the rows of ``x`` (leading dims flattened); returns ``self``."""
        if x.shape[-1] != self.d:
            raise ValueError(f"x has width {x.shape[-1]}, the fitter {self.d}")
        X = check_finite(x.reshape(-1, self.d).to(self.mean), "x")
        self.n = add_rows_(self.n, self.mean, self.scatter, X)
        return self

    @torch.no_grad()
    def all_reduce_(self) -> PCAFitter:
        """Merge every rank's statistics in place (Chan's rule,
        :func:`steerlab.distributed.all_reduce_moments_`); call once, on every rank, after the
        last update. A no-op in one process."""
        self.n = all_reduce_moments_(self.n, [self.mean], [(self.scatter, 0, 0)])
        return self

    def covariance(self) -> Float[Tensor, "d_model d_model"]:
        """``S / (n − 1)``, or without centring ``(S + n x̄ x̄ᵀ) / (n − 1)``."""
        if self.n < 2:
            raise ValueError(f"PCA needs at least 2 samples, got {self.n}")
        S = (
            self.scatter
            if self.center
            else self.scatter + self.n * torch.outer(self.mean, self.mean)
        )
        return S / (self.n - 1)

    def subspace(
        self,
        *,
        var: float = 0.99,
        k: int | None = None,
        max_k: int | None = None,
        meta: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Subspace:
        """The top principal subspace (arguments as :meth:`Subspace.from_pca`), in ``dtype``."""
        sigma = self.covariance()
        mu = self.mean if self.center else torch.zeros_like(self.mean)
        return _pca(mu, sigma, self.n, var=var, k=k, center=self.center, max_k=max_k, meta=meta,
                    dtype=dtype)  # fmt: skip


def _default_rtol(dtype: torch.dtype, d: int) -> float:
    """Numerical-rank tolerance ``eps(dtype) * d`` (as in ``numpy.linalg.matrix_rank``)."""
    return torch.finfo(dtype).eps * d
