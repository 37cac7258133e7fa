"""Linear concept erasure: the shared affine eraser, LEACE, and an erasure report.

Every eraser in steerlab is a frozen low-rank affine map (:class:`AffineEraser`)

    ``r(x) = x − P (x − μ)``,   ``P = proj_left @ proj_right``  (``d_model x d_model``, rank r)

with ``μ`` the ``bias`` (``0`` for a linear eraser). ``P`` is the *edit*: a projection
(``P² = P``) onto the erased directions, oblique for LEACE and orthogonal for R-LACE / INLP.
``Q = I − P`` is the linear part of the map, the matrix that concept-erasure and the R-LACE /
INLP papers call ``P``.

LEACE (Belrose et al., "LEACE: Perfect linear concept erasure in closed form", NeurIPS 2023,
arXiv 2306.03819) is fitted here from streamed float64 statistics, following EleutherAI's
``concept-erasure`` (``leace.py``, ``shrinkage.py``). R-LACE and INLP live in
:mod:`steerlab.erasure.rlace` and :mod:`steerlab.erasure.inlp`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from steerlab.artifacts import FrozenArtifact, check_json, register
from steerlab.checks import check_features, check_finite, check_labels, check_targets, check_width
from steerlab.distributed import all_reduce_moments_
from steerlab.subspace import Subspace

logger = logging.getLogger(__name__)

__all__ = [
    "AffineEraser",
    "ErasureReport",
    "LeaceEraser",
    "LeaceFitter",
    "erasure_report",
    "majority_rate",
    "optimal_linear_shrinkage",
    "probe_scores",
    "train_dev_split",
]


def _rank_tol(s_max: Tensor | float, dims: int, dtype: torch.dtype) -> float:
    """Numerical-rank threshold ``s_max · dims · eps`` (the ``torch.linalg.pinv`` rule)."""
    return float(s_max) * dims * torch.finfo(dtype).eps


@dataclass(frozen=True, eq=False, repr=False)
class AffineEraser(FrozenArtifact):
    """A frozen low-rank affine eraser ``r(x) = x − P (x − μ)`` with ``P = L R``.

    ``L = proj_left`` (``d_model x rank``) and ``R = proj_right`` (``rank x d_model``) factor the
    edit ``P``; ``μ = bias`` (None: linear, ``r(x) = x − P x``). Subclasses register a ``kind``
    and add a ``fit`` constructor; the map, ``.to()`` and ``.subspace`` live here, ``save(dir)``
    / ``load(dir)`` come from :class:`~steerlab.artifacts.FrozenArtifact` (``cfg.json`` with
    ``meta``; ``<kind>.safetensors`` with ``proj_left``, ``proj_right`` and ``bias``).
    """

    proj_left: Float[Tensor, "d_model rank"]
    """Left factor ``L`` of the edit ``P = L R``."""
    proj_right: Float[Tensor, "rank d_model"]
    """Right factor ``R`` of the edit ``P = L R``."""
    bias: Float[Tensor, " d_model"] | None = None
    """Affine origin ``μ`` (the training mean for affine erasers); None for a linear eraser."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable info: method, fit statistics, config, per-iteration history."""

    def __post_init__(self) -> None:
        L, R, b = self.proj_left, self.proj_right, self.bias
        if not (isinstance(L, Tensor) and isinstance(R, Tensor)) or L.ndim != 2 or R.ndim != 2:
            raise ValueError("proj_left must be [d_model, rank] and proj_right [rank, d_model]")
        if R.shape != (L.shape[1], L.shape[0]):
            raise ValueError(
                f"factor shapes disagree: proj_left {tuple(L.shape)}, proj_right {tuple(R.shape)}"
            )
        tensors = [L, R] + ([b] if b is not None else [])
        if b is not None and (not isinstance(b, Tensor) or b.shape != (L.shape[0],)):
            raise ValueError(f"bias must have shape ({L.shape[0]},), got {getattr(b, 'shape', b)}")
        if any(t.dtype != L.dtype or t.device != L.device for t in tensors):
            raise ValueError("proj_left, proj_right and bias must share dtype and device")
        if not L.is_floating_point():
            raise ValueError(f"factors must be floating point, got {L.dtype}")
        for name, t in zip(("proj_left", "proj_right", "bias"), tensors):
            check_finite(t, f"eraser {name}")
        check_json(self.meta)

    @property
    def d_model(self) -> int:
        """Width of the activations the eraser acts on."""
        return self.proj_left.shape[0]

    @property
    def rank(self) -> int:
        """Number of stored factor columns (an upper bound on the rank of the edit)."""
        return self.proj_left.shape[1]

    @property
    def edit_rank(self) -> int:
        """Numerical rank of ``P = L R``, from reduced QRs: ``rank(L R) = rank(T_L T_Rᵀ)``."""
        if self.rank == 0:
            return 0
        _, T_L = torch.linalg.qr(self.proj_left.double())
        _, T_R = torch.linalg.qr(self.proj_right.double().T)
        return int(torch.linalg.matrix_rank(T_L @ T_R.T))

    @property
    def P(self) -> Float[Tensor, "d_model d_model"]:
        """The edit ``P = L R`` (dense): ``r(x) = x − P (x − μ)``."""
        return self.proj_left @ self.proj_right

    @property
    def Q(self) -> Float[Tensor, "d_model d_model"]:
        """The linear part ``I − P`` of the map (concept-erasure's and the papers' ``P``)."""
        eye = torch.eye(self.d_model, dtype=self.proj_left.dtype, device=self.proj_left.device)
        return eye - self.P

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Erase: ``x − ((x − μ) Rᵀ) Lᵀ``, computed in at least float32, returned as ``x``'s dtype."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor")
        check_width(x, self.d_model, "x", what="the eraser was fitted with")
        ct = torch.promote_types(x.dtype, torch.float32)
        xc = x.to(ct)
        L = self.proj_left.to(device=x.device, dtype=ct)
        R = self.proj_right.to(device=x.device, dtype=ct)
        delta = xc - self.bias.to(device=x.device, dtype=ct) if self.bias is not None else xc
        # (delta Rᵀ) Lᵀ costs O(d·rank) per row; the dense P would cost O(d²)
        return (xc - (delta @ R.T) @ L.T).type_as(x)

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> AffineEraser:
        """A copy (same class) on ``device`` and/or in ``dtype``."""
        b = None if self.bias is None else self.bias.to(device=device, dtype=dtype)
        return dataclasses.replace(
            self,
            proj_left=self.proj_left.to(device=device, dtype=dtype),
            proj_right=self.proj_right.to(device=device, dtype=dtype),
            bias=b,
            meta=dict(self.meta),
        )

    @property
    def subspace(self) -> Subspace:
        """The erased directions: an orthonormal basis of ``range(P) = span(L)``, origin ``μ``.

        ``r(x) − x`` always lies in this span. For an orthogonal eraser (R-LACE, INLP, LEACE
        ``orth``) ``Subspace.erase`` equals the eraser; for LEACE the edit is oblique, so the
        Subspace gives the directions but its own (orthogonal) ``erase`` differs from LEACE.
        """
        if self.edit_rank == 0:
            raise ValueError("the eraser is the identity (rank 0): there is no erased subspace")
        U, s, _ = torch.linalg.svd(self.proj_left.double(), full_matrices=False)
        U = U[:, s > _rank_tol(s[0], max(U.shape), torch.float64)]
        origin = None if self.bias is None else self.bias.double()
        meta = {"method": getattr(self, "KIND", "eraser"), "edit": "range of P"}
        return Subspace(U, origin, meta).to(dtype=self.proj_left.dtype)

    def __repr__(self) -> str:
        aff = "affine" if self.bias is not None else "linear"
        return f"{type(self).__name__}(d_model={self.d_model}, rank={self.rank}, {aff})"


