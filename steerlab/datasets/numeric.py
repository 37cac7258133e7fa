"""Numeric-attribute data sets: entities with numeric attributes, numbers in text, comparisons.

After El-Shangiti et al. (NAACL 2025) and Heinzerling & Inui (EACL 2024):

- **numbers in text** (:func:`number_sentences`, ``data/numeric/numbers_in_text.jsonl``):
  templated sentences that mention a year or a quantity, with the value as target and its
  character span (the span's last token is the row to probe);
- **entities with numeric attributes** (:data:`ATTRIBUTES`, ``data/numeric/*.csv``): birth
  years of famous people, populations of countries, atomic numbers of elements, curated from
  general knowledge (Wikipedia values);
- **comparisons** (:func:`comparison_prompts`): "Was X born before Y? Answer:" pairs built from
  the entities, and :func:`year_comparisons`, "Which year is later, X or Y?" with both years in
  the prompt (the comparison SmolLM2-135M does).

Readouts and the recall filter are in :mod:`steerlab.probes.numeric`; the causal tests in
:mod:`steerlab.probes.numeric_causal`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from steerlab.datasets.paths import data_dir
from steerlab.models import ModelHandle
from steerlab.tokens import single_token_id

logger = logging.getLogger(__name__)


def numeric_dir() -> Path:
    """``data/numeric``: the curated CSV and JSONL files (see :func:`steerlab.datasets.paths.data_dir`)."""
    return data_dir("numeric")


# --- entities -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """A numeric attribute of a kind of entity, with its prompts and recall tolerance."""

    name: str
    """Short id: ``birth_year``, ``population``, ``atomic_number``."""
    file: str
    """CSV file under ``data/numeric`` (empty when the values are given in the prompt)."""
    column: str
    """CSV column holding the value."""
    recall: str
    """Completion prompt for the recall check; ``{e}`` is the entity."""
    compare: str
    """Comparison prompt; ``{a}`` and ``{b}`` are entities, "Yes" means ``value(a) < value(b)``
    (or ``>`` when ``yes_if_less`` is False)."""
    yes_if_less: bool
    """Whether the correct answer is Yes when ``a``'s value is smaller."""
    tolerance: float
    """Recall is correct if ``|parsed − true| <= tolerance`` (in ``target`` units)."""
    max_new_tokens: int = 6
    """Greedy tokens generated for the recall check (digits are single tokens)."""
    log_target: bool = False
    """Probe ``log10(value)`` instead of the value (populations span seven decades)."""
    multiplier: float = 1.0
    """Value in the CSV times this is the quantity the prompt asks for."""

    def target(self, values: Tensor) -> Tensor:
        """The probe target for raw values (``log10`` for populations)."""
        return values.log10() if self.log_target else values


#: The curated attributes. Sources: curated from general knowledge (Wikipedia values); see
#: ``data/README.md``.
ATTRIBUTES: dict[str, Attribute] = {
    "birth_year": Attribute(
        "birth_year", "birth_years.csv", "birth_year",
        recall="{e} was born in the year",
        compare="Was {a} born before {b}? Answer:",
        yes_if_less=True, tolerance=5, max_new_tokens=5,
    ),
    "population": Attribute(
        "population", "populations.csv", "population_millions",
        recall="The population of {e} is about",
        compare="Does {a} have a larger population than {b}? Answer:",
        yes_if_less=False, tolerance=math.log10(2.0), log_target=True, multiplier=1e6,
        max_new_tokens=7,
    ),
    "atomic_number": Attribute(
        "atomic_number", "elements.csv", "atomic_number",
        recall="The atomic number of {e} is",
        compare="Does {a} have a larger atomic number than {b}? Answer:",
        yes_if_less=False, tolerance=0, max_new_tokens=4,
    ),
}  # fmt: skip


