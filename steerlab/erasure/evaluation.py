"""How much an eraser leaves and costs: held-out probes, accuracy vs rank, the best layer.

Everything here is measured on held-out data. A *fresh probe* is scikit-learn's
``StandardScaler → LogisticRegression`` (:func:`steerlab.erasure.leace.probe_scores`) trained
on the erased training split and scored on the erased test split; a concept counts as erased
when that accuracy is at the majority rate (a constant predictor's). Beside it:

- the mean squared change ``E‖x − r(x)‖²`` and its ratio to the total variance
  ``E‖x − x̄‖²`` (the share of the activations' variance the edit removes);
- the rank of the edit ``P``;
- accuracy vs rank: LEACE (its rank is fixed, ≤ number of classes), R-LACE fitted at each rank
  (Ravfogel et al., ICML 2022) and INLP (Ravfogel et al., ACL 2020), whose rank-``r`` eraser is
  the first ``r`` directions of one run.

:func:`probe_by_site` and :func:`best_site` pick the layer where a concept is most linearly
decodable, the place to erase it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.checks import check_features, check_labels
from steerlab.erasure.inlp import InlpConfig, InlpEraser, inlp
from steerlab.erasure.leace import (
    AffineEraser,
    LeaceEraser,
    erasure_report,
    majority_rate,
    probe_scores,
)
from steerlab.erasure.rlace import RlaceConfig, RlaceEraser, rlace

logger = logging.getLogger(__name__)

__all__ = [
    "ErasureEval",
    "InlpSweepPoint",
    "Method",
    "RankCurve",
    "RankCurves",
    "SiteProbe",
    "accuracy_vs_rank",
    "best_site",
    "constant_rate",
    "directions_needed",
    "evaluate_eraser",
    "inlp_prefix",
    "inlp_sweep_point",
    "mean_difference_cosine",
    "probe_by_site",
    "rank_curve",
    "rlace_rescaled",
]

Method = Literal["leace", "rlace", "inlp"]


class ErasureEval(NamedTuple):
    """One eraser on held-out data."""

    accuracy: float
    """Held-out accuracy of a fresh probe trained on erased training data."""
    accuracy_before: float
    """The same probe without erasure."""
    majority: float
    """Majority rate of the test labels."""
    constant: float
    """Test accuracy of always predicting the training split's majority class: what a probe
    that learned nothing scores. It is ``1 − majority`` for two classes whose majority flips
    between the splits, so compare ``accuracy`` with both."""
    mse: float
    """Mean over test rows of ``‖x − r(x)‖²`` (summed over d_model)."""
    relative_mse: float
    """``mse / E‖x − x̄‖²``: the share of the test activations' total variance removed."""
    rank: int
    """Numerical rank of the edit ``P``."""


def evaluate_eraser(
    eraser: AffineEraser,
    x_train: Float[Tensor, "n d_model"],
    z_train: Tensor,
    x_test: Float[Tensor, "m d_model"],
    z_test: Tensor,
) -> ErasureEval:
    """Fresh-probe accuracy vs majority, squared change (absolute and relative), edit rank.

    Wraps :func:`steerlab.erasure.leace.erasure_report` and adds ``relative_mse``.
    """
    rep = erasure_report(eraser, x_train, z_train, x_test, z_test)
    xt = check_features(x_test, "x_test").double()
    total = float((xt - xt.mean(0)).square().sum(-1).mean())
    rel = rep.mse / total if total > 0 else float("nan")
    const = constant_rate(z_train, z_test)
    return ErasureEval(
        rep.accuracy, rep.accuracy_before, rep.majority, const, rep.mse, rel, rep.rank
    )


def constant_rate(z_train: Tensor, z_test: Tensor) -> float:
    """Test accuracy of always predicting the most frequent training class (class indices)."""
    ytr = _labels(z_train, "z_train")
    yte = _labels(z_test, "z_test")
    top = int(torch.bincount(ytr).argmax())
    return float((yte == top).double().mean())


def _labels(z: Tensor, name: str) -> Tensor:
    if z.ndim == 2 and z.shape[1] > 1:  # one-hot rows
        z = z.argmax(1)
    return check_labels(z, name=name, min_classes=1)[0]


