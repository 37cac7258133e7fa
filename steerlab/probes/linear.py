"""Linear probes with cross-validation, and control tasks for selectivity.

Two probes, both behind a standardising step (``x_s = (x − μ)/σ``, population ``σ``) and both
fitted in float64 on the device of the data:

- **ridge** (regression): ``min_w ‖y − ȳ − X_s w‖² + α ‖w‖²``, solved in closed form
  ``w = (X_sᵀX_s + αI)⁻¹ X_sᵀ(y − ȳ)`` through one eigendecomposition per fold, so every ``α``
  of the grid costs a matrix product (same optimum as sklearn's ``Ridge(alpha)`` on ``X_s``);
- **logistic** (classification): ``min_W C Σ_i CE(y_i, W x_s,i + b) + ½‖W‖²`` (intercept not
  penalised), the objective of sklearn's ``LogisticRegression(C)``: a sigmoid with one weight
  row for two classes, a softmax with one row per class otherwise. Solved by L-BFGS with a
  strong-Wolfe line search, warm-started along the ``C`` grid.

The regularisation strength is chosen by K-fold cross-validation on the non-test rows, and
the probe is refitted on all of them. Raw-space weights are ``w / σ`` (the gradient of the
probe's logit or prediction with respect to the raw activation; the same convention as
:mod:`steerlab.probes.pls`), and :meth:`LinearProbe.subspace` spans them.

**Control tasks** (Hewitt & Liang, "Designing and Interpreting Probes with Control Tasks",
EMNLP 2019; john-hewitt/control-tasks): every word *type* gets a random label drawn from the
empirical label distribution, fixed for all its occurrences; a probe that reaches high
accuracy on that task is memorising types, not reading the representation. Selectivity is
``task accuracy − control accuracy`` on the same held-out rows.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.artifacts import FrozenArtifact, check_json, register
from steerlab.checks import (
    check_features,
    check_int,
    check_labels,
    check_real,
    check_targets,
    check_width,
)
from steerlab.config import check_fraction, check_nonnegative, check_positive, check_types, require
from steerlab.probes.pls import split_ids
from steerlab.subspace import Subspace

logger = logging.getLogger(__name__)

__all__ = [
    "LinearProbe",
    "ProbeConfig",
    "ProbeResult",
    "Selectivity",
    "control_labels",
    "fit_logistic",
    "fit_probe",
    "fit_ridge",
    "selectivity",
]

Kind = Literal["logistic", "ridge"]


@dataclass
class ProbeConfig:
    """How a linear probe is fitted, cross-validated and scored."""

    kind: Kind = "logistic"
    """``"logistic"`` (class labels, accuracy) or ``"ridge"`` (real targets, R²)."""
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    """Inverse regularisation strengths tried for the logistic probe."""
    alpha_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)
    """Ridge penalties tried for the ridge probe (in standardised units)."""
    n_folds: int = 5
    """Cross-validation folds over the non-test rows; 0 or 1 uses the first grid value."""
    test_fraction: float = 0.2
    """Fraction of rows (or groups) held out for the reported score."""
    seed: int = 0
    """Seed of the row → split hash (:func:`steerlab.probes.pls.split_ids`)."""
    max_iter: int = 200
    """L-BFGS iterations for the logistic probe."""
    tol: float = 1e-6
    """L-BFGS gradient tolerance (max-norm of the mean loss's gradient): ample for accuracy;
    tighten it (and raise ``max_iter``) to reach sklearn's optimum to more digits."""

    def __post_init__(self) -> None:
        check_types(self)
        grid = "C_grid" if self.kind == "logistic" else "alpha_grid"
        require(self, grid, len(getattr(self, grid)) > 0 and all(g > 0 for g in getattr(self, grid)),
                "a non-empty list of numbers > 0")  # fmt: skip
        check_fraction(self, "test_fraction")
        check_nonnegative(self, "n_folds", "seed")
        check_positive(self, "max_iter", "tol")


@register("linear_probe")
@dataclass(frozen=True, eq=False, repr=False)
class LinearProbe(FrozenArtifact):
    """A linear probe in raw activation space: ``out(x) = x Wᵀ + b``.

    ``W = W_s / σ`` and ``b = b_s − W μ`` fold the standardiser into the weights, so ``W``'s
    rows are the raw-space gradients of the outputs. For ``kind="logistic"`` the outputs are
    logits (one for two classes: ``P(class 1) = sigmoid(out)``), for ``"ridge"`` predictions.
    ``save(dir)`` / ``LinearProbe.load(dir)`` come from
    :class:`~steerlab.artifacts.FrozenArtifact`.
    """

    weight: Float[Tensor, "c d_model"]
    """Raw-space weights, one row per output."""
    bias: Float[Tensor, " c"]
    """Raw-space intercepts."""
    mean: Float[Tensor, " d_model"]
    """Training mean ``μ`` (the origin of :meth:`subspace`)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """``kind``, ``n_classes``, the chosen strength, CV scores, ..."""

    def __post_init__(self) -> None:
        W, b, mu = self.weight, self.bias, self.mean
        if W.ndim != 2 or b.shape != (W.shape[0],) or mu.shape != (W.shape[1],):
            raise ValueError(f"shapes disagree: weight {tuple(W.shape)}, bias "
                             f"{tuple(b.shape)}, mean {tuple(mu.shape)}")  # fmt: skip
        if self.meta.get("kind") not in ("logistic", "ridge"):
            raise ValueError("meta['kind'] must be 'logistic' or 'ridge'")
        check_json(self.meta)

    @property
    def kind(self) -> str:
        """``"logistic"`` or ``"ridge"``."""
        return self.meta["kind"]

    @property
    def d_model(self) -> int:
        """Width of the activations."""
        return self.weight.shape[1]

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... c"]:
        """Logits (logistic) or predictions (ridge), ``x Wᵀ + b``."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor")
        check_width(x, self.d_model, "x", what="the probe was fitted with")
        ct = torch.promote_types(x.dtype, self.weight.dtype)
        return x.to(self.weight.device, ct) @ self.weight.to(ct).T + self.bias.to(ct)

    def predict(self, x: Float[Tensor, "... d_model"]) -> Tensor:
        """Class indices (logistic) or predicted values ``[...]`` / ``[..., c]`` (ridge)."""
        out = self(x)
        if self.kind == "ridge":
            return out[..., 0] if out.shape[-1] == 1 else out
        return (out[..., 0] > 0).long() if out.shape[-1] == 1 else out.argmax(-1)

    def score(self, x: Float[Tensor, "n d_model"], y: Tensor) -> float:
        """Accuracy (logistic) or R² ``1 − SSE/SST`` averaged over targets (ridge)."""
        return _score(self, check_features(x), y)

    def subspace(self) -> Subspace:
        """Span of the raw-space weight rows (order kept), origin the training mean."""
        meta = {"method": f"linear_{self.kind}",
                **{k: self.meta[k] for k in ("site", "model_id") if k in self.meta}}  # fmt: skip
        return Subspace.from_vectors(self.weight.double(), self.mean.double(), meta=meta).to(
            dtype=self.weight.dtype
        )

    @property
    def direction(self) -> Float[Tensor, " d_model"]:
        """The unit raw-space weight of the first output (the probe direction)."""
        w = self.weight[0]
        return w / torch.linalg.vector_norm(w)

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LinearProbe:
        """A copy on ``device`` and/or in ``dtype``."""
        return LinearProbe(self.weight.to(device, dtype), self.bias.to(device, dtype),
                           self.mean.to(device, dtype), dict(self.meta))  # fmt: skip

    def __repr__(self) -> str:
        return f"LinearProbe({self.kind}, d_model={self.d_model}, n_out={self.weight.shape[0]})"


