"""Numeric attributes in a model: the factual-recall filter and comparison readouts.

:func:`recall_check` keeps the entities whose value the model completes within a tolerance
(greedy decoding of e.g. "Albert Einstein was born in the year"). A comparison's answer is the
sign of ``logit(" Yes") − logit(" No")`` (:func:`yes_no_margin`), or the margin between any two
answer tokens (:func:`comparison_margins`, as :func:`steerlab.datasets.numeric.year_comparisons`
reads the digit of the later year). The data sets are in :mod:`steerlab.datasets.numeric`; the
causal tests (moving an entity along a PLS direction) in :mod:`steerlab.probes.numeric_causal`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from steerlab.datasets.numeric import Comparison, Entities
from steerlab.interventions.run import generate_tokens, next_token_logits
from steerlab.models import ModelHandle
from steerlab.tokens import single_token_id

logger = logging.getLogger(__name__)


# --- recall check -------------------------------------------------------------------------------

_NUM_RE = re.compile(
    r"(\d[\d,]*(?:\.\d+)?)\s*(thousand|million|billion|BCE\b|BC\b|B\.C\.)?", re.IGNORECASE
)
_SCALE = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "bce": -1, "bc": -1, "b.c.": -1}


def parse_number(text: str) -> float:
    """The first number in ``text`` (commas allowed; "2.5 million" → 2.5e6; "120 BCE" → -120),
    or ``nan``."""
    m = _NUM_RE.search(text)
    if m is None:
        return float("nan")
    digits = m.group(1).rstrip(",").replace(",", "")
    try:
        v = float(digits)
    except ValueError:
        return float("nan")
    if m.group(2):
        v *= _SCALE[m.group(2).lower()]
    return v


class RecallResult(NamedTuple):
    """The model's completions of the recall prompts and which ones are right."""

    completions: list[str]
    """Greedy continuations."""
    parsed: Tensor
    """``[n]`` the first number of each continuation (``nan`` if none)."""
    correct: Tensor
    """``[n]`` bool: parsed within the attribute's tolerance (in target units)."""