class RankCurve(NamedTuple):
    """Held-out probe accuracy after erasing ``rank`` directions with one method."""

    method: str
    """``"leace"``, ``"rlace"`` or ``"inlp"``."""
    ranks: list[int]
    """Ranks of the edits, starting with 0 (no erasure)."""
    accuracy: list[float]
    """Held-out fresh-probe accuracy at each rank."""
    mse: list[float]
    """Mean squared change on the test rows at each rank."""
    erasers: list[AffineEraser | None]
    """The eraser at each rank (None at rank 0)."""


class RankCurves(NamedTuple):
    """The accuracy-vs-rank curves of several methods on one split."""

    curves: dict[str, RankCurve]
    """Method -> its curve."""
    majority: float
    """Majority rate of the test labels."""
    accuracy_before: float
    """Held-out probe accuracy without erasure (every curve's rank-0 point)."""
    constant: float
    """Test accuracy of always predicting the training majority class (see ErasureEval)."""

    def to_json(self) -> dict:
        """The numbers (no erasers), JSON-serialisable."""
        return {
            "majority": self.majority,
            "constant": self.constant,
            "accuracy_before": self.accuracy_before,
            "curves": {
                m: {"ranks": c.ranks, "accuracy": c.accuracy, "mse": c.mse}
                for m, c in self.curves.items()
            },
        }


def inlp_prefix(eraser: InlpEraser, rank: int) -> InlpEraser:
    """INLP after its first ``rank`` directions (the basis is stored in iteration order)."""
    if not 0 <= rank <= eraser.rank:
        raise ValueError(f"rank must be in [0, {eraser.rank}], got {rank}")
    U = eraser.proj_left[:, :rank]
    return dataclasses.replace(eraser, proj_left=U.contiguous(), proj_right=U.T.contiguous())


def rlace_rescaled(
    x: Float[Tensor, "n d_model"], z: Tensor, config: RlaceConfig | None = None
) -> RlaceEraser:
    """R-LACE on ``x / s``, with ``s`` the RMS of the centred coordinates of ``x``.

    The game's SGD steps scale with the inputs, so one learning rate cannot serve residual
    streams whose norms differ by 100x across layers and models (SmolLM2's late layers have
    ``‖x‖ ≈ 500``; rlace-icml's defaults were set on BERT states of norm ~10). An orthogonal
    projection commutes with a scalar, so the rank-k projection found on ``x / s`` erases the
    same directions of ``x``; only the mean is scaled back (``μ = s · μ_scaled``).
    ``meta["input_scale"]`` records ``s``.
    """
    xs = check_features(x, "x", min_samples=2).double()
    s = float((xs - xs.mean(0)).square().mean().sqrt())
    if not s > 0:
        raise ValueError("x has zero variance: nothing to erase")
    e = rlace(xs / s, z, config)
    bias = None if e.bias is None else e.bias * s
    return RlaceEraser(e.proj_left, e.proj_right, bias, {**e.meta, "input_scale": s})


def _test_mse(eraser: AffineEraser, x_test: Tensor) -> float:
    xt = x_test.double()
    return float((xt - eraser(xt)).square().sum(-1).mean())