# --- solvers (standardised space) ----------------------------------------------------------------


def _standardise(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mu = x.mean(0)
    sd = x.std(0, correction=0)
    sd = torch.where(sd < 10 * torch.finfo(sd.dtype).eps, torch.ones_like(sd), sd)
    return (x - mu) / sd, mu, sd


def _raw(W: Tensor, b: Tensor, mu: Tensor, sd: Tensor, meta: dict[str, Any]) -> LinearProbe:
    Wr = W / sd
    return LinearProbe(Wr, b - Wr @ mu, mu, meta)


def fit_ridge(
    x: Float[Tensor, "n d"], y: Tensor, alpha: float = 1.0, *, standardize: bool = True
) -> LinearProbe:
    """Ridge regression in closed form (float64): ``w = (XᵀX + αI)⁻¹ Xᵀ(y − ȳ)`` on the
    standardised (or only centred) ``x``; the intercept is not penalised."""
    check_real(alpha, "alpha", low=0, low_open=True)
    x2 = check_features(x, min_samples=2).double()
    Y = check_targets(torch.as_tensor(y), x2.shape[0], "y").to(x2)
    return _ridge_path(x2, Y, [alpha], standardize)[0]


def _ridge_path(x: Tensor, Y: Tensor, alphas: list[float], standardize: bool) -> list[LinearProbe]:
    if standardize:
        xs, mu, sd = _standardise(x)
    else:
        mu = x.mean(0)
        xs, sd = x - mu, torch.ones_like(mu)
    ym = Y.mean(0)
    G = xs.T @ xs
    lam, V = torch.linalg.eigh((G + G.T) / 2)
    Vb = V.T @ (xs.T @ (Y - ym))  # [d, k]
    out = []
    for a in alphas:
        W = (V @ (Vb / (lam.clamp_min(0) + a)[:, None])).T  # [k, d]
        out.append(_raw(W, ym, mu, sd, {"kind": "ridge", "alpha": a, "n_classes": 0}))
    return out


def _logistic_solve(
    xs: Tensor, labels: Tensor, n_classes: int, C: float, max_iter: int, tol: float,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    n, d = xs.shape
    c = 1 if n_classes == 2 else n_classes
    W = torch.zeros(c, d, dtype=xs.dtype, device=xs.device)
    b = torch.zeros(c, dtype=xs.dtype, device=xs.device)
    if init is not None:
        W, b = init[0].clone(), init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    # the mean loss + ||W||²/(2Cn) has sklearn's minimiser (C·Σ loss + ½||W||²) at O(1) scale
    lam = 1.0 / (2 * C * n)
    yf = labels.to(xs.dtype)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=1e-15, history_size=20,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        z = xs @ W.T + b
        if c == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], yf)
        else:
            loss = torch.nn.functional.cross_entropy(z, labels)
        loss = loss + lam * W.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


