"""Numeric attributes for PLS probes: data, the factual-recall filter, comparison prompts.

Three data sets, after El-Shangiti et al. (NAACL 2025) and Heinzerling & Inui (EACL 2024):

- **numbers in text** (:func:`year_sentences`, ``data/numeric/numbers_in_text.jsonl``):
  templated sentences that mention a year or a quantity, with the value as target and its
  character span (the span's last token is the row to probe);
- **entities with numeric attributes** (:data:`ATTRIBUTES`, ``data/numeric/*.csv``): birth
  years of famous people, populations of countries, atomic numbers of elements, curated from
  general knowledge (Wikipedia values). :func:`recall_check` keeps the entities whose value
  the model completes within a tolerance (greedy decoding of e.g. "Albert Einstein was born
  in the year");
- **comparisons** (:func:`comparison_prompts`): "Was X born before Y? Answer:" pairs built from
  the kept entities; the model's answer is the sign of ``logit(" Yes") − logit(" No")``
  (:func:`yes_no_margin`). SmolLM2-135M answers these at chance, so
  :func:`year_comparisons` adds the comparison it does: "Which year is later, X or Y?" with
  both years in the prompt, read out at the answer's digit (:func:`comparison_margins`).

The causal test (:func:`flip_experiment`, :func:`set_value_experiment`) moves the first
entity's last-token representation along the first PLS direction by ``α`` (or sets its PLS
coordinates to those of a target value) with :mod:`steerlab.steering` interventions, and counts
the comparison answers that flip, against random directions of the same norm.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "steered_greedy",
    "value_shift_experiment",
    "ATTRIBUTES",
    "Attribute",
    "Comparison",
    "Entities",
    "NumberSentence",
    "RecallResult",
    "YEAR_IN_CONTEXT",
    "answer_margins",
    "comparison_margins",
    "comparison_prompts",
    "year_comparisons",
    "flip_experiment",
    "set_value_experiment",
    "steered_margins",
    "data_dir",
    "load_entities",
    "load_number_sentences",
    "number_sentences",
    "parse_number",
    "recall_check",
    "recall_records",
    "score_completions",
    "wilson_interval",
    "yes_no_margin",
]


def data_dir() -> Path:
    """``data/numeric`` of the steerlab checkout (the curated CSV and JSONL files)."""
    return Path(__file__).resolve().parents[2] / "data" / "numeric"


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
    f = Path(path) if path is not None else data_dir() / spec.file
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


@torch.no_grad()
def greedy_complete(
    handle: Any, prompts: Sequence[str], *, max_new_tokens: int = 8, batch_size: int = 16
) -> list[str]:
    """Greedy continuations of ``prompts`` (batched with left padding; the handle's BOS rule)."""
    tok = handle.tokenizer
    out: list[str] = []
    side = tok.padding_side
    try:
        tok.padding_side = "left"
        for i in range(0, len(prompts), batch_size):
            batch = list(prompts[i : i + batch_size])
            if handle.add_bos:
                batch = [tok.bos_token + p for p in batch]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(handle.device) for k, v in enc.items()}
            gen = handle.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tok.pad_token_id)  # fmt: skip
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = side
    return out


