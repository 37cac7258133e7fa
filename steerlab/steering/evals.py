"""Strength sweeps scored as in AxBench: concept, fluency and relevance, and their harmonic mean.

    >>> sweep = strength_sweep(handle, prompts, lambda a: vec.intervention(12, a), Sentiment(),
    ...                        SweepConfig(alphas=(-8, -4, 4, 8)))
    >>> sweep.table()                      # one row per α and per prompting baseline
    >>> sweep.best(+1)                     # best α for the positive pole vs the prompt baseline

For every strength α (and α = 0, the unsteered reference) the prompts are generated with the
intervention, and each continuation ``b`` gets (AxBench, Wu et al. 2025, judges concept,
instruction relevance and fluency and takes their harmonic mean; here each judge is a metric
from :mod:`steerlab.steering.scores`, normalised to ``[0, 1]``):

- **concept** ``c_b``: the concept's raw score (:class:`Sentiment`: VADER compound;
  :class:`KeywordConcept`: 1 if a keyword occurs; :class:`ProjectionConcept`: mean projection of
  the continuation's tokens on the concept direction, read from the *unsteered* model), and its
  normalisation towards a *pole* (+1 or −1: the concept or its opposite). See each class.
- **fluency** ``f_b = min(1, PPL₀ / ppl_b) · (1 − rep_b)``: ``ppl_b`` is the perplexity of the
  continuation under the unsteered model given the plain prompt, ``PPL₀`` the corpus perplexity
  of the unsteered continuations (so unsteered text scores about 1), and ``rep_b`` the
  seq-rep-n repetition rate. An empty continuation has ``f_b = 0``.
- **relevance** ``r_b = max(0, cos(e(steered_b), e(unsteered_b)))`` with MiniLM embeddings ``e``.
- **combined** ``= H(c_b, f_b, r_b)``, the harmonic mean, zero if any part is zero, then
  averaged over prompts — computed for each pole.

The **prompting baseline** generates the prompts unsteered with a system message asking for
the pole (``concept.system_prompt(pole)``). Its continuations are scored like the steered ones,
in the same context — the plain prompt, without that system message — so that fluency and
relevance compare like with like. :meth:`Sweep.best` picks α on one half of the prompts and
reports it, and the baseline, on the other half (AxBench selects the factor on held-out data).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from steerlab.config import check_positive, check_types, require
from steerlab.steering.generate import Generation, generate
from steerlab.steering.scores import (
    continuation_scores,
    cosine,
    embed,
    harmonic_mean,
    keyword_hits,
    repetition_rate,
    vader_compound,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Best",
    "Condition",
    "KeywordConcept",
    "MonotoneRange",
    "ProjectionConcept",
    "Sentiment",
    "Summary",
    "Sweep",
    "SweepConfig",
    "strength_sweep",
]

POLES = (1, -1)


# --- concepts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentiment:
    """Sentiment: raw score = VADER compound ``s_b ∈ [-1, 1]``; ``c_b = max(0, pole · s_b)``.

    A neutral text scores 0 for either pole, a fully positive one 1 for the positive pole.
    """

    name: str = "sentiment"
    prompts: dict[int, str] = field(default_factory=lambda: {
        1: "Always answer in a very positive, happy and enthusiastic tone.",
        -1: "Always answer in a very negative, sad and gloomy tone.",
    })  # fmt: skip
    """The prompting baseline's system message for each pole."""
    probe: tuple[str, Tensor] | None = None

    def score(self, texts: Sequence[str], projections: Any = None) -> Tensor:
        del projections
        return vader_compound(texts)

    def normalise(self, raw: Tensor, pole: int, reference: Tensor) -> Tensor:
        del reference
        return (pole * raw).clamp(0, 1)

    def system_prompt(self, pole: int) -> str:
        return self.prompts[pole]


@dataclass(frozen=True)
class KeywordConcept:
    """A concept detected by keywords: raw = 1 if the text contains one, else 0.

    ``c_b = raw`` for pole +1 and ``1 − raw`` for pole −1 (avoiding the concept).
    """

    name: str
    keywords: tuple[str, ...]
    prompts: dict[int, str] | None = None
    """System messages per pole; default "Talk about <name>." / "Never mention <name>."."""
    probe: tuple[str, Tensor] | None = None

    def score(self, texts: Sequence[str], projections: Any = None) -> Tensor:
        del projections
        return keyword_hits(texts, self.keywords)

    def normalise(self, raw: Tensor, pole: int, reference: Tensor) -> Tensor:
        del reference
        return raw if pole > 0 else 1 - raw

    def system_prompt(self, pole: int) -> str:
        if self.prompts is not None:
            return self.prompts[pole]
        return f"Talk about {self.name}." if pole > 0 else f"Never mention {self.name}."


