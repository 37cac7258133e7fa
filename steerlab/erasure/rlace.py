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
from steerlab.erasure.leace import AffineEraser, majority_rate, probe_scores, train_dev_split

logger = logging.getLogger(__name__)

__all__ = ["RlaceConfig", "RlaceEraser", "fantope_project", "rlace"]


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
    init_scale: float = 0.1
    """``P`` starts as ``init_scale · N(0, 1)`` (then symmetrised), as in rlace-icml."""
    affine: bool = True
    """Keep the mean: ``x − P(x − μ)``; False gives the paper's ``x − P x``."""
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
    lam_t, V = torch.linalg.eigh((A + A.T) / 2)
    # the shift is a scalar problem over d eigenvalues: solve it on the host in float64, as
    # rlace-icml does (one small transfer instead of a device sync per bisection step)
    lam = lam_t.detach().double().cpu().numpy()
    theta = _fantope_shift(lam, k)
    gamma = torch.from_numpy(np.clip(lam - theta, 0.0, 1.0)).to(lam_t)
    return (V * gamma) @ V.T


def _fantope_shift(lam: np.ndarray, k: int) -> float:
    """``θ`` with ``f(θ) = Σ clip(λ − θ, 0, 1) = k``, exact up to round-off.

    ``f`` is piecewise linear with breakpoints ``{λ_i} ∪ {λ_i − 1}``: bisection over the sorted
    breakpoints finds the piece where ``f`` crosses ``k`` (``O(log d)`` evaluations instead of
    rlace-icml's 25 halvings of the interval), then linear interpolation on it gives ``θ``.
    """

    def f(theta: float) -> float:
        return float(np.clip(lam - theta, 0.0, 1.0).sum())

    bp = np.sort(np.concatenate([lam, lam - 1.0]))  # f(bp[0]) = d >= k, f(bp[-1]) = 0 <= k
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
    if x_dev is None:
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
    P = ((P + P.T) / 2).requires_grad_()
    opt_P = torch.optim.SGD([P], lr=cfg.lr_P, weight_decay=cfg.weight_decay)
    opt_clf = torch.optim.SGD(
        [W, b], lr=cfg.lr_predictor, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )

    def loss_fn(Pm: Tensor) -> Tensor:
        idx = torch.randint(0, X.shape[0], (cfg.batch_size,), generator=g, device=dev)
        xb = X[idx]
        logits = (xb - xb @ Pm) @ W + b  # x (I − P), P symmetric
        if binary:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], Y[idx].to(dt))
        return torch.nn.functional.cross_entropy(logits, Y[idx])

    best: dict[str, Any] = {"loss": -math.inf}
    history: list[dict[str, float]] = []
    for it in range(cfg.max_iter):
        # adversary: ascend the predictor's loss in P, then project onto the fantope
        opt_P.zero_grad()
        (-loss_fn((P + P.T) / 2)).backward(inputs=[P])
        opt_P.step()
        with torch.no_grad():
            P.copy_(fantope_project(P, cfg.rank))
        # predictor: descend its loss on the projected data
        opt_clf.zero_grad()
        loss_fn(P.detach()).backward(inputs=[W, b])
        opt_clf.step()

        if it % cfg.eval_every == 0 or it == cfg.max_iter - 1:
            U = _top_eigvecs(P.detach(), cfg.rank).cpu()
            dev_loss, dev_acc = probe_scores(
                Xtr - (Xtr @ U) @ U.T, y, Xd - (Xd @ U) @ U.T, yd, max_iter=500
            )
            history.append({"iter": it, "dev_loss": dev_loss, "dev_accuracy": dev_acc})
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