def recall_check(
    handle: Any,
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
    handle: Any,
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
    digit = {d: _single_token(handle, d) for d in "0123456789"}
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


@torch.no_grad()
def answer_margins(
    handle: Any,
    prompts: Sequence[str],
    pos_ids: Sequence[int] | Tensor,
    neg_ids: Sequence[int] | Tensor,
    *,
    batch_size: int = 32,
) -> Tensor:
    """``logit(pos_i) − logit(neg_i)`` at the last token of prompt ``i``: ``[n]`` float32.

    Prompts are right-padded and tokenised like every steerlab capture, so interventions that
    use :func:`steerlab.steering.positions.spans` on the same texts line up with them.
    """
    from steerlab.capture.positions import encode_texts

    pos = torch.as_tensor(pos_ids, dtype=torch.long).reshape(-1)
    neg = torch.as_tensor(neg_ids, dtype=torch.long).reshape(-1)
    if not len(pos) == len(neg) == len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(pos)} / {len(neg)} answer ids")
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = encode_texts(handle, list(prompts[i : i + batch_size]))
        am = enc.attention_mask.to(handle.device)
        logits = handle.model(input_ids=enc.input_ids.to(handle.device), attention_mask=am).logits
        rows = torch.arange(am.shape[0], device=am.device)
        lg = logits[rows, am.sum(1) - 1].float().cpu()
        r = torch.arange(lg.shape[0])
        out.append(lg[r, pos[i : i + batch_size]] - lg[r, neg[i : i + batch_size]])
    return torch.cat(out)


def _single_token(handle: Any, word: str) -> int:
    ids = handle.tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the answer {word!r} must be one token, got {ids}")
    return ids[0]


def yes_no_margin(
    handle: Any, prompts: Sequence[str], *, batch_size: int = 32, yes: str = " Yes", no: str = " No"
) -> Tensor:
    """``logit(yes) − logit(no)`` at the last prompt token: ``[n]`` (> 0 means the model says Yes).

    :func:`answer_margins` with the same two answer tokens for every prompt.
    """
    y, n = _single_token(handle, yes), _single_token(handle, no)
    k = len(prompts)
    return answer_margins(handle, prompts, [y] * k, [n] * k, batch_size=batch_size)


def comparison_margins(
    handle: Any, comparisons: Sequence[Comparison], *, batch_size: int = 32
) -> Tensor:
    """The answer margin of each comparison: ``logit(positive) − logit(negative)`` with its
    :attr:`Comparison.answer_ids` (``" Yes"``/``" No"`` where unset)."""
    yn = None
    if any(c.answer_ids is None for c in comparisons):
        yn = (_single_token(handle, " Yes"), _single_token(handle, " No"))
    ids = [c.answer_ids or yn for c in comparisons]
    return answer_margins(handle, [c.text for c in comparisons], [i[0] for i in ids],
                          [i[1] for i in ids], batch_size=batch_size)  # fmt: skip


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k/n`` (95% for ``z = 1.96``)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


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
    f = Path(path) if path is not None else data_dir() / "numbers_in_text.jsonl"
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


# --- the causal test ----------------------------------------------------------------------------


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
    handle: Any,
    comparisons: Sequence[Comparison],
    make: Callable[[Any], Any],
    *,
    batch_size: int = 32,
) -> Tensor:
    """Answer margins (:func:`comparison_margins`) with an intervention at the last token of
    entity ``a`` of each prompt.

    ``make(positions)`` builds the intervention(s) for one batch, given the
    :func:`steerlab.steering.positions.spans` rule of that batch (per-example prompt ranks
    only hold for a batch of exactly those texts, so the rule is rebuilt per batch).
    """
    from steerlab.steering import spans, steer

    out = []
    for i in range(0, len(comparisons), batch_size):
        chunk = comparisons[i : i + batch_size]
        texts = [c.text for c in chunk]
        pos = spans(handle, texts, [c.span_a for c in chunk], "last")
        with steer(handle, make(pos)):
            out.append(comparison_margins(handle, chunk, batch_size=len(chunk)))
    return torch.cat(out)


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
    handle: Any,
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
    batch_size: int = 32,
) -> FlipExperiment:
    """Move entity ``a``'s last-token representation along ``direction`` by ``α·unit`` and count
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
        batch_size: prompts per forward.
    """
    from steerlab.steering import AddVector

    site = f"{kind}.{layer}"
    u = direction.detach().double().cpu()
    u = u / torch.linalg.vector_norm(u)
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    g = torch.Generator().manual_seed(seed)
    randoms = [torch.randn(u.shape[0], generator=g, dtype=torch.float64) for _ in range(n_random)]
    m0 = comparison_margins(handle, comparisons, batch_size=batch_size)
    truth = torch.tensor([c.yes for c in comparisons])
    rows = []
    for alpha in alphas:
        # raising a's value makes "a < b" less likely: Yes gets less likely iff yes_if_less
        up = (alpha > 0) == increases_value
        toward_yes = torch.full_like(truth, up != yes_if_less)
        for name, vecs in (("pls", [u]), ("random", randoms)):
            if not vecs:  # n_random=0: the PLS rows only
                continue
            ms = []
            for v in vecs:

                def make(pos, v=v):
                    return AddVector(v.float(), alpha * unit, site, pos)

                ms.append(steered_margins(handle, comparisons, make, batch_size=batch_size))
            m = torch.cat(ms)
            rows.append(_flip_row(name, float(alpha), m0.repeat(len(vecs)), m,
                                  toward_yes.repeat(len(vecs))))  # fmt: skip
    acc = float(((m0 > 0) == truth).double().mean())
    return FlipExperiment(rows, m0, acc)


