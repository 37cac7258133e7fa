"""R-LACE: rank-k linear concept erasure by a constrained minimax game.

Ravfogel, Twiton, Goldberg, Cotterell, "Linear Adversarial Concept Erasure", ICML 2022
(reference code: shauli-ravfogel/rlace-icml, ``rlace.py``). The game is

    ``min_{P ∈ 𝓕_k}  max_{θ}  −ℓ(θ; X (I − P), z)``,   ``𝓕_k = {P = Pᵀ, 0 ⪯ P ⪯ I, tr P = k}``

i.e. the projection makes the best linear predictor's cross-entropy ``ℓ`` (binary: logistic,
multiclass: softmax) as large as possible. ``𝓕_k`` is the fantope, the convex hull of the rank-k
orthogonal projections. Alternating SGD: one ascent step of ``ℓ`` in ``P`` followed by the
Frobenius projection onto ``𝓕_k`` (:func:`fantope_project`), then one descent step of ``ℓ`` in
the predictor. Every ``eval_every`` steps the relaxed ``P`` is rounded to the projection onto
its top-k eigenvectors ``U`` and scored by a fresh logistic probe on held-out data; the ``U``
with the highest held-out log-loss is kept, and the game stops once the probe's accuracy is
within ``epsilon`` of the majority rate. The eraser is ``r(x) = x − U Uᵀ (x − μ)``.

**Factored solver.** Each ascent step adds a rank-≤2c matrix to ``P`` (the loss gradient is
``sym(A Wᵀ)`` with ``A = X_bᵀ G`` and the predictor's ``W``, both ``d × c``; ``c = 1`` for a
binary concept) and scales it by ``1 − η·wd``; the projection onto ``𝓕_k`` keeps the
eigenvectors and moves only the eigenvalues. So after the first step ``P`` stays of the form

    ``P = Q M Qᵀ + c₀ (I − Q Qᵀ)``,   ``QᵀQ = I_r``, ``r ≪ d``

and every step is exact in the ``r + 2c`` columns of ``[Q, A, W]`` plus one shared eigenvalue
``c₀`` on the complement (``solver="factored"``: ``O(d r²)`` per step instead of the
``O(d³)`` eigendecomposition of the reference; 60,000 steps take minutes on a CPU instead of
hours). ``solver="dense"`` runs the reference's dense ``P``; the tests check that the two give
the same ``P`` step by step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.artifacts import register
from steerlab.checks import check_features, check_labels
from steerlab.config import check_fraction, check_nonnegative, check_positive, check_types
from steerlab.erasure.leace import (
    AffineEraser,
    LeaceEraser,
    majority_rate,
    probe_scores,
    train_dev_split,
)

logger = logging.getLogger(__name__)

__all__ = ["RlaceConfig", "RlaceEraser", "fantope_project", "leace_start", "rlace"]


@dataclass
class RlaceConfig:
    """Hyperparameters of the R-LACE game (defaults: the rlace-icml README)."""

    rank: int = 1
    """Rank ``k`` of the erased subspace (``tr P = k``)."""
    max_iter: int = 50_000
    """Outer iterations (one P step + one predictor step each); the paper runs 50k–75k."""
    batch_size: int = 256
    """Samples per stochastic step."""
    lr_P: float = 0.003
    """SGD learning rate of ``P`` (0.005 for Bias in Bios)."""
    lr_predictor: float = 0.003
    """SGD learning rate of the linear predictor."""
    weight_decay: float = 1e-4
    """SGD weight decay of both players."""
    momentum: float = 0.0
    """SGD momentum of the predictor (0.9 for Bias in Bios)."""
    epsilon: float = 0.001
    """Stop when held-out probe accuracy is within ``epsilon`` of the majority rate."""
    eval_every: int = 1000
    """Score the current ``P`` with a fresh held-out probe every this many iterations."""
    dev_fraction: float = 0.2
    """Held-out share of the data when no ``x_dev`` is given."""
    init: Literal["random", "leace"] = "random"
    """Start of ``P``: ``random`` (``init_scale · N(0, 1)``, symmetrised, as in rlace-icml) or
    ``leace``: the orthogonal projection onto the first ``k`` directions of LEACE's edit, its
    column space ``span(Σ_xz)`` (the class-mean differences) then its row space
    ``span(Σ_xx⁻¹ Σ_xz)``, with any trace left over spread evenly on the complement (a warm
    start at a linear guard; the game then runs from there)."""
    init_scale: float = 0.1
    """``P`` starts as ``init_scale · N(0, 1)`` (then symmetrised) with ``init="random"``."""
    affine: bool = True
    """Keep the mean: ``x − P(x − μ)``; False gives the paper's ``x − P x``."""
    solver: Literal["factored", "dense"] = "factored"
    """``factored``: ``P`` kept as ``Q M Qᵀ + c₀(I − QQᵀ)`` (exact, fast; see the module
    docstring); ``dense``: the reference's ``d × d`` matrix and its eigendecomposition."""
    dtype: Literal["float32", "float64"] = "float64"
    """Dtype of the game (float32 is faster on GPUs; the scoring is float64 either way)."""
    seed: int | None = 0
    """Seed of the initial ``P``, the batches and the dev split; None: nondeterministic."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "rank", "max_iter", "batch_size", "eval_every")
        check_positive(self, "lr_P", "lr_predictor", "init_scale", "epsilon")
        check_nonnegative(self, "weight_decay", "seed")
        check_fraction(self, "momentum", low=True)
        check_fraction(self, "dev_fraction")


@register("rlace")
@dataclass(frozen=True, eq=False, repr=False)
class RlaceEraser(AffineEraser):
    """R-LACE eraser (Ravfogel et al., ICML 2022): ``r(x) = x − U Uᵀ (x − μ)``, ``UᵀU = I_k``.

    ``proj_left = U``, ``proj_right = Uᵀ``: the edit ``P = U Uᵀ`` is a rank-k orthogonal
    projection. ``meta`` holds the config and the evaluation history.
    """

    @classmethod
    def fit(cls, x: Tensor, z: Tensor, config: RlaceConfig | None = None, **kw: Any) -> RlaceEraser:
        """Shortcut for :func:`rlace`."""
        return rlace(x, z, config, **kw)


def fantope_project(A: Float[Tensor, "d d"], k: int) -> Float[Tensor, "d d"]:
    """Frobenius projection of a symmetric ``A`` onto the fantope ``𝓕_k``.

    With ``A = V diag(λ) Vᵀ`` the projection is ``V diag(γ) Vᵀ``, ``γ_i = clip(λ_i − θ, 0, 1)``,
    where ``θ`` solves ``Σ_i clip(λ_i − θ, 0, 1) = k`` (Vu et al. 2013, "Fantope projection and
    selection"). The left side is continuous, piecewise linear and non-increasing in ``θ``,
    ``d`` at ``θ = λ_min − 1`` and ``0`` at ``θ = λ_max``; :func:`_fantope_shift` bisects it.
    """
    d = A.shape[-1]
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must be square, got {tuple(A.shape)}")
    if not 1 <= k <= d:
        raise ValueError(f"rank k={k} must be in [1, d={d}]")
    V, gamma = _fantope_eig(A, k)
    return (V * gamma) @ V.T


def _fantope_eig(A: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Eigenvectors ``V`` of symmetric ``A`` and the projected eigenvalues ``γ`` (see
    :func:`fantope_project`)."""
    lam_t, V = torch.linalg.eigh((A + A.T) / 2)
    # the shift is a scalar problem over d eigenvalues: solve it on the host in float64, as
    # rlace-icml does (one small transfer instead of a device sync per bisection step)
    lam = lam_t.detach().double().cpu().numpy()
    theta = _fantope_shift(lam, k)
    return V, torch.from_numpy(np.clip(lam - theta, 0.0, 1.0)).to(lam_t)


def _fantope_shift(lam: np.ndarray, k: int, mult: np.ndarray | None = None) -> float:
    """``θ`` with ``f(θ) = Σ m_i clip(λ_i − θ, 0, 1) = k``, exact up to round-off.

    ``m_i`` is the multiplicity of eigenvalue ``λ_i`` (default 1; the factored solver passes
    its complement eigenvalue once with multiplicity ``d − r``). ``f`` is piecewise linear with
    breakpoints ``{λ_i} ∪ {λ_i − 1}``: bisection over the sorted breakpoints finds the piece
    where ``f`` crosses ``k`` (``O(log d)`` evaluations instead of rlace-icml's 25 halvings of
    the interval), then linear interpolation on it gives ``θ``.
    """
    m = np.ones_like(lam) if mult is None else np.asarray(mult, dtype=np.float64)

    def f(theta: float) -> float:
        return float((m * np.clip(lam - theta, 0.0, 1.0)).sum())

    bp = np.sort(np.concatenate([lam, lam - 1.0]))  # f(bp[0]) = Σ m = d >= k, f(bp[-1]) = 0
    lo, hi = 0, bp.size - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(bp[mid]) >= k:
            lo = mid
        else:
            hi = mid
    f_lo, f_hi = f(bp[lo]), f(bp[hi])
    if f_lo == f_hi:  # flat piece at height k: any θ on it gives the same clip
        return float(bp[lo])
    return float(bp[lo] + (f_lo - k) * (bp[hi] - bp[lo]) / (f_lo - f_hi))


def _top_eigvecs(P: Tensor, k: int) -> Tensor:
    """Orthonormal top-k eigenvectors of symmetric ``P`` (float64), ``[d, k]``."""
    _, V = torch.linalg.eigh(((P + P.T) / 2).double())
    return V[:, -k:].flip(1)


class _Factored:
    """``P = Q M Qᵀ + c (I − Q Qᵀ)`` with orthonormal ``Q`` ``[d, r]`` and symmetric ``M``.

    The state of the factored solver (module docstring). ``c`` is the one eigenvalue ``P`` has
    on the complement of ``span(Q)`` (0 once the game has found a low-rank ``P``).
    """

    def __init__(self, Q: Tensor, M: Tensor, c: float) -> None:
        self.Q, self.M, self.c = Q, M, c

    @classmethod
    def from_eig(cls, V: Tensor, gamma: Tensor) -> _Factored:
        """From ``P = V diag(γ) Vᵀ``: the columns with ``γ ≠ 0`` (the rest is the complement)."""
        keep = gamma != 0
        return cls(V[:, keep], torch.diag(gamma[keep]), 0.0)

    def dense(self) -> Tensor:
        Q = self.Q
        eye = torch.eye(Q.shape[0], dtype=Q.dtype, device=Q.device)
        return Q @ self.M @ Q.T + self.c * (eye - Q @ Q.T)

    def times(self, x: Tensor) -> Tensor:
        """``x P`` for rows ``x`` (``P`` is symmetric)."""
        xq = x @ self.Q
        out = xq @ self.M @ self.Q.T
        return out + self.c * (x - xq @ self.Q.T) if self.c != 0 else out

    def step_(self, G: Tensor, W: Tensor, lr: float, wd: float, k: int) -> None:
        """``P ← Π_𝓕k((1 − lr·wd) P − lr·sym(G Wᵀ))`` in place (``G``, ``W``: ``[d, c]``)."""
        Q, d = self.Q, self.Q.shape[0]
        N = _complement_basis(Q, torch.cat([G, W], 1))
        Qn = torch.cat([Q, N], 1)
        r, n = Q.shape[1], N.shape[1]
        decay = 1.0 - lr * wd
        Mn = torch.zeros(r + n, r + n, dtype=Q.dtype, device=Q.device)
        Mn[:r, :r] = self.M * decay
        Mn[r:, r:] = torch.eye(n, dtype=Q.dtype, device=Q.device) * (self.c * decay)
        Gh, Wh = Qn.T @ G, Qn.T @ W  # exact: G and W lie in span(Qn)
        Mn -= (lr / 2) * (Gh @ Wh.T + Wh @ Gh.T)
        lam_t, V = torch.linalg.eigh((Mn + Mn.T) / 2)
        c = self.c * decay
        lam = lam_t.double().cpu().numpy()
        mult = np.concatenate([np.ones_like(lam), [d - r - n]])
        theta = _fantope_shift(np.concatenate([lam, [c]]), k, mult)
        gamma = torch.from_numpy(np.clip(lam - theta, 0.0, 1.0)).to(lam_t)
        c_new = float(np.clip(c - theta, 0.0, 1.0)) if d > r + n else 0.0
        # directions whose eigenvalue equals the complement's merge back into it (exactly so
        # when both are clipped to 0, the usual case): this keeps r small
        tol = 64 * torch.finfo(Q.dtype).eps * max(1.0, float(lam_t.abs().max()))
        keep = (gamma - c_new).abs() > tol
        self.Q = Qn @ V[:, keep]
        self.M = torch.diag(gamma[keep])
        self.c = c_new

    def reorthonormalize_(self) -> None:
        """``Q ← QR(Q)``: undo the slow drift of ``QᵀQ`` from ``I`` over thousands of steps."""
        Qr, R = torch.linalg.qr(self.Q)
        self.Q, self.M = Qr, R @ self.M @ R.T

    def top_eigvecs(self, k: int) -> Tensor:
        """Orthonormal top-k eigenvectors (float64) ``[d, k]``."""
        g = torch.linalg.eigvalsh(self.M)
        if int((g > self.c).sum()) < k:  # the complement is among the top k: any basis of it
            return _top_eigvecs(self.dense(), k)
        _, V = torch.linalg.eigh(self.M)
        U = (self.Q @ V[:, -k:].flip(1)).double()
        # Q drifts from orthonormal by ~eps per step; the eraser needs UᵀU = I to round-off
        Uq, R = torch.linalg.qr(U)
        return Uq * torch.sign(torch.diagonal(R))


def _complement_basis(Q: Tensor, G: Tensor) -> Tensor:
    """An orthonormal basis of ``span(G) ⊖ span(Q)`` (Gram-Schmidt twice, then an SVD; residual
    singular values at or below ``‖G‖₂ · d · eps`` are dropped)."""
    R = G
    for _ in range(2):
        R = R - Q @ (Q.T @ R)
    A, s, _ = torch.linalg.svd(R, full_matrices=False)
    tol = float(torch.linalg.matrix_norm(G, ord=2)) * G.shape[0] * torch.finfo(G.dtype).eps
    return A[:, s > tol]


def leace_start(
    x: Float[Tensor, "n d_model"], z: Tensor, k: int
) -> Float[Tensor, "d_model d_model"]:
    """A point of the fantope ``𝓕_k`` at LEACE's guard (``RlaceConfig.init="leace"``).

    The orthonormalised columns of ``[L, Rᵀ]`` of the LEACE edit ``P = L R`` (Belrose et al.
    2023): ``L`` spans the class-mean differences ``Σ_xz`` (removing them orthogonally already
    makes every class mean equal), ``Rᵀ`` the whitened discriminants ``Σ_xx⁻¹ Σ_xz``. The first
    ``min(k, m)`` of these ``m`` directions get eigenvalue 1; if ``k > m`` the remaining trace
    ``k − m`` is spread evenly over the ``d − m`` other directions (eigenvalues ``≤ 1``).
    """
    d = x.shape[1]
    e = LeaceEraser.fit(x.double(), z)
    V = torch.cat([e.proj_left.double(), e.proj_right.double().T], 1)
    U = torch.zeros(d, 0, dtype=torch.float64)
    for j in range(V.shape[1]):  # Gram-Schmidt in order, dropping dependent columns
        v = V[:, j] - U @ (U.T @ V[:, j])
        v = v - U @ (U.T @ v)
        if float(v.norm()) > float(V[:, j].norm()) * d * torch.finfo(v.dtype).eps:
            U = torch.cat([U, (v / v.norm())[:, None]], 1)
    U = U[:, :k]
    m = U.shape[1]
    P = U @ U.T
    if k > m:
        P = P + (k - m) / (d - m) * (torch.eye(d, dtype=P.dtype) - P)
    return P


def rlace(
    x: Float[Tensor, "n d_model"],
    z: Tensor,
    config: RlaceConfig | None = None,
    *,
    x_dev: Float[Tensor, "m d_model"] | None = None,
    z_dev: Tensor | None = None,
    device: str | torch.device | None = None,
) -> RlaceEraser:
    """Fit an R-LACE eraser.

    Args:
        x: training activations ``[n, d_model]``.
        z: class indices ``[n]`` (two classes: logistic adversary; more: softmax).
        config: hyperparameters (default :class:`RlaceConfig`).
        x_dev, z_dev: held-out data to select ``P``; default a ``dev_fraction`` split of ``x``.
        device: where the game runs (default ``x.device``).
    """
    cfg = config or RlaceConfig()
    xs = check_features(x, "x", min_samples=2)
    d = xs.shape[1]
    y, n_classes = check_labels(z, xs.shape[0], "z")
    if cfg.rank > d:
        raise ValueError(f"RlaceConfig.rank={cfg.rank} exceeds d_model={d}")
    if (x_dev is None) != (z_dev is None):
        raise ValueError("give both x_dev and z_dev, or neither")
    if x_dev is None or z_dev is None:  # both or neither (checked above)
        xs, y, xd, yd = train_dev_split(xs, y, cfg.dev_fraction, cfg.seed)
    else:
        xd = check_features(x_dev, "x_dev", d=d)
        yd, _ = check_labels(z_dev, xd.shape[0], "z_dev", n_classes=n_classes, min_classes=1)
    check_labels(y, name="z (training split)")  # both classes must survive the split
    dev = torch.device(device) if device is not None else xs.device
    dt = getattr(torch, cfg.dtype)
    mu = xs.double().mean(0)
    X = (xs.double() - mu).to(device=dev, dtype=dt)  # centring: the predictor's bias absorbs it
    Y = y.to(dev)
    Xtr, Xd = (xs.double() - mu).cpu(), (xd.double() - mu).cpu()  # sklearn scores on the host
    maj = majority_rate(yd)

    g = torch.Generator(device=dev).manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    binary = n_classes == 2
    c = 1 if binary else n_classes
    bound = 1 / math.sqrt(d)  # nn.Linear's default init, drawn from our generator
    W = ((torch.rand(d, c, generator=g, device=dev, dtype=dt) * 2 - 1) * bound).requires_grad_()
    b = torch.zeros(c, device=dev, dtype=dt, requires_grad=True)
    P = cfg.init_scale * torch.randn(d, d, generator=g, device=dev, dtype=dt)
    if cfg.init == "leace":  # drawn anyway, so that both starts share the batch sequence
        P = leace_start(X.double().cpu(), y.cpu(), cfg.rank).to(device=dev, dtype=dt)
    P = ((P + P.T) / 2).requires_grad_()
    opt_P = torch.optim.SGD([P], lr=cfg.lr_P, weight_decay=cfg.weight_decay)
    opt_clf = torch.optim.SGD(
        [W, b], lr=cfg.lr_predictor, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )

    def batch() -> Tensor:
        return torch.randint(0, X.shape[0], (cfg.batch_size,), generator=g, device=dev)

    def loss_of(logits: Tensor, idx: Tensor) -> Tensor:
        if binary:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], Y[idx].to(dt))
        return torch.nn.functional.cross_entropy(logits, Y[idx])

    def loss_fn(Pm: Tensor) -> Tensor:
        idx = batch()
        xb = X[idx]
        return loss_of((xb - xb @ Pm) @ W + b, idx)  # x (I − P), P symmetric

    fac: _Factored | None = None  # the factored state, from the second step on

    def ascend_factored() -> None:
        # the dense step's gradient in closed form: d(−ℓ)/dP = sym(A Wᵀ), A = X_bᵀ ∂ℓ/∂logits
        assert fac is not None  # called once the first dense step has set the factored state
        idx = batch()
        xb = X[idx]
        logits = ((xb - fac.times(xb)) @ W.detach() + b.detach()).requires_grad_()
        loss_of(logits, idx).backward(inputs=[logits])
        assert logits.grad is not None  # backward(inputs=[logits]) has just set it
        fac.step_(xb.T @ logits.grad, W.detach(), cfg.lr_P, cfg.weight_decay, cfg.rank)

    best: dict[str, Any] = {"loss": -math.inf}
    history: list[dict[str, float]] = []
    for it in range(cfg.max_iter):
        # adversary: ascend the predictor's loss in P, then project onto the fantope
        if fac is None:
            opt_P.zero_grad()
            (-loss_fn((P + P.T) / 2)).backward(inputs=[P])
            opt_P.step()
            with torch.no_grad():
                V, gamma = _fantope_eig(P, cfg.rank)
                P.copy_((V * gamma) @ V.T)
            if cfg.solver == "factored":
                fac = _Factored.from_eig(V, gamma)
        else:
            ascend_factored()
            if it % 256 == 0:
                fac.reorthonormalize_()
        # predictor: descend its loss on the projected data
        opt_clf.zero_grad()
        if fac is None:
            loss_fn(P.detach()).backward(inputs=[W, b])
        else:
            idx = batch()
            xb = X[idx]
            loss_of((xb - fac.times(xb)) @ W + b, idx).backward(inputs=[W, b])
        opt_clf.step()

        if it % cfg.eval_every == 0 or it == cfg.max_iter - 1:
            U = _top_eigvecs(P.detach(), cfg.rank) if fac is None else fac.top_eigvecs(cfg.rank)
            U = U.cpu()
            dev_loss, dev_acc = probe_scores(
                Xtr - (Xtr @ U) @ U.T, y, Xd - (Xd @ U) @ U.T, yd, max_iter=500
            )
            history.append({"iter": it, "dev_loss": dev_loss, "dev_accuracy": dev_acc,
                            "factored_rank": -1 if fac is None else int(fac.Q.shape[1])})  # fmt: skip
            logger.debug("rlace iter %d: dev loss %.4f acc %.4f (majority %.4f)",
                         it, dev_loss, dev_acc, maj)  # fmt: skip
            if dev_loss > best["loss"]:
                best = {"loss": dev_loss, "accuracy": dev_acc, "iter": it, "U": U}
            if abs(dev_acc - maj) < cfg.epsilon:
                logger.info("rlace: accuracy %.4f within %.4g of majority %.4f at iter %d",
                            dev_acc, cfg.epsilon, maj, it)  # fmt: skip
                break
    U = best.pop("U")
    meta = {
        "method": "rlace",
        "config": asdict(cfg),
        "n_classes": n_classes,
        "majority": maj,
        "best": best,
        "history": history,
    }
    U = U.to(xs.device)
    bias = mu if cfg.affine else None
    return RlaceEraser(U.contiguous(), U.T.contiguous(), bias, meta)