def fit_logistic(
    x: Float[Tensor, "n d"],
    labels: Tensor,
    C: float = 1.0,
    *,
    standardize: bool = True,
    max_iter: int = 200,
    tol: float = 1e-6,
) -> LinearProbe:
    """L2-regularised logistic regression with sklearn's objective (float64, L-BFGS).

    Two classes: one sigmoid weight row; more: multinomial softmax. ``labels`` are class
    indices ``[n]`` with at least two distinct classes.
    """
    check_real(C, "C", low=0, low_open=True)
    check_int(max_iter, "max_iter")
    check_real(tol, "tol", low=0, low_open=True)
    x2 = check_features(x, min_samples=2).double()
    y, k = check_labels(labels, x2.shape[0], "labels")
    y = y.to(x2.device)
    xs, mu, sd = _standardise(x2) if standardize else (x2, torch.zeros_like(x2[0]),
                                                        torch.ones_like(x2[0]))  # fmt: skip
    W, b = _logistic_solve(xs, y, k, C, max_iter, tol)
    return _raw(W, b, mu, sd, {"kind": "logistic", "C": C, "n_classes": k})


def _score(probe: LinearProbe, x: Tensor, y: Tensor) -> float:
    if probe.kind == "logistic":
        lab, _ = check_labels(torch.as_tensor(y), x.shape[0], "y", min_classes=1)
        return float((probe.predict(x).cpu() == lab.cpu()).double().mean())
    Y = check_targets(torch.as_tensor(y), x.shape[0], "y", whole_dataset=False).to(x.device)
    P = probe(x).to(Y.dtype)
    sst = (Y - Y.mean(0)).square().sum(0)
    r2 = 1 - (Y - P).square().sum(0) / sst
    return float(r2.mean())


