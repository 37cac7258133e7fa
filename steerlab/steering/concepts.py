"""Concept judges for steering evaluations: a raw score per response and its normalisation
towards a *pole* (+1: the concept, −1: its opposite), both in ``[0, 1]`` after normalisation.

- :class:`Sentiment` — VADER compound (a lexicon, no model).
- :class:`KeywordConcept` — whether a response mentions a keyword.
- :class:`ProjectionConcept` — mean projection of the response's tokens on a direction read
  from the unsteered model.
- :class:`LexicalFormality` — :func:`steerlab.steering.formality.lexical_formality`, a word-list
  formality score (no model), normalised like a projection.

Each has ``name``, ``probe`` (``(site, direction)`` when it reads activations, else None),
``score(texts, projections)``, ``normalise(raw, pole, reference)`` (``reference``: the
unsteered responses' raw scores) and ``system_prompt(pole)`` (the prompting baseline's
message). :mod:`steerlab.steering.evals` combines them with fluency and relevance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlab.steering.formality import lexical_formality
from steerlab.steering.scores import keyword_hits, vader_compound

__all__ = ["POLES", "KeywordConcept", "LexicalFormality", "ProjectionConcept", "Sentiment"]

POLES = (1, -1)


def _standardised(raw: Tensor, pole: int, reference: Tensor, scale: float) -> Tensor:
    """``clip(pole · (raw − μ₀) / (scale · σ₀), 0, 1)`` with μ₀, σ₀ of the non-NaN reference."""
    ref = reference[~reference.isnan()]
    mu = ref.mean() if len(ref) else torch.tensor(0.0, dtype=torch.float64)
    sd = ref.std() if len(ref) > 1 else torch.tensor(1.0, dtype=torch.float64)
    sd = sd.clamp_min(torch.finfo(torch.float64).eps ** 0.5)
    c = (pole * (raw - mu) / (scale * sd)).clamp(0, 1)
    return torch.nan_to_num(c, nan=0.0)


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
    """A concept read off activations: raw ``p_b`` = mean over the response's tokens of
    ``⟨h_t, v̂⟩`` at ``site``, under the unsteered model (after the generic prefix).

    Fit ``direction`` on pairs other than those a steering method is fitted on, or the score
    rewards the method for matching its own training data.

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
        return _standardised(raw, pole, reference, self.scale)

    def system_prompt(self, pole: int) -> str:
        if self.prompts is not None:
            return self.prompts[pole]
        return f"Talk about {self.name}." if pole > 0 else f"Never mention {self.name}."


@dataclass(frozen=True)
class LexicalFormality:
    """Formality by word lists: raw ``F_lex`` (:mod:`steerlab.steering.formality`, in ``[-1,
    1]``); ``c_b = clip(pole · (F_b − μ₀) / (scale · σ₀), 0, 1)`` with ``μ₀, σ₀`` over the
    unsteered responses, as :class:`ProjectionConcept`. Pole +1 is formal, −1 casual.
    """

    name: str = "formality_lexical"
    prompts: dict[int, str] = field(default_factory=lambda: {
        1: "Always answer in a very formal, polite and elaborate register.",
        -1: "Always answer very casually, in informal slang, like texting a friend.",
    })  # fmt: skip
    """The prompting baseline's system message for each pole."""
    scale: float = 2.0
    probe: tuple[str, Tensor] | None = None

    def score(self, texts: Sequence[str], projections: Any = None) -> Tensor:
        del projections
        return lexical_formality(texts)

    def normalise(self, raw: Tensor, pole: int, reference: Tensor) -> Tensor:
        return _standardised(raw, pole, reference, self.scale)

    def system_prompt(self, pole: int) -> str:
        return self.prompts[pole]