def rank_curve(
    method: str,
    erasers: Sequence[AffineEraser],
    x_train: Float[Tensor, "n d_model"],
    z_train: Tensor,
    x_test: Float[Tensor, "m d_model"],
    z_test: Tensor,
    *,
    accuracy_before: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> RankCurve:
    """Held-out fresh-probe accuracy and squared change of already fitted erasers.

    The curve starts at rank 0 (no erasure: ``accuracy_before``, computed when None) and adds
    one point per eraser, at its :attr:`~AffineEraser.edit_rank`.
    """
    xtr = check_features(x_train, "x_train", min_samples=2)
    xte = check_features(x_test, "x_test", d=xtr.shape[1])
    ytr, k = check_labels(z_train, xtr.shape[0], "z_train")
    yte, _ = check_labels(z_test, xte.shape[0], "z_test", n_classes=k, min_classes=1)
    acc0 = probe_scores(xtr, ytr, xte, yte)[1] if accuracy_before is None else accuracy_before
    maj = majority_rate(yte)
    ranks, accs, mses = [0], [acc0], [0.0]
    for e in erasers:
        ranks.append(e.edit_rank)
        accs.append(probe_scores(e(xtr.double()), ytr, e(xte.double()), yte)[1])
        mses.append(_test_mse(e, xte))
        if progress is not None:
            progress(f"{method} rank {ranks[-1]}: held-out accuracy {accs[-1]:.3f} "
                     f"(majority {maj:.3f})")  # fmt: skip
    return RankCurve(method, ranks, accs, mses, [None, *erasers])


def mean_difference_cosine(
    direction: Float[Tensor, " d_model"], x: Float[Tensor, "n d_model"], z: Tensor
) -> float:
    """``|cos|`` between ``direction`` and the span of the class-mean differences of ``(x, z)``.

    For two classes this is ``|cos(u, μ₁ − μ₀)|``; for more, the norm of ``û``'s projection on
    ``span{μ_c − μ}``. 1 means the direction is the one a rank-1 orthogonal projection must
    remove for linear guardedness (``Cov(x, z) = 0`` iff every class mean equals the mean;
    Belrose et al. 2023), i.e. what INLP's first classifier finds when strongly regularised.
    """
    xs = check_features(x, "x", min_samples=2).double()
    y, k = check_labels(z, xs.shape[0], "z")
    u = direction.detach().double().reshape(-1).to(xs.device)
    if u.shape[0] != xs.shape[1]:
        raise ValueError(f"direction has {u.shape[0]} entries, x has {xs.shape[1]} columns")
    mu = xs.mean(0)
    D = torch.stack([xs[y == c].mean(0) - mu for c in range(k)], 1)  # [d, k], rank <= k - 1
    Ub, s, _ = torch.linalg.svd(D, full_matrices=False)
    Ub = Ub[:, s > float(s.max()) * D.shape[0] * torch.finfo(D.dtype).eps]
    return float(torch.linalg.vector_norm(Ub.T @ u) / torch.linalg.vector_norm(u))


class InlpSweepPoint(NamedTuple):
    """INLP with one regularisation strength ``C`` (a row of a C sweep)."""

    C: float
    """Inverse L2 strength of every INLP classifier."""
    curve: RankCurve
    """Held-out fresh-probe accuracy after erasing the first ``r`` directions."""
    first_direction_cosine: float
    """:func:`mean_difference_cosine` of the first direction (training data)."""


def inlp_sweep_point(
    x_train: Float[Tensor, "n d_model"],
    z_train: Tensor,
    x_test: Float[Tensor, "m d_model"],
    z_test: Tensor,
    config: InlpConfig,
    ranks: Sequence[int],
    *,
    accuracy_before: float | None = None,
) -> InlpSweepPoint:
    """One INLP run (``config``) scored at the prefixes ``ranks`` (those the run reached).

    With ``C → 0`` the logistic classifier's weights tend to ``Σ_i (y_i − ȳ) x_i``, the
    class-mean difference (the L2 penalty dominates the loss, whose gradient at ``w = 0`` is
    that sum), so its first direction is the one a linear guard needs; with large ``C`` on
    nearly separable data it is a max-margin direction instead, and many iterations follow.
    """
    full = inlp(x_train, z_train, config)
    rs = sorted({r for r in ranks if 1 <= r <= full.rank})
    curve = rank_curve("inlp", [inlp_prefix(full, r) for r in rs], x_train, z_train, x_test,
                       z_test, accuracy_before=accuracy_before)  # fmt: skip
    cos = mean_difference_cosine(full.proj_left[:, 0], x_train, z_train) if full.rank else 0.0
    return InlpSweepPoint(config.C, curve, cos)


def accuracy_vs_rank(
    x_train: Float[Tensor, "n d_model"],
    z_train: Tensor,
    x_test: Float[Tensor, "m d_model"],
    z_test: Tensor,
    *,
    methods: Sequence[Method] = ("leace", "rlace", "inlp"),
    rlace_ranks: Sequence[int] = (1, 2, 4),
    rlace_config: RlaceConfig | None = None,
    rlace_rescale: bool = True,
    inlp_config: InlpConfig | None = None,
    leace_kwargs: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> RankCurves:
    """Held-out fresh-probe accuracy after erasure, as a function of the rank of the edit.

    - LEACE: one fit; its rank is ``k`` one-hot columns (1 for a binary concept).
    - R-LACE: one game per rank in ``rlace_ranks`` (``rlace_config`` with ``rank`` replaced);
      each selects its projection on a dev split of the *training* data.
    - INLP: one run of ``inlp_config`` (default: 20 classifiers, stop within 1 point of the
      majority on its dev split); the rank-``r`` point erases its first ``r`` directions.

    Args:
        x_train, z_train: activations ``[n, d_model]`` and class indices used to fit.
        x_test, z_test: held-out activations and class indices used to score.
        methods: which methods to run.
        rlace_ranks: ranks for R-LACE.
        rlace_config: R-LACE hyperparameters (its ``rank`` is overridden).
        rlace_rescale: run R-LACE on unit-RMS inputs (:func:`rlace_rescaled`).
        inlp_config: INLP hyperparameters.
        leace_kwargs: passed to :meth:`LeaceEraser.fit`.
        progress: called with a short message after each fit.
    """
    xtr = check_features(x_train, "x_train", min_samples=2)
    xte = check_features(x_test, "x_test", d=xtr.shape[1])
    ytr, k = check_labels(z_train, xtr.shape[0], "z_train")
    yte, _ = check_labels(z_test, xte.shape[0], "z_test", n_classes=k, min_classes=1)
    unknown = set(methods) - {"leace", "rlace", "inlp"}
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from leace, rlace, inlp")
    if any(r < 1 for r in rlace_ranks):
        raise ValueError(f"rlace_ranks must be >= 1, got {list(rlace_ranks)}")
    _, acc0 = probe_scores(xtr, ytr, xte, yte)
    maj = majority_rate(yte)

    def curve(method: str, erasers: list[AffineEraser]) -> RankCurve:
        return rank_curve(method, erasers, xtr, ytr, xte, yte, accuracy_before=acc0,
                          progress=progress)  # fmt: skip

    curves: dict[str, RankCurve] = {}
    for method in methods:
        if method == "leace":
            curves["leace"] = curve("leace", [LeaceEraser.fit(xtr, ytr, **(leace_kwargs or {}))])
        elif method == "rlace":
            base = rlace_config or RlaceConfig()
            fit = rlace_rescaled if rlace_rescale else rlace
            curves["rlace"] = curve(
                "rlace", [fit(xtr, ytr, dataclasses.replace(base, rank=r)) for r in rlace_ranks]
            )
        else:
            full = inlp(xtr, ytr, inlp_config or InlpConfig(n_iter=20, epsilon=0.01))
            # the rank after each classifier (a multiclass classifier adds C − 1 directions)
            ranks = sorted(({h["rank"] for h in full.meta["history"]} | {full.rank}) - {0})
            curves["inlp"] = curve("inlp", [inlp_prefix(full, r) for r in ranks])
    return RankCurves(curves, maj, acc0, constant_rate(ytr, yte))


def directions_needed(curve: RankCurve, majority: float, tolerance: float = 0.02) -> int | None:
    """The smallest rank whose held-out accuracy is within ``tolerance`` of the majority rate.

    None if no point of the curve gets there.
    """
    for r, a in zip(curve.ranks, curve.accuracy):
        if a <= majority + tolerance:
            return r
    return None


class SiteProbe(NamedTuple):
    """Held-out score of a fresh logistic probe at one site."""

    accuracy: float
    """Held-out accuracy."""
    log_loss: float
    """Held-out log-loss (breaks ties between sites at the same accuracy)."""


def probe_by_site(
    acts: Mapping[str, Float[Tensor, "n d_model"]],
    labels: Tensor,
    train: Tensor,
    test: Tensor,
) -> dict[str, SiteProbe]:
    """A fresh probe per site, trained on rows ``train`` and scored on rows ``test``.

    Args:
        acts: site name -> activations, the same rows at every site (e.g. one capture).
        labels: class indices per row.
        train, test: row indices or boolean masks.
    """
    out: dict[str, SiteProbe] = {}
    y, _ = check_labels(labels, name="labels")
    for site, x in acts.items():
        x2 = check_features(x, site)
        if x2.shape[0] != y.shape[0]:
            raise ValueError(f"{site} has {x2.shape[0]} rows but labels has {y.shape[0]}")
        loss, acc = probe_scores(x2[train], y[train], x2[test], y[test])
        out[site] = SiteProbe(acc, loss)
    return out


def best_site(scores: Mapping[str, SiteProbe]) -> str:
    """The site with the highest held-out accuracy; ties go to the lower log-loss."""
    if not scores:
        raise ValueError("no sites scored")
    return max(scores, key=lambda s: (scores[s].accuracy, -scores[s].log_loss))