# --- cross-validation ------------------------------------------------------------------------------


class ProbeResult(NamedTuple):
    """A probe chosen by cross-validation, refitted on the non-test rows, scored held out."""

    probe: LinearProbe
    """Refitted on every non-test row with the chosen strength."""
    strength: float
    """Chosen ``C`` (logistic) or ``alpha`` (ridge)."""
    cv_scores: list[float]
    """Mean CV score per grid value (accuracy or R²)."""
    train_score: float
    """Score on the rows it was fitted on."""
    test_score: float
    """Held-out accuracy (logistic) or R² (ridge)."""
    n_train: int
    """Rows fitted on."""
    n_test: int
    """Held-out rows."""


def _fit_path(x: Tensor, y: Tensor, cfg: ProbeConfig, k: int) -> list[LinearProbe]:
    """One probe per grid value on ``(x, y)``."""
    if cfg.kind == "ridge":
        return _ridge_path(x, y, list(cfg.alpha_grid), True)
    xs, mu, sd = _standardise(x)
    out, init = [], None
    for C in sorted(cfg.C_grid):  # strong → weak regularisation: warm starts help
        init = _logistic_solve(xs, y, k, C, cfg.max_iter, cfg.tol, init)
        out.append(_raw(*init, mu, sd, {"kind": "logistic", "C": C, "n_classes": k}))
    order = sorted(range(len(cfg.C_grid)), key=lambda i: cfg.C_grid[i])
    back = [None] * len(out)
    for pos, i in enumerate(order):
        back[i] = out[pos]
    return back  # type: ignore[return-value]


def fit_probe(
    x: Float[Tensor, "n d_model"],
    y: Tensor,
    config: ProbeConfig | None = None,
    *,
    groups: Tensor | None = None,
    meta: dict[str, Any] | None = None,
) -> ProbeResult:
    """Choose the strength by K-fold CV on the non-test rows, refit, and score held out.

    Args:
        x: ``[n, d_model]`` activations.
        y: class indices ``[n]`` (logistic) or targets ``[n]`` / ``[n, k]`` (ridge).
        config: :class:`ProbeConfig`.
        groups: optional ``[n]`` group ids (rows of one group share a split).
        meta: extra JSON info stored on the probe (site, task, ...).
    """
    cfg = config or ProbeConfig()
    x2 = check_features(x, min_samples=4).double()
    n = x2.shape[0]
    if cfg.kind == "logistic":
        yy, k = check_labels(torch.as_tensor(y), n, "y")
        yy = yy.to(x2.device)
    else:
        yy, k = check_targets(torch.as_tensor(y), n, "y").to(x2), 0
    keys = torch.arange(n) if groups is None else torch.as_tensor(groups).reshape(-1)
    if keys.shape[0] != n:
        raise ValueError(f"groups has {keys.shape[0]} entries for {n} rows")
    F = max(cfg.n_folds, 2)
    split = split_ids(keys, n_folds=F, test_fraction=cfg.test_fraction, seed=cfg.seed)
    split = split.to(x2.device)
    tr, te = split != F, split == F
    if int(te.sum()) == 0 or int(tr.sum()) < 2:
        raise ValueError(f"{n} rows leave an empty train or test split; give more samples")
    if cfg.kind == "logistic" and torch.unique(yy[tr]).numel() < 2:
        raise ValueError("the training split holds a single class: nothing to fit")
    grid = list(cfg.C_grid if cfg.kind == "logistic" else cfg.alpha_grid)
    cv = [float("nan")] * len(grid)
    if cfg.n_folds >= 2 and len(grid) > 1:
        sums = torch.zeros(len(grid), dtype=torch.float64)
        used = 0
        for f in range(F):
            fit, val = tr & (split != f), split == f
            if int(val.sum()) == 0 or (cfg.kind == "logistic" and
                                       torch.unique(yy[fit]).numel() < 2):  # fmt: skip
                continue
            for i, p in enumerate(_fit_path(x2[fit], yy[fit], cfg, k)):
                sums[i] += _score(p, x2[val], yy[val])
            used += 1
        if used == 0:
            raise ValueError("no usable cross-validation fold; give more samples")
        cv = (sums / used).tolist()
        best = int(torch.tensor(cv).argmax())
    else:
        best = 0
    strength = grid[best]
    one = dataclasses.replace(cfg, C_grid=(strength,), alpha_grid=(strength,))
    probe = _fit_path(x2[tr], yy[tr], one, k)[0]
    train_score = _score(probe, x2[tr], yy[tr])
    test_score = _score(probe, x2[te], yy[te])
    info = {**probe.meta, "cv_scores": cv, "grid": grid, "train_score": train_score,
            "test_score": test_score, **(meta or {})}  # fmt: skip
    probe = dataclasses.replace(probe, meta=info)
    return ProbeResult(probe, strength, cv, train_score, test_score, int(tr.sum()), int(te.sum()))