@torch.no_grad()
def steered_greedy(
    handle: Any,
    prompts: Sequence[str],
    char_spans: Sequence[tuple[int, int]],
    make: Callable[[Any], Any] | None,
    *,
    max_new_tokens: int = 5,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations with an edit at the last token of a character span of each prompt.

    Each step re-runs the whole (prompt + continuation so far) without a KV cache, so the span
    rule of :func:`steerlab.steering.positions.spans` stays valid: appending text never moves
    the span's tokens. ``make(positions)`` builds the intervention(s); ``None`` runs unsteered.
    Slower than cached generation, and exact for any position rule.
    """
    from steerlab.capture.positions import encode_texts
    from steerlab.steering import spans, steer

    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        base = list(prompts[i : i + batch_size])
        sp = list(char_spans[i : i + batch_size])
        ids: list[list[int]] = [[] for _ in base]
        for _ in range(max_new_tokens):
            texts = [b + handle.tokenizer.decode(t) for b, t in zip(base, ids)]
            enc = encode_texts(handle, texts)
            am = enc.attention_mask.to(handle.device)
            ivs = [] if make is None else make(spans(handle, texts, sp, "last"))
            with steer(handle, ivs):
                logits = handle.model(input_ids=enc.input_ids.to(handle.device),
                                      attention_mask=am).logits  # fmt: skip
            last = am.sum(1) - 1
            nxt = logits[torch.arange(len(texts)), last].argmax(-1).tolist()
            for row, t in zip(ids, nxt):
                row.append(t)
        out.extend(handle.tokenizer.decode(t) for t in ids)
    return out


def value_shift_experiment(
    handle: Any,
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
    from steerlab.steering import AddVector

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
    handle: Any,
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
    from steerlab.steering import SetCoords

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
    out = []
    for i in range(0, len(comparisons), batch_size):
        chunk = comparisons[i : i + batch_size]
        cc = coords[i : i + batch_size]

        def make(pos, cc=cc):
            # one SetCoords per example (each has its own target), applied per example
            return [[SetCoords(sub.to(dtype=torch.float32), c, site, pos)] for c in cc]

        from steerlab.steering import spans, steer

        texts = [c.text for c in chunk]
        pos = spans(handle, texts, [c.span_a for c in chunk], "last")
        with steer(handle, make(pos), per_example=True):
            out.append(comparison_margins(handle, chunk, batch_size=len(chunk)))
    m = torch.cat(out)
    n = len(comparisons)
    before = int(((m0 > 0) == implied_yes).sum())
    after = int(((m > 0) == implied_yes).sum())
    return {
        "offset": offset, "n": n, "k": sub.k,
        "agree_before": before, "agree_after": after,
        "before_ci": wilson_interval(before, n), "after_ci": wilson_interval(after, n),
    }  # fmt: skip
