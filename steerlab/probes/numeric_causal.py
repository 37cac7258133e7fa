"""Causal tests of numeric attributes: move an entity along a PLS direction, read the answer.

The comparison-flip test (:func:`flip_experiment`, :func:`set_value_experiment`, after
El-Shangiti et al., NAACL 2025) moves one entity's last-token representation along the first
PLS direction by ``α`` (or sets its PLS coordinates to those of a target value) with
:mod:`steerlab.interventions` edits, and counts the comparison answers that flip, against
random directions of the same norm. The recall-shift test (:func:`value_shift_experiment`)
applies the same edit in "X was born in the year" and reads the year the model states.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from steerlab.datasets.numeric import Comparison, Entities
from steerlab.interventions import AddVector, SetCoords
from steerlab.models import ModelHandle
from steerlab.positions import Positions, spans
from steerlab.probes.numeric import (
    comparison_margins,
    greedy_complete,
    parse_number,
    wilson_interval,
)

logger = logging.getLogger(__name__)


# --- the causal test ----------------------------------------------------------------------------

Entity = Literal["a", "b"]
"""Which entity of a comparison an edit moves: the first (``a``, steerlab's default) or the
second (``b``, whose last token is the one before the question mark: El-Shangiti et al.'s)."""


def entity_span(c: Comparison, entity: Entity) -> tuple[int, int]:
    """The character span of entity ``a`` or ``b`` of a comparison."""
    if entity not in ("a", "b"):
        raise ValueError(f"entity must be 'a' or 'b', got {entity!r}")
    return c.span_a if entity == "a" else c.span_b


class FlipExperiment(NamedTuple):
    """Answer flips when the first entity's representation is moved, per direction and α."""

    rows: list[dict[str, Any]]
    """One row per (direction, α): ``flips``, ``n``, ``flip_rate`` and its Wilson 95%
    interval ``ci_low``/``ci_high``; ``directed`` (flips the way the edit predicts) with
    ``directed_rate``/``directed_low``/``directed_high``; ``eligible`` (prompts whose unsteered
    answer is not the predicted one, the most directed flips there can be); ``mean_shift`` of
    the answer margin towards the predicted answer."""
    baseline: Tensor
    """``[n]`` unsteered answer margins (:func:`comparison_margins`; Yes − No by default)."""
    accuracy: float
    """Share of prompts the unsteered model answers correctly."""


def steered_margins(
    handle: ModelHandle,
    comparisons: Sequence[Comparison],
    make: Callable[[Positions], Any],
    *,
    entity: Entity = "a",
    batch_size: int = 32,
) -> Tensor:
    """Answer margins (:func:`comparison_margins`) with an intervention at the last token of
    entity ``a`` (or ``b``) of each prompt.

    ``make(positions)`` builds the intervention(s) from the :func:`steerlab.positions.spans`
    rule of all the prompts (resolved against each batch by the scoring helper).
    """
    rule = spans([entity_span(c, entity) for c in comparisons], "last")
    return comparison_margins(handle, comparisons, make(rule), batch_size=batch_size)


def _flip_row(direction: str, alpha: float, m0: Tensor, m: Tensor, toward_yes: Tensor) -> dict:
    flips = (m0 > 0) != (m > 0)
    directed = flips & ((m > 0) == toward_yes)
    n, k, kd = flips.numel(), int(flips.sum()), int(directed.sum())
    # a directed flip needs an unsteered answer other than the predicted one
    eligible = int(((m0 > 0) != toward_yes).sum())
    lo, hi = wilson_interval(k, n)
    dlo, dhi = wilson_interval(kd, n)
    sign = torch.where(toward_yes, 1.0, -1.0)
    return {
        "direction": direction, "alpha": alpha, "flips": k, "n": n, "flip_rate": k / n,
        "ci_low": lo, "ci_high": hi, "directed": kd, "directed_rate": kd / n,
        "directed_low": dlo, "directed_high": dhi, "eligible": eligible,
        "mean_shift": float(((m - m0) * sign).mean()),
    }  # fmt: skip


def flip_experiment(
    handle: ModelHandle,
    comparisons: Sequence[Comparison],
    direction: Tensor,
    layer: int,
    alphas: Sequence[float],
    *,
    unit: float = 1.0,
    increases_value: bool = True,
    yes_if_less: bool = True,
    n_random: int = 3,
    seed: int = 0,
    kind: str = "resid_post",
    entity: Entity = "a",
    baseline: Tensor | None = None,
    batch_size: int = 32,
) -> FlipExperiment:
    """Move an entity's last-token representation along ``direction`` by ``α·unit`` and count
    answer flips, against random directions of the same norm (El-Shangiti et al. 2025, §4).

    Args:
        handle: the model.
        comparisons: prompts from :func:`comparison_prompts`.
        direction: ``[d_model]`` e.g. ``PLSProbe.direction`` (normalised here).
        layer: the edit is applied at ``<kind>.<layer>`` (the site the probe was fitted on).
        alphas: strengths, in units of ``unit``.
        unit: length of α = 1 in activation units (e.g. the spread of the entities' PLS
            coordinate), the same for the random directions.
        increases_value: whether ``+direction`` raises the probe's prediction (orients the
            "directed" count).
        yes_if_less: the attribute's answer rule (:attr:`Attribute.yes_if_less`).
        n_random: random Gaussian directions (each over every prompt; pooled counts).
        seed: seed of the random directions.
        kind: site kind.
        entity: edit entity ``a`` (default) or ``b`` (the paper's: the token before the "?").
            Raising ``b``'s value lowers ``a``'s relative to it, so "directed" flips point the
            other way.
        baseline: the unsteered margins of the same prompts if already computed (saves one
            forward pass per call in a sweep over layers).
        batch_size: prompts per forward.
    """
    site = f"{kind}.{layer}"
    entity_span(comparisons[0], entity)  # validates ``entity``
    u = direction.detach().double().cpu()
    u = u / torch.linalg.vector_norm(u)
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    g = torch.Generator().manual_seed(seed)
    randoms = [torch.randn(u.shape[0], generator=g, dtype=torch.float64) for _ in range(n_random)]
    if baseline is not None and baseline.shape != (len(comparisons),):
        raise ValueError(
            f"baseline must have shape ({len(comparisons)},), got {tuple(baseline.shape)}"
        )
    m0 = (comparison_margins(handle, comparisons, batch_size=batch_size) if baseline is None
          else baseline)  # fmt: skip
    truth = torch.tensor([c.yes for c in comparisons])
    rows = []
    for alpha in alphas:
        # raising a's value makes "a < b" less likely: Yes gets less likely iff yes_if_less;
        # raising b's value does the opposite
        up = ((alpha > 0) == increases_value) == (entity == "a")
        toward_yes = torch.full_like(truth, up != yes_if_less)
        for name, vecs in (("pls", [u]), ("random", randoms)):
            if not vecs:  # n_random=0: the PLS rows only
                continue
            ms = []
            for v in vecs:

                def make(pos, v=v):
                    return AddVector(v.float(), alpha * unit, site, pos)

                ms.append(steered_margins(handle, comparisons, make, entity=entity,
                                          batch_size=batch_size))  # fmt: skip
            m = torch.cat(ms)
            rows.append(_flip_row(name, float(alpha), m0.repeat(len(vecs)), m,
                                  toward_yes.repeat(len(vecs))))  # fmt: skip
    acc = float(((m0 > 0) == truth).double().mean())
    return FlipExperiment(rows, m0, acc)


def steered_greedy(
    handle: ModelHandle,
    prompts: Sequence[str],
    char_spans: Sequence[tuple[int, int]],
    make: Callable[[Positions], Any] | None,
    *,
    max_new_tokens: int = 5,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations with an edit at the last token of a character span of each prompt.

    ``make(positions)`` builds the intervention(s) from the :func:`steerlab.positions.spans`
    rule of all the prompts; ``None`` runs unsteered. Decoding is :func:`greedy_complete`
    (cached, left-padded; the span rule resolves against each batch's prompts).
    """
    ivs = None if make is None else make(spans(list(char_spans), "last"))
    return greedy_complete(handle, prompts, ivs, max_new_tokens=max_new_tokens,
                           batch_size=batch_size)  # fmt: skip


def value_shift_experiment(
    handle: ModelHandle,
    entities: Entities,
    direction: Tensor,
    layer: int,
    alphas: Sequence[float],
    *,
    unit: float = 1.0,
    increases_value: bool = True,
    n_random: int = 3,
    seed: int = 0,
    kind: str = "resid_post",
    max_new_tokens: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Move each entity's representation along ``direction`` in its recall prompt and read the
    value the model then states (El-Shangiti et al. 2025: the PLS subspace is causal for the
    attribute's value), against random directions of the same norm.

    The edit ``AddVector(direction, α·unit)`` acts at the entity's last token of the recall
    prompt (``"{e} was born in the year"``); the continuation is decoded greedily
    (:func:`steered_greedy`) and parsed. A *directed change* is a parsed value that moved in the
    direction α should move it (``+`` when ``α > 0`` and ``increases_value``); counts come with
    Wilson 95% intervals. Use the entities the model recalls, so the unsteered value is right.

    Returns:
        ``{"baseline": [...parsed values], "rows": [{direction, alpha, n, directed, changed,
        directed_rate, ci_low, ci_high, mean_shift, median_shift}, ...]}``; shifts are in value
        units, signed so that positive is the intended direction.
    """
    spec = entities.attribute
    prefix = spec.recall[: spec.recall.index("{e}")]
    prompts = [spec.recall.format(e=n) for n in entities.names]
    char_spans = [(len(prefix), len(prefix) + len(n)) for n in entities.names]
    n_new = max_new_tokens or spec.max_new_tokens
    site = f"{kind}.{layer}"
    u = direction.detach().double().cpu()
    u = u / torch.linalg.vector_norm(u)
    g = torch.Generator().manual_seed(seed)
    randoms = [torch.randn(u.shape[0], generator=g, dtype=torch.float64) for _ in range(n_random)]

    def parsed(texts: list[str]) -> Tensor:
        return torch.tensor([parse_number(t) for t in texts], dtype=torch.float64)

    v0 = parsed(steered_greedy(handle, prompts, char_spans, None, max_new_tokens=n_new,
                               batch_size=batch_size))  # fmt: skip
    rows = []
    for alpha in alphas:
        sign = 1.0 if (alpha > 0) == increases_value else -1.0
        for name, vecs in (("pls", [u]), ("random", randoms)):
            shifts = []
            for v in vecs:

                def make(pos, v=v):
                    return AddVector(v.float(), alpha * unit, site, pos)

                v1 = parsed(steered_greedy(handle, prompts, char_spans, make,
                                           max_new_tokens=n_new, batch_size=batch_size))  # fmt: skip
                shifts.append((v1 - v0) * sign)
            d = torch.cat(shifts)
            ok = d.isfinite()
            n, kd, kc = int(ok.sum()), int((d[ok] > 0).sum()), int((d[ok] != 0).sum())
            lo, hi = wilson_interval(kd, n)
            rows.append({
                "direction": name, "alpha": float(alpha), "n": n, "directed": kd,
                "changed": kc, "directed_rate": kd / n if n else float("nan"),
                "ci_low": lo, "ci_high": hi,
                "mean_shift": float(d[ok].mean()) if n else float("nan"),
                "median_shift": float(d[ok].median()) if n else float("nan"),
                "unparsed": int((~ok).sum()),
            })  # fmt: skip
    return {"baseline": v0.tolist(), "rows": rows}


def set_value_experiment(
    handle: ModelHandle,
    comparisons: Sequence[Comparison],
    probe: Any,
    layer: int,
    entities: Entities,
    *,
    offset: float,
    kind: str = "resid_post",
    batch_size: int = 32,
    baseline: Tensor | None = None,
) -> dict[str, Any]:
    """Set entity ``a``'s PLS coordinates to those of value ``value(b) ± offset`` and count how
    often the answer becomes the one that value implies (``SetCoords`` with
    :meth:`PLSProbe.coords_for_value`).

    Half the prompts (even index) get ``value(b) − offset`` (a becomes smaller than b), the
    others ``value(b) + offset``. Returns agreement with the implied answers before and after,
    with Wilson intervals. ``baseline``: the unsteered margins if already computed
    (:attr:`FlipExperiment.baseline` of the same prompts), saving a forward pass.
    """
    sub = probe.subspace()
    t = entities.targets
    lower = torch.tensor([i % 2 == 0 for i in range(len(comparisons))])
    goal = torch.stack([t[c.b] - offset if lo else t[c.b] + offset
                        for c, lo in zip(comparisons, lower.tolist())])  # fmt: skip
    coords = probe.coords_for_value(goal).float()
    implied_yes = lower == entities.attribute.yes_if_less  # a smaller than b
    site = f"{kind}.{layer}"
    if baseline is not None and baseline.shape != (len(comparisons),):
        raise ValueError(
            f"baseline must have shape ({len(comparisons)},), got {tuple(baseline.shape)}"
        )
    m0 = (comparison_margins(handle, comparisons, batch_size=batch_size) if baseline is None
          else baseline)  # fmt: skip
    rule = spans([c.span_a for c in comparisons], "last")
    sub32 = sub.to(dtype=torch.float32)
    # one SetCoords per example (each has its own target), applied per example
    ivs = [[SetCoords(sub32, c, site, rule)] for c in coords]
    m = comparison_margins(handle, comparisons, ivs, per_example=True, batch_size=batch_size)
    n = len(comparisons)
    before = int(((m0 > 0) == implied_yes).sum())
    after = int(((m > 0) == implied_yes).sum())
    return {
        "offset": offset, "n": n, "k": sub.k,
        "agree_before": before, "agree_after": after,
        "before_ci": wilson_interval(before, n), "after_ci": wilson_interval(after, n),
    }  # fmt: skip