# --- control tasks ---------------------------------------------------------------------------------


def control_labels(types: Tensor, labels: Tensor, seed: int = 0) -> Tensor:
    """Hewitt & Liang's control task: one random label per type, drawn from the empirical
    label distribution of ``labels`` and shared by every occurrence of the type.

    Args:
        types: ``[n]`` integer type ids (e.g. token ids, or ids of word strings).
        labels: ``[n]`` task labels (class indices).
        seed: seed of the draw.

    Returns:
        ``[n]`` control labels.
    """
    lab, k = check_labels(labels, None, "labels")
    t = torch.as_tensor(types).reshape(-1).long().cpu()
    if t.shape[0] != lab.shape[0]:
        raise ValueError(f"types has {t.shape[0]} entries for {lab.shape[0]} labels")
    uniq, inv = torch.unique(t, return_inverse=True)
    probs = torch.bincount(lab.cpu(), minlength=k).double()
    g = torch.Generator().manual_seed(seed)
    per_type = torch.multinomial(probs / probs.sum(), len(uniq), replacement=True, generator=g)
    return per_type[inv].to(lab.device)


class Selectivity(NamedTuple):
    """A probe on the task, the same probe on its control task, and their difference."""

    task: ProbeResult
    """Probe on the real labels."""
    control: ProbeResult
    """Probe on the control labels (same rows, same split)."""
    selectivity: float
    """``task.test_score − control.test_score`` (held-out accuracies)."""
    majority: float
    """Held-out accuracy of always predicting the most frequent training label."""


def selectivity(
    x: Float[Tensor, "n d_model"],
    labels: Tensor,
    types: Tensor,
    config: ProbeConfig | None = None,
    *,
    groups: Tensor | None = None,
    seed: int = 0,
) -> Selectivity:
    """Fit the logistic probe on ``labels`` and on their control task; report selectivity.

    Args:
        x: ``[n, d_model]`` token activations.
        labels: ``[n]`` task labels.
        types: ``[n]`` word-type ids (each type gets one random control label).
        config: :class:`ProbeConfig` (``kind`` must be ``"logistic"``).
        groups: optional split groups (e.g. sentence ids, as Hewitt & Liang split sentences).
        seed: seed of the control labels.
    """
    cfg = config or ProbeConfig()
    if cfg.kind != "logistic":
        raise ValueError("selectivity compares accuracies: use a logistic ProbeConfig")
    lab, _ = check_labels(torch.as_tensor(labels), x.shape[0], "labels")
    ctrl = control_labels(types, lab, seed)
    task = fit_probe(x, lab, cfg, groups=groups, meta={"task": "task"})
    control = fit_probe(x, ctrl, cfg, groups=groups, meta={"task": "control"})
    n = lab.shape[0]
    keys = torch.arange(n) if groups is None else torch.as_tensor(groups).reshape(-1)
    F = max(cfg.n_folds, 2)
    split = split_ids(keys, n_folds=F, test_fraction=cfg.test_fraction, seed=cfg.seed)
    tr, te = split != F, split == F
    top = int(torch.bincount(lab.cpu()[tr]).argmax())
    majority = float((lab.cpu()[te] == top).double().mean())
    return Selectivity(task, control, task.test_score - control.test_score, majority)
