"""Pick the layer of a steering vector: held-out separability, optionally a steering effect.

    >>> sweep = sweep_layers(handle, "data/steering/sentiment.jsonl", range(1, 30))
    >>> sweep.best, sweep.auroc[sweep.sites.index(sweep.best)]

**Criterion.** The pairs are split (whole pairs, seeded) into train and held-out parts; one
capture pass reads every layer. A vector is fitted per layer on the train pairs, and each
held-out example is scored by its projection on the layer's unit direction, ``h · v̂``. Per
layer the sweep reports

- ``auroc``: the ROC AUC of the projections of held-out positive vs negative examples (0.5 is
  chance; the direction is oriented toward the positive side, so < 0.5 means it generalises
  backwards);
- ``accuracy``: held-out accuracy of the threshold halfway between the train classes' mean
  projections;
- ``separation``: held-out ``d' = (m⁺ − m⁻) / s`` with ``s`` the pooled standard deviation of
  the projections (scale-free, so layers of different norms compare).

Layers are ranked by AUROC, ties (common: several layers reach 1.0) broken by ``separation``.
Without ``effect`` the best-ranked layer is chosen. With ``effect(vector, site) -> float``
(a caller's measure of steering success, e.g. the concept score of steered generations; larger
is better) the ``effect_top`` best-ranked layers are evaluated and the one with the largest
effect is chosen: separability only says a layer *represents* the concept, not that adding the
direction there *steers* the model (AxBench finds the two can disagree).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from steerlab.datasets.pairs import as_pairs
from steerlab.models import ModelHandle
from steerlab.steering.pairs import _default_rule, _one_kind, read_pairs
from steerlab.steering.vectors import Method, SteeringVector, VectorConfig, VectorFitter

__all__ = ["LayerSweep", "separability", "sweep_layers"]

CRITERION = "max held-out AUROC, ties by held-out d'"
CRITERION_EFFECT = "max effect among the {k} best layers by held-out AUROC (ties by d')"


class Separability(NamedTuple):
    """Per-layer held-out separability of projections (see the module docstring)."""

    auroc: list[float]
    accuracy: list[float]
    separation: list[float]


class LayerSweep(NamedTuple):
    """The result of :func:`sweep_layers`.

    Attributes:
        sites: the candidate sites, in layer order.
        auroc: held-out ROC AUC per site.
        accuracy: held-out accuracy per site (midpoint threshold).
        separation: held-out d' per site.
        effect: the caller's effect per site (None where not evaluated).
        best: the chosen site.
        vector: the vector fitted on the train pairs, at every candidate site.
        n_train: train pairs.
        n_test: held-out pairs.
        criterion: how ``best`` was chosen, in words.
    """

    sites: list[str]
    auroc: list[float]
    accuracy: list[float]
    separation: list[float]
    effect: list[float | None]
    best: str
    vector: SteeringVector
    n_train: int
    n_test: int
    criterion: str

    @property
    def best_layer(self) -> int:
        """The layer number of :attr:`best`."""
        return int(self.best.rsplit(".", 1)[1])

    def ranking(self) -> list[str]:
        """Sites from best to worst by (AUROC, d')."""
        order = sorted(range(len(self.sites)), key=lambda i: (-self.auroc[i], -self.separation[i]))
        return [self.sites[i] for i in order]


def separability(
    vector: SteeringVector,
    pos: Tensor,
    neg: Tensor,
    train_pos: Tensor | None = None,
    train_neg: Tensor | None = None,
) -> Separability:
    """Score held-out examples ``pos, neg [n, layer, d]`` by their projection on each layer.

    Args:
        vector: the vector (one row per layer of the activations).
        pos: held-out positive examples.
        neg: held-out negative examples.
        train_pos: train positives, for the accuracy threshold (default: the held-out ones).
        train_neg: train negatives, likewise.
    """
    from sklearn.metrics import roc_auc_score

    unit = vector.directions.double()
    unit = unit / torch.linalg.vector_norm(unit, dim=-1, keepdim=True)
    proj = lambda x: torch.einsum("nld,ld->nl", x.double(), unit)  # noqa: E731
    p, q = proj(pos), proj(neg)
    tp = proj(train_pos) if train_pos is not None else p
    tq = proj(train_neg) if train_neg is not None else q
    thr = (tp.mean(0) + tq.mean(0)) / 2
    y = [1] * len(p) + [0] * len(q)
    auroc, acc, sep = [], [], []
    for j in range(unit.shape[0]):
        scores = torch.cat([p[:, j], q[:, j]])
        auroc.append(float(roc_auc_score(y, scores.numpy())))
        correct = (p[:, j] > thr[j]).sum() + (q[:, j] <= thr[j]).sum()
        acc.append(float(correct) / len(y))
        pooled = ((p[:, j].var(unbiased=True) + q[:, j].var(unbiased=True)) / 2).sqrt()
        gap = float(p[:, j].mean() - q[:, j].mean())
        sep.append(gap / float(pooled) if pooled > 0 else float("inf") * (1 if gap > 0 else -1))
    return Separability(auroc, acc, sep)


def sweep_layers(
    handle: ModelHandle,
    pairs: Any,
    sites: str | Sequence[str] | Sequence[int],
    *,
    holdout: float = 0.25,
    seed: int = 0,
    method: Method = "mean_diff",
    positions: str | None = None,
    chat: bool = False,
    center: bool = True,
    batch_size: int = 16,
    effect: Callable[[SteeringVector, str], float] | None = None,
    effect_top: int = 3,
) -> LayerSweep:
    """Fit on a train split at every candidate site (one pass) and pick the layer.

    Args:
        handle: the model.
        pairs: contrast pairs (PairSet, JSONL path or list); at least 4.
        sites: candidate sites of one kind, or layer numbers (``resid_post``).
        holdout: fraction of pairs held out.
        seed: the split's seed.
        method: ``"mean_diff"`` or ``"pca_diff"``.
        positions: the read rule (default as in :func:`~steerlab.steering.vectors.fit_vector`).
        chat: apply the chat template.
        center: ``pca_diff``: centre the differences.
        batch_size: pairs per forward pass.
        effect: optional ``effect(vector, site) -> float``, larger is better.
        effect_top: how many of the best-separating sites ``effect`` is evaluated on.
    """
    VectorConfig(method, positions, chat, center, batch_size)  # validates
    data = as_pairs(pairs)
    if len(data) < 4:
        raise ValueError(
            f"a layer sweep needs at least 4 pairs (2 train, 2 held out), got {len(data)}"
        )
    site_list = _one_kind(sites, handle.n_layers)
    names = [s.name for s in site_list]
    rule = positions if positions is not None else _default_rule(data)
    train, test = data.split(holdout, seed)
    acts = read_pairs(handle, data, names, positions=rule, chat=chat, batch_size=batch_size)
    index = {p: i for i, p in enumerate(data.pairs)}
    tr = torch.tensor([index[p] for p in train.pairs])
    te = torch.tensor([index[p] for p in test.pairs])
    fitter = VectorFitter(names, acts.pos.shape[-1], method, center)
    fitter.update(acts.pos[tr], acts.neg[tr], torch.cat([acts.pos_norms[tr], acts.neg_norms[tr]]))
    meta = {"chat": chat, "data": train.name, "split_seed": seed, "holdout": holdout,
            "model_type": str(getattr(handle.model.config, "model_type", ""))}  # fmt: skip
    vector = fitter.vector(rule, handle.model_id, handle.tokenizer_settings(),
                           train.fingerprint(), meta)  # fmt: skip
    sep = separability(vector, acts.pos[te], acts.neg[te], acts.pos[tr], acts.neg[tr])
    order = sorted(range(len(names)), key=lambda i: (-sep.auroc[i], -sep.separation[i]))
    effects: list[float | None] = [None] * len(names)
    if effect is None:
        best, criterion = names[order[0]], CRITERION
    else:
        if effect_top < 1:
            raise ValueError(f"effect_top must be >= 1, got {effect_top}")
        for i in order[:effect_top]:
            effects[i] = float(effect(vector, names[i]))
        best = names[max(order[:effect_top], key=lambda i: effects[i])]  # type: ignore[arg-type, return-value]
        criterion = CRITERION_EFFECT.format(k=min(effect_top, len(names)))
    return LayerSweep(names, sep.auroc, sep.accuracy, sep.separation, effects, best, vector,
                      len(train), len(test), criterion)  # fmt: skip