class Entities(NamedTuple):
    """Entities with one numeric attribute."""

    names: list[str]
    """Entity names as they appear in prompts."""
    values: Tensor
    """``[n]`` float64 values in natural units (a year, a head count, an atomic number)."""
    attribute: Attribute
    """The attribute and its prompts."""

    def subset(self, keep: Tensor | Sequence[bool]) -> Entities:
        """The entities where ``keep`` is True."""
        k = torch.as_tensor(keep, dtype=torch.bool)
        if k.shape != (len(self.names),):
            raise ValueError(
                f"keep must be a mask of {len(self.names)} booleans, got {tuple(k.shape)}"
            )
        return Entities([n for n, m in zip(self.names, k.tolist()) if m], self.values[k],
                        self.attribute)  # fmt: skip

    @property
    def targets(self) -> Tensor:
        """Probe targets (``attribute.target(values)``)."""
        return self.attribute.target(self.values)


def load_entities(attribute: str, path: str | Path | None = None) -> Entities:
    """Read a curated attribute table (``birth_year``, ``population``, ``atomic_number``).

    Args:
        attribute: a key of :data:`ATTRIBUTES`.
        path: another CSV with the same columns (default ``data/numeric/<file>``).
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {sorted(ATTRIBUTES)}")
    spec = ATTRIBUTES[attribute]
    f = Path(path) if path is not None else numeric_dir() / spec.file
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found (the curated data lives in data/numeric/)")
    with open(f, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or spec.column not in rows[0]:
        raise ValueError(f"{f}: expected a column {spec.column!r}")
    names = [next(iter(r.values())).strip() for r in rows]
    values = torch.tensor([float(r[spec.column]) * spec.multiplier for r in rows],
                          dtype=torch.float64)  # fmt: skip
    if len(set(names)) != len(names):
        raise ValueError(f"{f}: duplicate entity names")
    return Entities(names, values, spec)


# --- comparisons --------------------------------------------------------------------------------


class Comparison(NamedTuple):
    """A two-entity comparison prompt."""

    text: str
    """The prompt, ending in "Answer:"."""
    a: int
    """Index of the first entity."""
    b: int
    """Index of the second entity."""
    yes: bool
    """Whether " Yes" is the correct answer."""
    span_a: tuple[int, int]
    """Character span of ``a`` in ``text``."""
    span_b: tuple[int, int]
    """Character span of ``b`` in ``text``."""
    answer_ids: tuple[int, int] | None = None
    """Token ids ``(positive, negative)`` whose logit difference is the answer margin (> 0: the
    answer is the positive one, correct iff ``yes``); None means ``(" Yes", " No")``."""


def comparison_prompts(
    entities: Entities,
    *,
    per_entity: int = 8,
    min_gap: float = 0.0,
    seed: int = 0,
    template: str | None = None,
) -> list[Comparison]:
    """Pairs ``(a, b)`` where every entity appears ``per_entity`` times as ``b``.

    Partners are drawn at random among entities whose target differs by more than
    ``min_gap`` (target units), so the answer is unambiguous; Yes and No answers come out
    about equally often.
    """
    spec = entities.attribute
    tmpl = template or spec.compare
    if "{a}" not in tmpl or "{b}" not in tmpl or tmpl.index("{a}") > tmpl.index("{b}"):
        raise ValueError("the comparison template needs {a} before {b}")
    t = entities.targets.tolist()
    rng = random.Random(seed)
    out = []
    for b in range(len(t)):
        partners = [a for a in range(len(t)) if a != b and abs(t[a] - t[b]) > min_gap]
        if not partners:
            continue
        for a in rng.sample(partners, min(per_entity, len(partners))):
            na, nb = entities.names[a], entities.names[b]
            pre = tmpl[: tmpl.index("{a}")]
            mid = tmpl[tmpl.index("{a}") + 3 : tmpl.index("{b}")]
            text = tmpl.format(a=na, b=nb)
            sa = (len(pre), len(pre) + len(na))
            sb0 = sa[1] + len(mid)
            less = t[a] < t[b]
            out.append(Comparison(text, a, b, less == spec.yes_if_less, sa, (sb0, sb0 + len(nb))))
    return out


#: Years given in the prompt itself ("Which year is later, 1832 or 1907?"): no table and no
#: recall check, the value is in the context. "Yes" (the positive answer) means ``a`` is later.
YEAR_IN_CONTEXT = Attribute(
    "year_in_context", file="", column="", recall="",
    compare="Which year is later, {a} or {b}?", yes_if_less=False, tolerance=0.0,
)  # fmt: skip


def year_comparisons(
    handle: ModelHandle,
    n: int,
    *,
    lo: int = 1100,
    hi: int = 1999,
    seed: int = 0,
    question: str = YEAR_IN_CONTEXT.compare,
    answer_prefix: str = "The later year is ",
) -> tuple[Entities, list[Comparison]]:
    """``n`` chat prompts comparing two years given in context, read out at a digit.

    The prompt is the model's chat template around ``question`` (e.g. "Which year is later,
    1832 or 1907?") followed by the assistant's ``answer_prefix`` and the years' shared first
    digit ("The later year is 1"). The two years differ in their second digit, so the model's
    choice is the margin ``logit(a's 2nd digit) − logit(b's 2nd digit)`` at the last token
    (:attr:`Comparison.answer_ids`; > 0 picks ``a``, correct iff ``a`` is later). This is the
    comparison this 135M model does (accuracy ≈ 0.93; it answers "Was X born before Y?" at
    chance), so it is where moving ``a``'s representation along a PLS direction can flip answers.

    Returns:
        The years as :class:`Entities` (names are the year strings; :data:`YEAR_IN_CONTEXT`)
        and the comparisons, whose ``a``/``b`` index those entities. Pairs are drawn uniformly
        from ``[lo, hi]``, so ``a`` is the later year about half the time.
    """
    if not 1000 <= lo < hi <= 1999:
        raise ValueError(f"lo and hi must satisfy 1000 <= lo < hi <= 1999, got {lo}, {hi}")
    if lo // 100 == hi // 100:
        raise ValueError(f"lo and hi must span two centuries (the years' second digits differ), "
                         f"got {lo}, {hi}")  # fmt: skip
    if (
        "{a}" not in question
        or "{b}" not in question
        or question.index("{a}") > question.index("{b}")
    ):
        raise ValueError("the question needs {a} before {b}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    digit = {d: single_token_id(handle, d) for d in "0123456789"}
    if len(handle.tokenizer("1850", add_special_tokens=False)["input_ids"]) != 4:
        raise ValueError(
            "this readout needs a tokenizer that writes numbers one digit per token "
            "(Llama-3, SmolLM, Qwen...); use comparison_prompts with Yes/No answers instead"
        )
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        x, y = rng.randint(lo, hi), rng.randint(lo, hi)
        if str(x)[1] != str(y)[1]:
            pairs.append((x, y))
    names = list(dict.fromkeys(str(v) for p in pairs for v in p))
    index = {nm: i for i, nm in enumerate(names)}
    ents = Entities(names, torch.tensor([float(v) for v in names], dtype=torch.float64),
                    YEAR_IN_CONTEXT)  # fmt: skip
    out = []
    for x, y in pairs:
        q = question.format(a=x, b=y)
        text = handle.chat(q) + answer_prefix + str(x)[0]
        q0 = text.index(q)
        sa0 = q0 + question.index("{a}")
        sb0 = sa0 + 4 + len(question[question.index("{a}") + 3 : question.index("{b}")])
        assert text[sa0 : sa0 + 4] == str(x) and text[sb0 : sb0 + 4] == str(y)
        out.append(Comparison(text, index[str(x)], index[str(y)], x > y, (sa0, sa0 + 4),
                              (sb0, sb0 + 4), (digit[str(x)[1]], digit[str(y)[1]])))  # fmt: skip
    return ents, out


# --- numbers in text -----------------------------------------------------------------------------


class NumberSentence(NamedTuple):
    """A sentence mentioning a number, with the number's value and character span."""

    text: str
    value: float
    span: tuple[int, int]
    kind: str
    """``"year"`` or ``"quantity"``."""
    template: int
    """Index of the template it came from."""