def greedy_complete(
    handle: ModelHandle,
    prompts: Sequence[str],
    interventions: Any = None,
    *,
    per_example: bool = False,
    max_new_tokens: int = 8,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations of ``prompts`` (:func:`steerlab.interventions.run.generate_tokens`:
    left-padded batches, the handle's BOS rule, cut at end-of-sequence), steered by
    ``interventions`` if given (character-span rules resolve per batch)."""
    out = generate_tokens(handle, prompts, interventions, per_example=per_example,
                          max_new_tokens=max_new_tokens, batch_size=batch_size)  # fmt: skip
    return [handle.tokenizer.decode(t, skip_special_tokens=True) for t in out.new_ids]


def recall_check(
    handle: ModelHandle,
    entities: Entities,
    *,
    tolerance: float | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
) -> RecallResult:
    """Does the model know each entity's value? Greedy-complete the recall prompt and compare.

    Args:
        handle: the model.
        entities: from :func:`load_entities`.
        tolerance: override the attribute's tolerance (target units: years, log10 heads, ...).
        max_new_tokens: continuation length (default the attribute's).
        batch_size: prompts per generate call.
    """
    spec = entities.attribute
    prompts = [spec.recall.format(e=n) for n in entities.names]
    comps = greedy_complete(handle, prompts, max_new_tokens=max_new_tokens or spec.max_new_tokens,
                            batch_size=batch_size)  # fmt: skip
    return score_completions(entities, comps, tolerance=tolerance)


def score_completions(
    entities: Entities, completions: Sequence[str], *, tolerance: float | None = None
) -> RecallResult:
    """Parse recall completions and compare with the true values (see :func:`recall_check`)."""
    spec = entities.attribute
    comps = list(completions)
    if len(comps) != len(entities.names):
        raise ValueError(f"{len(comps)} completions for {len(entities.names)} entities")
    parsed = torch.tensor([parse_number(c) for c in comps], dtype=torch.float64)
    if spec.log_target:  # "about 67 million" parses to 6.7e7; a bare "67" means millions
        parsed = torch.where((parsed > 0) & (parsed < 1e4), parsed * spec.multiplier, parsed)
    tol = spec.tolerance if tolerance is None else tolerance
    with torch.no_grad():
        ok = (spec.target(parsed.clamp_min(1e-300)) - entities.targets).abs() <= tol + 1e-9
    ok = ok & parsed.isfinite()
    return RecallResult(comps, parsed, ok)


def answer_margins(
    handle: ModelHandle,
    prompts: Sequence[str],
    pos_ids: Sequence[int] | Tensor,
    neg_ids: Sequence[int] | Tensor,
    interventions: Any = None,
    *,
    per_example: bool = False,
    batch_size: int = 32,
) -> Tensor:
    """``logit(pos_i) − logit(neg_i)`` at the last token of prompt ``i``: ``[n]`` float32.

    Steered by ``interventions`` if given (:func:`steerlab.interventions.run.next_token_logits`:
    right-padded batches, rules such as :func:`steerlab.positions.spans` resolved per batch).
    """
    pos = torch.as_tensor(pos_ids, dtype=torch.long).reshape(-1)
    neg = torch.as_tensor(neg_ids, dtype=torch.long).reshape(-1)
    if not len(pos) == len(neg) == len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(pos)} / {len(neg)} answer ids")
    lg = next_token_logits(handle, list(prompts), interventions, candidates=torch.stack([pos, neg], 1),
                           per_example=per_example, batch_size=batch_size)  # fmt: skip
    return lg[:, 0] - lg[:, 1]


def yes_no_margin(
    handle: ModelHandle,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    yes: str = " Yes",
    no: str = " No",
) -> Tensor:
    """``logit(yes) − logit(no)`` at the last prompt token: ``[n]`` (> 0 means the model says Yes).

    :func:`answer_margins` with the same two answer tokens for every prompt.
    """
    y, n = single_token_id(handle, yes), single_token_id(handle, no)
    k = len(prompts)
    return answer_margins(handle, prompts, [y] * k, [n] * k, batch_size=batch_size)


def comparison_margins(
    handle: ModelHandle,
    comparisons: Sequence[Comparison],
    interventions: Any = None,
    *,
    per_example: bool = False,
    batch_size: int = 32,
) -> Tensor:
    """The answer margin of each comparison: ``logit(positive) − logit(negative)`` with its
    :attr:`Comparison.answer_ids` (``" Yes"``/``" No"`` where unset), steered by
    ``interventions`` if given (as in :func:`answer_margins`)."""
    yn: tuple[int, int] = (-1, -1)  # only read where a comparison has no answer ids
    if any(c.answer_ids is None for c in comparisons):
        yn = (single_token_id(handle, " Yes"), single_token_id(handle, " No"))
    ids = [yn if c.answer_ids is None else c.answer_ids for c in comparisons]
    return answer_margins(handle, [c.text for c in comparisons], [i[0] for i in ids],
                          [i[1] for i in ids], interventions, per_example=per_example,
                          batch_size=batch_size)  # fmt: skip


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k/n`` (95% for ``z = 1.96``)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def recall_records(entities: Entities, result: RecallResult) -> list[dict[str, Any]]:
    """JSON-ready rows ``name, value, completion, parsed, correct`` of a recall check."""
    return [
        {"name": n, "value": float(v), "completion": c,
         "parsed": None if math.isnan(p) else p, "correct": bool(ok)}
        for n, v, c, p, ok in zip(entities.names, entities.values.tolist(), result.completions,
                                  result.parsed.tolist(), result.correct.tolist())
    ]  # fmt: skip


def rows_by(items: Sequence[Any], key: Callable[[Any], Any]) -> Tensor:
    """Integer group ids ``[n]`` of ``items`` by ``key`` (first-seen order)."""
    ids: dict[Any, int] = {}
    return torch.tensor([ids.setdefault(key(x), len(ids)) for x in items], dtype=torch.long)