@dataclass(frozen=True, eq=False)
class ProjectionConcept:
    """A concept read off activations: raw ``p_b`` = mean over the continuation's tokens of
    ``⟨h_t, v̂⟩`` at ``site``, under the unsteered model.

    ``c_b = clip(pole · (p_b − μ₀) / (scale · σ₀), 0, 1)`` with ``μ₀, σ₀`` the mean and standard
    deviation of ``p`` over the unsteered continuations: ``scale`` standard deviations towards
    the pole count as the full concept. An empty continuation scores 0.
    """

    name: str
    site: str
    direction: Tensor
    prompts: dict[int, str] | None = None
    scale: float = 2.0

    @property
    def probe(self) -> tuple[str, Tensor]:
        return self.site, self.direction

    def score(self, texts: Sequence[str], projections: list[Tensor] | None) -> Tensor:
        del texts
        if projections is None:
            raise ValueError("ProjectionConcept needs the continuations' projections")
        return torch.stack([p.mean() if len(p) else torch.tensor(float("nan"), dtype=torch.float64)
                            for p in projections])  # fmt: skip

    def normalise(self, raw: Tensor, pole: int, reference: Tensor) -> Tensor:
        ref = reference[~reference.isnan()]
        mu = ref.mean() if len(ref) else torch.tensor(0.0, dtype=torch.float64)
        sd = ref.std() if len(ref) > 1 else torch.tensor(1.0, dtype=torch.float64)
        sd = sd.clamp_min(torch.finfo(torch.float64).eps ** 0.5)
        c = (pole * (raw - mu) / (self.scale * sd)).clamp(0, 1)
        return torch.nan_to_num(c, nan=0.0)

    def system_prompt(self, pole: int) -> str:
        if self.prompts is not None:
            return self.prompts[pole]
        return f"Talk about {self.name}." if pole > 0 else f"Never mention {self.name}."


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

    def __post_init__(self) -> None:
        check_types(self)
        require(self, "alphas", len(self.alphas) > 0, "at least one strength")
        check_positive(self, "max_new_tokens", "batch_size", "repetition_n")


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
    """``PPL₀``: corpus perplexity of the unsteered continuations."""

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


# --- the sweep --------------------------------------------------------------------------------


def _label(alpha: float) -> str:
    return f"alpha={alpha:+g}" if alpha else "unsteered"


def strength_sweep(
    handle: Any,
    prompts: Sequence[str],
    interventions_for: Callable[[float], Any],
    concept: Any,
    config: SweepConfig,
    *,
    encoder: Any = None,
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

    plain = gens["unsteered"][2]
    if encoder is None:
        from steerlab.models import load_model

        encoder = load_model("minilm-l6", device=handle.device)
    site, direction = concept.probe if concept.probe is not None else (None, None)
    scored = {}
    for label, (_, _, g) in gens.items():
        # every continuation is scored after the plain prompt (no baseline system message)
        s = continuation_scores(handle, plain.prompt_ids, g.token_ids, site=site,
                                direction=direction, batch_size=config.batch_size)  # fmt: skip
        emb = embed(encoder, g.texts, batch_size=config.batch_size)
        scored[label] = (s, emb, concept.score(g.texts, s.projections))
    s0, e0, raw0 = scored["unsteered"]
    tot = sum(float(x.sum()) for x in s0.nll)
    n0 = sum(len(x) for x in s0.nll)
    ppl0 = math.exp(tot / n0) if n0 else float("nan")

    conds: dict[str, Condition] = {}
    for label, (alpha, pole, g) in gens.items():
        s, emb, raw = scored[label]
        n_tok = torch.tensor([len(x) for x in s.nll], dtype=torch.float64)
        nll_sum = torch.stack([x.sum() for x in s.nll]).double()
        ppl = s.perplexity()
        rep = torch.tensor([repetition_rate(t, config.repetition_n) for t in g.texts],
                           dtype=torch.float64)  # fmt: skip
        flu = torch.where(n_tok > 0, (ppl0 / ppl).clamp(max=1) * (1 - rep), torch.zeros_like(rep))
        flu = torch.nan_to_num(flu, nan=0.0)
        rel = cosine(emb, e0).clamp(0, 1)
        cn = {p: concept.normalise(raw, p, raw0) for p in POLES}
        comb = {p: harmonic_mean(torch.stack([cn[p], flu, rel], -1)) for p in POLES}
        conds[label] = Condition(label, alpha, pole, g.texts, raw, nll_sum, n_tok, rep, flu, rel,
                                 cn, comb)  # fmt: skip
    points = [conds[_label(a)] for a in alphas]
    baselines = {p: conds[f"prompt{p:+d}"] for p in POLES if f"prompt{p:+d}" in conds}
    return Sweep(concept.name, prompts, config, points, baselines, ppl0)