YEAR_TEMPLATES = (
    "The treaty was signed in {v}.",
    "In {v}, the city built a new bridge over the river.",
    "She was born in {v} in a small village.",
    "The company was founded in {v} by two brothers.",
    "By {v}, the railway had reached the coast.",
    "The cathedral was completed in {v} after decades of work.",
    "He moved to London in {v} to study law.",
    "The war ended in {v} with a fragile peace.",
    "The painting, finished in {v}, now hangs in the national museum.",
    "Records from {v} describe a severe winter.",
    "The university opened its doors in {v}.",
    "A great fire destroyed the market in {v}.",
    "The king died in {v} without an heir.",
    "Their first album was released in {v}.",
    "The law was passed in {v} after a long debate.",
    "The ship sank off the coast in {v}.",
    "In the year {v}, a comet was seen over Europe.",
    "The castle was besieged in {v}.",
    "The library holds a manuscript copied in {v}.",
    "The first edition of the book appeared in {v}.",
    "The town was granted a charter in {v}.",
    "The bridge collapsed in {v} during a storm.",
    "The museum was renovated in {v}.",
    "The poet wrote the letter in {v}.",
    "The census of {v} counted every household.",
    "Coins minted in {v} are now rare.",
    "The expedition set out in {v} and never returned.",
    "The church bells were cast in {v}.",
    "The harbour froze completely in the winter of {v}.",
    "The observatory recorded an eclipse in {v}.",
    "In {v} the river flooded the lower town.",
    "The map was drawn in {v} by a monk.",
    "Elections were held in {v} for the first time.",
    "The abbey was founded in {v}.",
    "The old mill burned down in {v}.",
    "The two cities signed a trade agreement in {v}.",
    "The tower, built in {v}, still stands today.",
    "The family emigrated in {v}.",
    "The festival was first celebrated in {v}.",
    "The plague reached the port in {v}.",
)

