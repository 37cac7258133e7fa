"""INLP: iterative nullspace projection.

Ravfogel, Elazar, Gonen, Twiton, Goldberg, "Null It Out: Guarding Protected Attributes by
Iterative Nullspace Projection", ACL 2020 (reference code: shauli-ravfogel/nullspace_projection,
``src/debias.py``). Iteration ``i`` trains a linear classifier with weights ``W_i`` on the
projected data ``X Q_{i−1}ᵀ`` and removes its row space:

    ``Q_i = I − P_R(W_1; …; W_i)``   (the intersection of the classifiers' nullspaces)

where ``P_R`` is the orthogonal projector onto the span of all rows so far (Ben-Israel's
formula, evaluated here by orthonormalising each new ``W_i`` against the running basis ``U``).
It stops after ``n_iter`` removals or once the held-out accuracy is at most the majority rate
plus ``epsilon``. The eraser is ``r(x) = x − U Uᵀ (x − μ)`` with ``P = U Uᵀ = I − Q``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from torch import Tensor

from steerlab.artifacts import register
from steerlab.checks import check_features, check_labels
from steerlab.config import check_fraction, check_nonnegative, check_positive, check_types
from steerlab.erasure.leace import AffineEraser, majority_rate, train_dev_split

logger = logging.getLogger(__name__)

__all__ = ["InlpConfig", "InlpEraser", "inlp"]


@dataclass
class InlpConfig:
    """Hyperparameters of INLP."""

    n_iter: int = 25
    """Most classifiers (removals) to run; rlace-icml compares against 25."""
    classifier: Literal["logistic", "svm"] = "logistic"
    """``LogisticRegression`` (lbfgs) or ``LinearSVC`` from scikit-learn."""
    C: float = 1.0
    """Inverse L2 regularisation strength of the classifier."""
    max_iter: int = 1000
    """Solver iterations per classifier."""
    epsilon: float | None = 0.01
    """Stop once held-out accuracy <= majority rate + ``epsilon``; None runs all ``n_iter``
    iterations (a strongly regularised classifier can predict the majority class everywhere
    while its weights still point along the concept, so its accuracy is no stopping signal)."""
    dev_fraction: float = 0.2
    """Held-out share of the data when no ``x_dev`` is given."""
    affine: bool = True
    """Keep the mean: ``x − P(x − μ)``; False gives the paper's ``x − P x``."""
    seed: int | None = 0
    """Seed of the dev split and the classifiers; None: nondeterministic."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "n_iter", "C", "max_iter")
        check_nonnegative(self, "epsilon", "seed")
        check_fraction(self, "dev_fraction")


@register("inlp")
@dataclass(frozen=True, eq=False, repr=False)
class InlpEraser(AffineEraser):
    """INLP eraser (Ravfogel et al., ACL 2020): ``r(x) = x − U Uᵀ (x − μ)``, ``UᵀU = I``.

    ``U`` spans the rows of all classifiers; ``P = U Uᵀ`` is an orthogonal projection and
    ``Q = I − P`` the paper's nullspace projection. ``meta["history"]`` lists the held-out
    accuracy at each rank: the accuracy-vs-rank curve.
    """

    @classmethod
    def fit(cls, x: Tensor, z: Tensor, config: InlpConfig | None = None, **kw: Any) -> InlpEraser:
        """Shortcut for :func:`inlp`."""
        return inlp(x, z, config, **kw)

    @property
    def accuracies(self) -> list[float]:
        """Held-out accuracy after removing 0, 1, ... classifiers."""
        return [h["dev_accuracy"] for h in self.meta["history"]]


def _classifier(cfg: InlpConfig) -> Any:
    if cfg.classifier == "svm":
        return LinearSVC(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)
    return LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)


def _extend_basis(U: Tensor, W: Tensor) -> Tensor:
    """Append to orthonormal ``U`` ``[d, r]`` an orthonormal basis of ``span(Wᵀ) ⊖ span(U)``.

    Gram-Schmidt twice ("twice is enough") then an SVD; a residual singular value at or below
    ``‖W‖₂ · d · eps`` means the row already lies in ``span(U)`` and adds nothing.
    """
    R = W.T
    for _ in range(2):
        R = R - U @ (U.T @ R)
    A, s, _ = torch.linalg.svd(R, full_matrices=False)
    tol = float(torch.linalg.matrix_norm(W, ord=2)) * W.shape[1] * torch.finfo(W.dtype).eps
    return torch.cat([U, A[:, s > tol]], dim=1)


def inlp(
    x: Float[Tensor, "n d_model"],
    z: Tensor,
    config: InlpConfig | None = None,
    *,
    x_dev: Float[Tensor, "m d_model"] | None = None,
    z_dev: Tensor | None = None,
) -> InlpEraser:
    """Fit an INLP eraser.

    Args:
        x: training activations ``[n, d_model]``.
        z: class indices ``[n]``.
        config: hyperparameters (default :class:`InlpConfig`).
        x_dev, z_dev: held-out data for the accuracy curve and the stopping rule; default a
            ``dev_fraction`` split of ``x``.

    The classifier of iteration ``i`` contributes its ``coef_`` rows (one row when binary; for
    a multinomial logistic model the rows are centred first, since softmax ignores a shared
    row, leaving ``C − 1`` directions).
    """
    cfg = config or InlpConfig()
    xs = check_features(x, "x", min_samples=2)
    d = xs.shape[1]
    y, n_classes = check_labels(z, xs.shape[0], "z")
    if (x_dev is None) != (z_dev is None):
        raise ValueError("give both x_dev and z_dev, or neither")
    if x_dev is None or z_dev is None:  # both or neither (checked above)
        xs, y, xd, yd = train_dev_split(xs, y, cfg.dev_fraction, cfg.seed)
    else:
        xd = check_features(x_dev, "x_dev", d=d)
        yd, _ = check_labels(z_dev, xd.shape[0], "z_dev", n_classes=n_classes, min_classes=1)
    check_labels(y, name="z (training split)")
    mu = xs.double().mean(0).cpu()
    Xtr, Xd = xs.double().cpu() - mu, xd.double().cpu() - mu
    ytr, ydn = y.cpu().numpy(), yd.cpu().numpy()
    maj = majority_rate(yd)
    U = torch.zeros(d, 0, dtype=torch.float64)
    history: list[dict[str, Any]] = []
    for i in range(cfg.n_iter + 1):
        Xp, Xdp = Xtr - (Xtr @ U) @ U.T, Xd - (Xd @ U) @ U.T
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = _classifier(cfg).fit(Xp.numpy(), ytr)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        acc = float(clf.score(Xdp.numpy(), ydn))
        history.append({"iter": i, "rank": U.shape[1], "dev_accuracy": acc, "converged": converged})
        logger.debug("inlp iter %d: rank %d, dev accuracy %.4f (majority %.4f)",
                     i, U.shape[1], acc, maj)  # fmt: skip
        if cfg.epsilon is not None and acc <= maj + cfg.epsilon:
            logger.info("inlp: accuracy %.4f <= majority %.4f + %.3g at rank %d",
                        acc, maj, cfg.epsilon, U.shape[1])  # fmt: skip
            break
        if i == cfg.n_iter:
            break
        W = torch.from_numpy(clf.coef_).double()
        if cfg.classifier == "logistic" and W.shape[0] > 1:
            W = W - W.mean(0)  # softmax is invariant to a row shared by all classes
        r = U.shape[1]
        U = _extend_basis(U, W)
        if U.shape[1] == r:
            logger.warning("inlp: classifier %d adds no new direction; stopping at rank %d", i, r)
            break
        if U.shape[1] == d:
            logger.warning("inlp: erased all %d dimensions", d)
            break
    n_bad = sum(not h["converged"] for h in history)
    if n_bad:
        logger.warning("inlp: %d of %d classifiers hit max_iter=%d before converging",
                       n_bad, len(history), cfg.max_iter)  # fmt: skip
    meta = {
        "method": "inlp",
        "config": asdict(cfg),
        "n_classes": n_classes,
        "majority": maj,
        "history": history,
    }
    dev = xs.device
    bias = mu.to(dev) if cfg.affine else None
    return InlpEraser(U.to(dev).contiguous(), U.T.to(dev).contiguous(), bias, meta)