@register("leace")
@dataclass(frozen=True, eq=False, repr=False)
class LeaceEraser(AffineEraser):
    """LEACE eraser (Belrose et al. 2023): ``r(x) = x − W⁺ U Uᵀ W (x − μ)``.

    ``W = Σ_xx^{-1/2}`` (``W = I`` for ``orth``), ``U`` the left singular vectors of
    ``W Σ_xz``; stored as ``L = W⁺ U`` and ``R = Uᵀ W``. Afterwards ``Cov(r(X), Z) = 0``: every
    class-conditional mean equals ``μ``, so no linear classifier beats a constant one.
    """

    @classmethod
    def fit(cls, x: Tensor, z: Tensor, **kwargs: Any) -> LeaceEraser:
        """Fit on one batch: ``LeaceFitter.fit(x, z, **kwargs).eraser``."""
        return LeaceFitter.fit(x, z, **kwargs).eraser


def optimal_linear_shrinkage(S_n: Float[Tensor, "p p"], n: int) -> Float[Tensor, "p p"]:
    """RMT-optimal linear shrinkage ``α S_n + β (tr S_n / p) I`` (arXiv 1308.2608).

    ``α = 1 − (tr(S)² ‖Σ0‖²/n) / (‖S‖²‖Σ0‖² − tr(S Σ0)²)``, ``β = (1 − α) tr(S Σ0)/‖Σ0‖²``
    with ``Σ0 = (tr S / p) I``, as in concept-erasure's ``shrinkage.py``, except that ``α`` is
    clamped to ``[0, 1]`` so the estimate ``α S + (1 − α) Σ0`` stays positive semi-definite.
    ``eps`` in numerator and denominator keeps a zero matrix finite (α = 0, target 0: a no-op).

    Args:
        S_n: biased sample covariance (divided by ``n``).
        n: sample size.
    """
    p = S_n.shape[-1]
    eps = torch.finfo(S_n.dtype).eps
    tr = torch.trace(S_n)
    sigma0 = torch.eye(p, dtype=S_n.dtype, device=S_n.device) * tr / p
    sigma0_sq = sigma0.square().sum()
    prod = torch.trace(S_n @ sigma0)
    top = tr * tr * sigma0_sq / n
    bottom = S_n.square().sum() * sigma0_sq - prod * prod
    # clamped to [0, 1]: for small n the RMT formula can go negative (S nearly isotropic makes
    # the denominator vanish), which concept-erasure leaves as is; the estimate is then
    # indefinite and LEACE no longer erases (Σ_xz leaves the whitened range)
    alpha = (1 - (top + eps) / (bottom + eps)).clamp(0.0, 1.0)
    beta = (1 - alpha) * (prod + eps) / (sigma0_sq + eps)
    return alpha * S_n + beta * sigma0