QUANTITY_TEMPLATES = (
    "The bridge is {v} meters long.",
    "The farm has {v} sheep.",
    "The library owns {v} books about astronomy.",
    "About {v} people attended the concert.",
    "The mountain hut sits at {v} meters above the sea.",
    "The school has {v} students this year.",
    "The recipe needs {v} grams of flour.",
    "The village counted {v} inhabitants.",
    "The ship carried {v} passengers.",
    "They planted {v} trees along the road.",
)


def number_sentences(
    n_years: int = 1500,
    n_quantities: int = 500,
    *,
    year_range: tuple[int, int] = (1000, 2020),
    quantity_range: tuple[int, int] = (2, 999),
    seed: int = 0,
) -> list[NumberSentence]:
    """Templated sentences with a uniformly drawn year or quantity (deterministic in ``seed``)."""
    rng = random.Random(seed)
    out = []
    for kind, n, tmpls, (lo, hi) in (
        ("year", n_years, YEAR_TEMPLATES, year_range),
        ("quantity", n_quantities, QUANTITY_TEMPLATES, quantity_range),
    ):
        for _ in range(n):
            i = rng.randrange(len(tmpls))
            v = rng.randint(lo, hi)
            t = tmpls[i]
            start = t.index("{v}")
            text = t.format(v=v)
            out.append(NumberSentence(text, float(v), (start, start + len(str(v))), kind, i))
    return out


def load_number_sentences(
    path: str | Path | None = None, kind: str | None = None
) -> list[NumberSentence]:
    """Read ``data/numeric/numbers_in_text.jsonl`` (or ``path``), optionally one ``kind``.

    Each line holds ``text``, ``value``, ``start``, ``end``, ``kind``, ``template``; the span
    must cover exactly the value's digits, or a :class:`ValueError` names the line.
    """
    f = Path(path) if path is not None else numeric_dir() / "numbers_in_text.jsonl"
    out = []
    for i, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        s, e = int(r["start"]), int(r["end"])
        digits = r["text"][s:e]
        if not (0 <= s < e <= len(r["text"])) or digits.replace(",", "") != f"{r['value']:g}":
            raise ValueError(
                f"{f}:{i}: span {(s, e)} covers {digits!r}, not the value {r['value']:g}"
            )
        if kind is None or r["kind"] == kind:
            out.append(NumberSentence(r["text"], float(r["value"]), (s, e), r["kind"],
                                      int(r["template"])))  # fmt: skip
    return out


def write_number_sentences(path: str | Path, sentences: Sequence[NumberSentence]) -> Path:
    """Write sentences as JSONL (the format :func:`load_number_sentences` reads)."""
    p = Path(path)
    with open(p, "w") as fh:
        for s in sentences:
            rec = {"text": s.text, "value": s.value, "start": s.span[0], "end": s.span[1],
                   "kind": s.kind, "template": s.template}  # fmt: skip
            fh.write(json.dumps(rec) + "\n")
    return p
