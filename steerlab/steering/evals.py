"""Strength sweeps scored as in AxBench: concept, fluency and relevance, and their harmonic mean.

    >>> sweep = strength_sweep(handle, prompts, lambda a: vec.intervention(12, a), Sentiment(),
    ...                        SweepConfig(alphas=(-8, -4, 4, 8)))
    >>> sweep.table()                      # one row per α and per prompting baseline
    >>> sweep.best(+1)                     # best α for the positive pole vs the prompt baseline

For every strength α (and α = 0, the unsteered reference) the prompts are generated with the
intervention, and each response ``b`` gets three judges' scores (AxBench, Wu et al. 2025, asks
an LM judge for concept, instruction relevance and fluency, 0–2 each, and takes their harmonic
mean; here each judge is a metric from :mod:`steerlab.steering.scores`, normalised to
``[0, 1]``):

- **concept** ``c_b``: the concept's raw score (:class:`Sentiment`: VADER compound;
  :class:`KeywordConcept`: 1 if a keyword occurs; :class:`ProjectionConcept`: mean projection of
  the response's tokens on a concept direction, read from the *unsteered* model), and its
  normalisation towards a *pole* (+1 or −1: the concept or its opposite). See each class.
- **relevance** ``r_b = clip(s_b / max(s0_b, floor), 0, 1)`` (:func:`~steerlab.steering.scores.
  relevance_ratio`): ``s_b`` is the cosine of the MiniLM embeddings of the response and of the
  *prompt* (MiniLM is trained on question–answer pairs among others), ``s0_b`` the same for the
  unsteered response. AxBench's judge asks whether the response "is related to the
  instruction"; the unsteered response is the reference answer of a model that follows it.
- **fluency** ``f_b = min(1, PPL₀ / ppl_b) · (1 − rep_b)`` (:func:`~steerlab.steering.scores.
  fluency_score`): ``ppl_b`` is the perplexity of the response under the unsteered model after a
  *generic* prefix (``SweepConfig.fluency_prefix``, the same for every prompt), ``PPL₀`` the
  corpus perplexity of the unsteered responses after that prefix (so unsteered text scores
  about 1), ``rep_b`` the seq-rep-n repetition rate. AxBench's fluency judge disregards
  "relevance, coherence with any broader context"; scored after its own prompt, a negative
  answer to a neutral question would count as disfluent. An empty response has ``f_b = 0``.
- **combined** ``= H(c_b, f_b, r_b)``, the harmonic mean, zero if any part is zero, then
  averaged over prompts — computed for each pole.

Concept projections (:class:`ProjectionConcept`) are read in the same forward as the fluency
NLL, after the generic prefix: like VADER, the concept score then depends on the response only.

The **prompting baseline** generates the prompts unsteered with a system message asking for
the pole (``concept.system_prompt(pole)``), and is scored like the steered responses.
:meth:`Sweep.best` picks α on one half of the prompts and reports it, and the baseline, on the
other half (AxBench selects the factor on held-out data).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.config import check_positive, check_types, require
from steerlab.models import ModelHandle, load_model
from steerlab.steering.concepts import (
    POLES,
    KeywordConcept,
    LexicalFormality,
    ProjectionConcept,
    Sentiment,
)
from steerlab.steering.generate import Generation, generate
from steerlab.steering.scores import (
    continuation_scores,
    cosine,
    embed,
    fluency_score,
    harmonic_mean,
    relevance_ratio,
    repetition_rate,
)
from steerlab.tokens import encode_texts

logger = logging.getLogger(__name__)

__all__ = [
    "Best",
    "Condition",
    "KeywordConcept",
    "LexicalFormality",
    "MonotoneRange",
    "ProjectionConcept",
    "Responses",
    "Sentiment",
    "Summary",
    "Sweep",
    "SweepConfig",
    "prefix_ids",
    "score_responses",
    "strength_sweep",
]


# --- results ----------------------------------------------------------------------------------


class Summary(NamedTuple):
    """One condition averaged over (a subset of) the prompts."""

    concept: float
    """Mean raw concept score (e.g. VADER compound)."""
    perplexity: float
    """Corpus perplexity ``exp(Σ NLL / Σ tokens)`` under the unsteered model."""
    repetition: float
    """Mean seq-rep-n."""
    fluency: float
    """Mean normalised fluency ``f_b``."""
    relevance: float
    """Mean ``r_b``."""
    similarity: float
    """Mean raw ``s_b``: cosine of the response's and the prompt's embeddings."""
    combined_pos: float
    """Mean harmonic mean towards pole +1."""
    combined_neg: float
    """Mean harmonic mean towards pole −1."""

    def combined(self, pole: int) -> float:
        return self.combined_pos if pole > 0 else self.combined_neg


@dataclass
class Condition:
    """Per-prompt scores of one condition: a strength α, or a prompting baseline."""

    label: str
    alpha: float | None
    pole: int | None
    """The pole a baseline asked for; None for steered points."""
    texts: list[str]
    concept_raw: Tensor
    nll_sum: Tensor
    n_tokens: Tensor
    repetition: Tensor
    fluency: Tensor
    relevance: Tensor
    similarity: Tensor
    concept_norm: dict[int, Tensor]
    combined: dict[int, Tensor]

    def summary(self, rows: Sequence[int] | None = None) -> Summary:
        """Average over ``rows`` (default all prompts)."""
        idx = torch.arange(len(self.texts)) if rows is None else torch.as_tensor(list(rows))
        n_tok = self.n_tokens[idx].sum()
        ppl = math.exp(self.nll_sum[idx].sum() / n_tok) if n_tok > 0 else float("nan")
        raw = self.concept_raw[idx]
        return Summary(
            concept=float(raw[~raw.isnan()].mean()) if (~raw.isnan()).any() else float("nan"),
            perplexity=ppl,
            repetition=float(self.repetition[idx].mean()),
            fluency=float(self.fluency[idx].mean()),
            relevance=float(self.relevance[idx].mean()),
            similarity=float(self.similarity[idx].mean()),
            combined_pos=float(self.combined[1][idx].mean()),
            combined_neg=float(self.combined[-1][idx].mean()),
        )


class Best(NamedTuple):
    """The best strength for a pole, chosen on one half of the prompts, reported on the other."""

    pole: int
    alpha: float
    steered: Summary
    baseline: Summary
    selected_on: list[int]
    reported_on: list[int]


class MonotoneRange(NamedTuple):
    """The α range around 0 where fluency holds, and whether the concept is monotone there."""

    lo: float
    hi: float
    monotone: bool
    concepts: list[float]


@dataclass(frozen=True)
class SweepConfig:
    """Settings of :func:`strength_sweep`."""

    alphas: tuple[float, ...]
    """Strengths to try (both signs); 0 is always added as the unsteered reference."""
    max_new_tokens: int = 48
    """Tokens generated per prompt."""
    batch_size: int = 16
    """Prompts per generate call (and per scoring forward)."""
    chat: bool = True
    """Render prompts with the chat template."""
    system: str | None = None
    """System message for the steered and unsteered runs (None: the template's default)."""
    repetition_n: int = 4
    """n of the seq-rep-n repetition rate."""
    baseline: bool = True
    """Also run the prompting baseline for both poles."""
    fluency_prefix: str = "Say something."
    """The generic prefix every response is scored after for fluency (a user message, rendered
    with the chat template when ``chat``)."""
    relevance_floor: float = 0.1
    """Lower bound on the unsteered response's prompt similarity in the relevance ratio."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self, "alphas", len(self.alphas) > 0, "at least one strength")
        check_positive(self, "max_new_tokens", "batch_size", "repetition_n", "relevance_floor")
        require(self, "fluency_prefix", bool(self.fluency_prefix.strip()), "a non-empty text")


@dataclass
class Sweep:
    """The result of :func:`strength_sweep`: one :class:`Condition` per α, plus baselines."""

    concept: str
    prompts: list[str]
    config: SweepConfig
    points: list[Condition]
    """Steered conditions by increasing α (α = 0 is the unsteered reference)."""
    baselines: dict[int, Condition]
    """Prompting baseline per pole."""
    ppl_reference: float
    """``PPL₀``: corpus perplexity of the unsteered responses after the generic prefix."""

    @property
    def alphas(self) -> list[float]:
        return [p.alpha for p in self.points]  # type: ignore[misc]

    def table(self, rows: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One dict per condition: label, alpha, pole and the :class:`Summary` fields."""
        conds = [*self.points, *self.baselines.values()]
        return [{"label": c.label, "alpha": c.alpha, "pole": c.pole, **c.summary(rows)._asdict()}
                for c in conds]  # fmt: skip

    def best(self, pole: int, *, holdout: bool = True) -> Best:
        """The α (of the pole's sign) with the best mean combined score, against the baseline.

        With ``holdout`` (and at least two prompts), α is chosen on the even-indexed prompts
        and both it and the baseline are reported on the odd-indexed ones.
        """
        if pole not in POLES:
            raise ValueError(f"pole must be +1 or -1, got {pole}")
        if pole not in self.baselines:
            raise ValueError("this sweep ran without the prompting baseline")
        cands = [p for p in self.points if p.alpha is not None and p.alpha * pole > 0]
        if not cands:
            raise ValueError(f"no α of sign {pole:+d} in the sweep")
        n = len(self.prompts)
        sel = list(range(0, n, 2)) if holdout and n > 1 else list(range(n))
        rep = list(range(1, n, 2)) if holdout and n > 1 else list(range(n))
        best = max(cands, key=lambda c: c.summary(sel).combined(pole))
        return Best(pole, float(best.alpha), best.summary(rep),  # type: ignore[arg-type]
                    self.baselines[pole].summary(rep), sel, rep)  # fmt: skip

    def monotone_range(self, min_fluency: float = 0.5) -> MonotoneRange:
        """The widest run of α values around 0 whose mean fluency is ``>= min_fluency``, and
        whether the mean concept score is non-decreasing in α over it."""
        fl = [c.summary().fluency for c in self.points]
        i0 = self.alphas.index(0.0)
        lo = hi = i0
        while lo > 0 and fl[lo - 1] >= min_fluency:
            lo -= 1
        while hi < len(fl) - 1 and fl[hi + 1] >= min_fluency:
            hi += 1
        concepts = [self.points[i].summary().concept for i in range(lo, hi + 1)]
        mono = all(b >= a for a, b in zip(concepts, concepts[1:]))
        return MonotoneRange(self.alphas[lo], self.alphas[hi], mono, concepts)

    def to_dict(self, texts: bool = True) -> dict[str, Any]:
        """JSON-ready: config, the table, and (optionally) every continuation."""
        out: dict[str, Any] = {
            "concept": self.concept,
            "config": {**self.config.__dict__, "alphas": list(self.config.alphas)},
            "ppl_reference": self.ppl_reference,
            "table": self.table(),
            "prompts": self.prompts,
        }
        if texts:
            out["texts"] = {c.label: c.texts for c in [*self.points, *self.baselines.values()]}
        return out


# --- scoring ----------------------------------------------------------------------------------


class Responses(NamedTuple):
    """Raw per-response scores of one condition (before any normalisation)."""

    texts: list[str]
    nll_sum: Float[Tensor, " n"]
    """``Σ_t −log p(y_t | prefix, y_<t)`` under the model as it is (float64)."""
    n_tokens: Float[Tensor, " n"]
    """Tokens of each response."""
    repetition: Float[Tensor, " n"]
    """seq-rep-n of each response."""
    similarity: Float[Tensor, " n"]
    """Cosine of the response's and the prompt's MiniLM embeddings."""
    projections: list[Tensor] | None
    """Per-token projections on the probe direction (when a probe was given)."""

    def perplexity(self) -> float:
        """Corpus perplexity ``exp(Σ NLL / Σ tokens)`` (NaN without tokens)."""
        n = float(self.n_tokens.sum())
        return math.exp(float(self.nll_sum.sum()) / n) if n > 0 else float("nan")


def prefix_ids(handle: ModelHandle, prefix: str, *, chat: bool = True) -> Tensor:
    """Token ids of the generic fluency prefix (chat-rendered when ``chat``)."""
    text = handle.chat(prefix) if chat else prefix
    enc = encode_texts(handle, [text])
    return enc.input_ids[0][enc.attention_mask[0].bool()]


def score_responses(
    handle: ModelHandle,
    encoder: ModelHandle,
    prompt_embeddings: Float[Tensor, "n d"],
    token_ids: Sequence[Tensor],
    texts: Sequence[str],
    prefix: Tensor,
    *,
    probe: tuple[str, Tensor] | None = None,
    repetition_n: int = 4,
    batch_size: int = 16,
) -> Responses:
    """Score responses: NLL after ``prefix`` (and probe projections, same forward), repetition,
    and similarity to their prompts (call outside any ``steer`` context).

    Args:
        handle: the causal LM (unsteered).
        encoder: the sentence encoder (``load_model("minilm-l6")``).
        prompt_embeddings: :func:`~steerlab.steering.scores.embed` of the prompts, one row per
            response.
        token_ids: each response's generated token ids.
        texts: each response's text.
        prefix: :func:`prefix_ids`, placed before every response.
        probe: ``(site, direction)`` to also read per-token projections.
        repetition_n: n of seq-rep-n.
        batch_size: sequences per forward.
    """
    if not (len(token_ids) == len(texts) == len(prompt_embeddings)):
        raise ValueError(f"{len(token_ids)} token lists, {len(texts)} texts and "
                         f"{len(prompt_embeddings)} prompt embeddings: need one of each per "
                         "response")  # fmt: skip
    site, direction = probe if probe is not None else (None, None)
    s = continuation_scores(handle, [prefix] * len(token_ids), token_ids, site=site,
                            direction=direction, batch_size=batch_size)  # fmt: skip
    emb = embed(encoder, list(texts), batch_size=batch_size)
    return Responses(
        list(texts),
        torch.tensor([float(x.sum()) for x in s.nll], dtype=torch.float64),
        torch.tensor([len(x) for x in s.nll], dtype=torch.float64),
        torch.tensor([repetition_rate(t, repetition_n) for t in texts], dtype=torch.float64),
        cosine(emb, prompt_embeddings),
        s.projections,
    )


# --- the sweep --------------------------------------------------------------------------------


def _label(alpha: float) -> str:
    return f"alpha={alpha:+g}" if alpha else "unsteered"


def strength_sweep(
    handle: ModelHandle,
    prompts: Sequence[str],
    interventions_for: Callable[[float], Any],
    concept: Any,
    config: SweepConfig,
    *,
    encoder: ModelHandle | None = None,
    progress: Callable[[str], None] | None = None,
) -> Sweep:
    """Generate and score every strength (see the module docstring).

    Args:
        handle: the causal LM.
        prompts: user messages (e.g. the neutral prompts from ``data/steering``).
        interventions_for: α ↦ the interventions for that strength (what
            :func:`~steerlab.steering.steer` accepts). α = 0 runs without any hook.
        concept: :class:`Sentiment`, :class:`KeywordConcept` or :class:`ProjectionConcept`.
        config: :class:`SweepConfig`.
        encoder: the sentence encoder for relevance; default ``load_model("minilm-l6")``.
        progress: called with the label of each condition once it is generated.
    """
    prompts = list(prompts)
    alphas = sorted({float(a) for a in config.alphas} | {0.0})
    kw = {"chat": config.chat, "max_new_tokens": config.max_new_tokens,
          "batch_size": config.batch_size}  # fmt: skip
    gens: dict[str, tuple[float | None, int | None, Generation]] = {}
    for a in alphas:
        ivs = None if a == 0 else interventions_for(a)
        gens[_label(a)] = (a, None, generate(handle, prompts, ivs, system=config.system, **kw))
        if progress:
            progress(_label(a))
    if config.baseline:
        if not config.chat:
            raise ValueError("the prompting baseline needs chat=True (a system message)")
        for pole in POLES:
            label = f"prompt{pole:+d}"
            g = generate(handle, prompts, None, system=concept.system_prompt(pole), **kw)
            gens[label] = (None, pole, g)
            if progress:
                progress(label)

    if encoder is None:
        encoder = load_model("minilm-l6", device=handle.device)
    prefix = prefix_ids(handle, config.fluency_prefix, chat=config.chat)
    prompt_emb = embed(encoder, prompts, batch_size=config.batch_size)
    scored = {}
    for label, (_, _, g) in gens.items():
        r = score_responses(handle, encoder, prompt_emb, g.token_ids, g.texts, prefix,
                            probe=concept.probe, repetition_n=config.repetition_n,
                            batch_size=config.batch_size)  # fmt: skip
        scored[label] = (r, concept.score(g.texts, r.projections))
    r0, raw0 = scored["unsteered"]
    ppl0 = r0.perplexity()

    conds: dict[str, Condition] = {}
    for label, (alpha, pole, g) in gens.items():
        r, raw = scored[label]
        flu = fluency_score(r.nll_sum, r.n_tokens, r.repetition, ppl0)
        rel = relevance_ratio(r.similarity, r0.similarity, config.relevance_floor)
        cn = {p: concept.normalise(raw, p, raw0) for p in POLES}
        comb = {p: harmonic_mean(torch.stack([cn[p], flu, rel], -1)) for p in POLES}
        conds[label] = Condition(label, alpha, pole, g.texts, raw, r.nll_sum, r.n_tokens,
                                 r.repetition, flu, rel, r.similarity, cn, comb)  # fmt: skip
    points = [conds[_label(a)] for a in alphas]
    baselines = {p: conds[f"prompt{p:+d}"] for p in POLES if f"prompt{p:+d}" in conds}
    return Sweep(concept.name, prompts, config, points, baselines, ppl0)