class LeaceFitter:
    """Streams the statistics of LEACE and builds a :class:`LeaceEraser`.

    Keeps Welford means of ``x`` and ``z`` and the unnormalised ``Σ_xx = Σ (x−x̄)(x−x̄)ᵀ`` and
    ``Σ_xz`` in ``dtype`` (float64 by default), O(d²) memory whatever the number of samples.
    ``z`` is one-hot (given as class indices ``[n]`` or rows ``[n, k]``) or, for ``k = 1``, one
    real column. See :class:`LeaceEraser` for the map.

    Deviations from concept-erasure: ``constrain_cov_trace`` is omitted because for real data
    it never binds: ``tr(PΣPᵀ) = tr Σ − uᵀΣu ≤ tr Σ`` for the LEACE ``P`` (its branch is reached
    only by round-off). The shrinkage intensity is clamped to ``[0, 1]`` (see
    :func:`optimal_linear_shrinkage`); concept-erasure's can go negative for small ``n``.
    Singular values at or below ``max(svd_tol, s₁·max(d,k)·eps)`` are dropped, not kept as zero
    columns, so ``rank`` is the rank of the edit.
    """

    def __init__(
        self,
        d: int,
        k: int,
        *,
        affine: bool = True,
        method: Literal["leace", "orth"] = "leace",
        shrinkage: bool = True,
        svd_tol: float = 0.01,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> None:
        """Args:
        d: width of ``x`` (d_model).
        k: number of classes (one-hot columns of ``z``), or 1 for a binary/real column.
        affine: keep the mean: ``r(x) = x − P(x − μ)``; False gives ``x − P x``.
        method: ``"leace"`` (whitened, least-squares optimal) or ``"orth"`` (orthogonal
            projection off ``span Σ_xz``).
        shrinkage: RMT-optimal shrinkage of ``Σ_xx`` (:func:`optimal_linear_shrinkage`);
            False uses Bessel's ``n − 1``.
        svd_tol: drop singular values of ``W Σ_xz`` ``<= svd_tol``. For ``leace`` that matrix
            is whitened (scale-free in ``x``); for ``orth`` it is in units of ``x``.
        dtype: accumulator dtype (float64 recommended).
        device: accumulator device.
        """
        if d < 1 or k < 1:
            raise ValueError(f"d and k must be >= 1, got d={d}, k={k}")
        if method not in ("leace", "orth"):
            raise ValueError(f"method must be 'leace' or 'orth', got {method!r}")
        if svd_tol < 0:
            raise ValueError(f"svd_tol must be >= 0, got {svd_tol}")
        self.d, self.k = d, k
        self.affine, self.method, self.shrinkage, self.svd_tol = affine, method, shrinkage, svd_tol
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.n = 0
        self.mean_x = torch.zeros(d, **kw)
        self.mean_z = torch.zeros(k, **kw)
        self.sigma_xz_ = torch.zeros(d, k, **kw)
        self.sigma_xx_ = torch.zeros(d, d, **kw) if method == "leace" else None
        self.var_z_ = torch.zeros(k, **kw)  # unnormalised, to detect a single class
        self._eraser: LeaceEraser | None = None

    @classmethod
    def fit(cls, x: Tensor, z: Tensor, **kwargs: Any) -> LeaceFitter:
        """A fitter updated once with all of ``x`` (``[n, d]``) and ``z``.

        ``z`` is integer/bool class indices ``[n]`` (``k`` = number of classes) or real targets
        ``[n]`` / ``[n, k]`` (one-hot rows, or one binary column as in concept-erasure).
        """
        x2 = check_features(x, min_samples=2)
        n = x2.shape[0]
        if not isinstance(z, Tensor):
            raise ValueError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point() and (z.ndim <= 1 or z.numel() == n):
            _, k = check_labels(z, n)
        else:
            k = check_targets(z, n).shape[1]
        kwargs.setdefault("device", x.device)
        return cls(x2.shape[1], k, **kwargs).update(x, z)

    def _targets(self, z: Tensor, n: int) -> Tensor:
        if self.k > 1 and isinstance(z, Tensor) and z.numel() == n:
            labels, _ = check_labels(z, n, n_classes=self.k, whole_dataset=False)
            return torch.nn.functional.one_hot(labels, self.k).to(self.mean_z)
        return check_targets(z, n, k=self.k, whole_dataset=False).to(self.mean_z)

    @torch.no_grad()
    def update(self, x: Float[Tensor, "... d"], z: Tensor) -> LeaceFitter:
        """Add a batch: ``x`` ``[..., d]``; ``z`` class indices ``[...]`` or targets ``[..., k]``.

        Chan et al.'s batched Welford update: with ``x̄`` before and ``x̄'`` after the batch,
        ``Σ_xx += Σ_i (x_i − x̄)(x_i − x̄')ᵀ``, exact for any batch split.
        """
        x2 = check_features(x, d=self.d).to(self.mean_x)
        n = x2.shape[0]
        zz = self._targets(z, n)
        self.n += n
        dx = x2 - self.mean_x
        self.mean_x += dx.sum(0) / self.n
        dx2 = x2 - self.mean_x
        if self.sigma_xx_ is not None:
            self.sigma_xx_.addmm_(dx.T, dx2)
        dz = zz - self.mean_z
        self.mean_z += dz.sum(0) / self.n
        dz2 = zz - self.mean_z
        self.sigma_xz_.addmm_(dx.T, dz2)
        self.var_z_ += (dz * dz2).sum(0)
        self._eraser = None
        return self

    @torch.no_grad()
    def all_reduce_(self) -> LeaceFitter:
        """Merge the statistics of every rank (``torch.distributed``), in place; returns ``self``.

        Each rank :meth:`update` s with its own rows; afterwards every rank holds the means
        and co-moments of all rows (:func:`steerlab.distributed.all_reduce_moments_`, Chan's
        rule), so :attr:`eraser` equals a one-process fit on the union to float64 round-off.
        Call it once, on every rank, after the last update (a second call would count the
        rows again). A no-op in one process.
        """
        comoments = [(self.sigma_xz_, 0, 1), (self.var_z_, 1, 1)]
        if self.sigma_xx_ is not None:
            comoments.append((self.sigma_xx_, 0, 0))
        self.n = all_reduce_moments_(self.n, [self.mean_x, self.mean_z], comoments)
        self._eraser = None
        return self

    def _check_fitted(self) -> None:
        if self.n < 2:
            raise ValueError(f"LEACE needs at least 2 samples, got {self.n}; call update()")
        if self.k > self.n:
            raise ValueError(f"more classes than samples: k={self.k} classes, n={self.n}")
        if bool((self.var_z_ <= 0).all()):
            raise ValueError("z is constant over all samples (a single class): nothing to erase")

    @property
    def sigma_xx(self) -> Float[Tensor, "d d"]:
        """Covariance of ``x``: shrunk (``shrinkage``) or with Bessel's correction."""
        self._check_fitted()
        if self.sigma_xx_ is None:
            raise ValueError("method='orth' does not track sigma_xx")
        # accumulated round-off leaves the addmm_ sum slightly non-symmetric
        S = (self.sigma_xx_ + self.sigma_xx_.T) / 2
        if self.shrinkage:
            return optimal_linear_shrinkage(S / self.n, self.n)
        return S / (self.n - 1)

    @property
    def sigma_xz(self) -> Float[Tensor, "d k"]:
        """Cross-covariance of ``x`` and ``z`` (Bessel-corrected)."""
        self._check_fitted()
        return self.sigma_xz_ / (self.n - 1)

    @property
    def eraser(self) -> LeaceEraser:
        """The eraser for the statistics so far (cached until the next :meth:`update`)."""
        if self._eraser is None:
            self._eraser = self._build()
        return self._eraser

    def _build(self) -> LeaceEraser:
        sigma_xz = self.sigma_xz
        eps = torch.finfo(sigma_xz.dtype).eps
        if self.method == "leace":
            lam, V = torch.linalg.eigh(self.sigma_xx)
            # pinv rule: eigenvalues below λ_max·d·eps are round-off, so the inverse square root
            # is taken on the numerical range only; a rank-deficient Σ gives no inf/NaN
            mask = lam > _rank_tol(lam[-1].clamp_min(0), self.d, lam.dtype)
            lam = lam.clamp_min(0.0)
            inv_sqrt = torch.where(mask, lam.clamp_min(eps).rsqrt(), torch.zeros_like(lam))
            W = (V * inv_sqrt) @ V.T
            W_inv = (V * torch.where(mask, lam.sqrt(), torch.zeros_like(lam))) @ V.T
            M = W @ sigma_xz
        else:
            W = W_inv = None
            M = sigma_xz
        u, s, _ = torch.linalg.svd(M, full_matrices=False)
        s0 = s[0] if s.numel() else 0.0
        keep = s > max(self.svd_tol, _rank_tol(s0, max(self.d, self.k), M.dtype))
        u = u[:, keep]
        L = W_inv @ u if W_inv is not None else u
        R = u.T @ W if W is not None else u.T
        if u.shape[1] == 0:
            logger.warning("LEACE: no singular value of W·Σ_xz above %.3g; eraser is the identity",
                           self.svd_tol)  # fmt: skip
        meta = {
            "method": self.method, "n": self.n, "k": self.k, "shrinkage": self.shrinkage,
            "svd_tol": self.svd_tol, "singular_values": s.tolist(),
        }  # fmt: skip
        bias = self.mean_x.clone() if self.affine else None
        return LeaceEraser(L.contiguous(), R.contiguous(), bias, meta)


# --- shared by the erasers ------------------------------------------------------------------------


def majority_rate(labels: Int[Tensor, " n"]) -> float:
    """Accuracy of always predicting the most frequent class: ``max_c n_c / n``."""
    return float(torch.bincount(labels.reshape(-1).long()).max()) / labels.numel()


def _as_labels(z: Tensor, n: int, name: str) -> Tensor:
    """Class indices from indices ``[n]`` or one-hot / score rows ``[n, k]`` (argmax)."""
    if z.ndim == 2 and z.shape[1] > 1:
        z = z.argmax(1)
    return check_labels(z, n, name, min_classes=1)[0]


def train_dev_split(
    x: Tensor, labels: Tensor, dev_fraction: float, seed: int | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A random split ``(x_train, y_train, x_dev, y_dev)`` with ``round(n·dev_fraction)`` dev rows."""
    n = x.shape[0]
    n_dev = round(n * dev_fraction)
    if not 1 <= n_dev <= n - 2:
        raise ValueError(f"dev_fraction={dev_fraction} leaves no usable split of {n} samples")
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    perm = torch.randperm(n, generator=g).to(x.device)
    dev, tr = perm[:n_dev], perm[n_dev:]
    return x[tr], labels[tr], x[dev], labels[dev]


class ErasureReport(NamedTuple):
    """How much an eraser leaves and costs, on held-out data."""

    accuracy: float
    """Held-out accuracy of a logistic probe trained on erased training data."""
    accuracy_before: float
    """The same probe trained and tested without erasure."""
    majority: float
    """Majority rate of the test labels (a constant predictor's accuracy)."""
    mse: float
    """Mean over test samples of ``‖x − r(x)‖²`` (squared norm summed over d_model)."""
    rank: int
    """Numerical rank of the edit ``P``."""


def erasure_report(
    eraser: AffineEraser,
    x_train: Float[Tensor, "n d_model"],
    z_train: Tensor,
    x_test: Float[Tensor, "m d_model"],
    z_test: Tensor,
    *,
    max_iter: int = 2000,
) -> ErasureReport:
    """Probe accuracy after erasure vs the majority rate, the squared change and the edit rank.

    The probe is ``StandardScaler → LogisticRegression(lbfgs, C=1)`` from scikit-learn, fitted
    afresh on the training split (standardising is affine, so it cannot undo nor help beat a
    linear guard). Labels are class indices or one-hot rows.
    """
    xtr = check_features(x_train, "x_train", d=eraser.d_model, min_samples=2)
    xte = check_features(x_test, "x_test", d=eraser.d_model)
    ytr = check_labels(_as_labels(z_train, xtr.shape[0], "z_train"), name="z_train")[0]
    yte = _as_labels(z_test, xte.shape[0], "z_test")
    ex_tr, ex_te = eraser(xtr.double()), eraser(xte.double())
    mse = float((xte.double() - ex_te).square().sum(-1).mean())
    return ErasureReport(
        accuracy=probe_scores(ex_tr, ytr, ex_te, yte, max_iter=max_iter)[1],
        accuracy_before=probe_scores(xtr, ytr, xte, yte, max_iter=max_iter)[1],
        majority=majority_rate(yte),
        mse=mse,
        rank=eraser.edit_rank,
    )


def probe_scores(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, max_iter: int = 2000
) -> tuple[float, float]:
    """Held-out ``(log_loss, accuracy)`` of a fresh ``StandardScaler → LogisticRegression``.

    lbfgs with ``C = 1`` converges to the unique regularised optimum, so the score is
    deterministic (unlike the SGD classifiers of rlace-icml).
    """
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(x_train.double().cpu().numpy(), y_train.cpu().numpy())
    xt, yt = x_test.double().cpu().numpy(), y_test.cpu().numpy()
    proba = clf.predict_proba(xt)
    return float(log_loss(yt, proba, labels=clf.classes_)), float(clf.score(xt, yt))
