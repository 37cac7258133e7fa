"""Contrast data for steering vectors: paired examples and labelled sets, loaded and validated.

A **contrast pair file** is JSONL, one object per line, in one of two forms (not mixed):

- ``{"prompt": ..., "positive": ..., "negative": ...}`` — two completions contrasted after a
  shared prompt (CAA / ActAdd style);
- ``{"positive": ..., "negative": ...}`` — two standalone texts (repeng style).

Optional keys ``"id"``, ``"source"`` and ``"meta"`` are kept out of the contrast and ignored;
any other key is an error (a typo such as ``"postive"`` would otherwise drop a field silently).
Blank lines and lines starting with ``#`` are skipped.

A **labelled set** is JSONL ``{"text": ..., "label": 0|1|true|false}`` with an optional
``"prompt"`` (then ``text`` is the completion). Label 1 is the positive side.

Validation raises :class:`PairError` (a ``ValueError``) naming the file and line: an empty
set, a missing or empty field, a non-string value, a pair whose two sides are equal, a
duplicate pair, mixing the two forms, or positive / negative lists of different lengths.

Reading activations of these sets is :mod:`steerlab.steering.pairs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PAIR_KEYS = ("prompt", "positive", "negative")
_IGNORED_KEYS = ("id", "source", "meta")


class PairError(ValueError):
    """Invalid contrast data; the message names the file and the line or index."""


@dataclass(frozen=True)
class ContrastPair:
    """One contrast: ``positive`` vs ``negative``, both after ``prompt`` when it is given."""

    positive: str
    negative: str
    prompt: str | None = None

    def to_dict(self) -> dict[str, str]:
        d = {"positive": self.positive, "negative": self.negative}
        return d if self.prompt is None else {"prompt": self.prompt, **d}


def _fingerprint(records: Iterable[Any]) -> str:
    """First 16 hex digits of a sha256 over the canonical JSON of each record, in order."""
    h = hashlib.sha256()
    for r in records:
        data = json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class PairSet:
    """A validated, non-empty list of contrast pairs (all with a prompt, or none).

    Attributes:
        pairs: the pairs, in file order.
        name: where they came from (a file name, or ``"<memory>"``).
    """

    pairs: tuple[ContrastPair, ...]
    name: str = "<memory>"

    def __post_init__(self) -> None:
        validate_pairs(self.pairs, self.name)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ContrastPair]:
        return iter(self.pairs)

    def __getitem__(self, i: int) -> ContrastPair:
        return self.pairs[i]

    @property
    def has_prompts(self) -> bool:
        """True when every pair contrasts two completions of a shared prompt."""
        return self.pairs[0].prompt is not None

    def fingerprint(self) -> str:
        """A short hash of the pairs (order included): equal fingerprints, equal data."""
        return _fingerprint(p.to_dict() for p in self.pairs)

    def subset(self, index: Sequence[int], name: str | None = None) -> PairSet:
        """The pairs at ``index`` (in that order)."""
        return PairSet(tuple(self.pairs[i] for i in index), name or self.name)

    def split(self, holdout: float, seed: int = 0) -> tuple[PairSet, PairSet]:
        """A seeded random ``(train, test)`` split of whole pairs; ``test`` has
        ``round(holdout · n)`` pairs, at least one, and ``train`` keeps at least one."""
        n = len(self)
        if not 0 < holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {holdout}")
        if n < 2:
            raise PairError(f"{self.name}: a split needs at least 2 pairs, got {n}")
        n_test = min(max(1, round(holdout * n)), n - 1)
        order = list(range(n))
        random.Random(seed).shuffle(order)
        test, train = sorted(order[:n_test]), sorted(order[n_test:])
        return self.subset(train, f"{self.name}[train]"), self.subset(test, f"{self.name}[test]")


def _check_text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise PairError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise PairError(f"{where}: {key!r} is empty")
    return value


def validate_pairs(
    pairs: Sequence[ContrastPair], name: str = "<memory>", where: Sequence[str] | None = None
) -> None:
    """Raise :class:`PairError` unless ``pairs`` is a usable contrast set (see module doc).

    Args:
        pairs: the pairs.
        name: the set's name, for messages.
        where: a location per pair for messages (default ``"<name>: pair <i>"``).
    """
    if len(pairs) == 0:
        raise PairError(f"{name}: no contrast pairs (the set is empty)")
    loc = list(where) if where is not None else [f"{name}: pair {i}" for i in range(len(pairs))]
    with_prompt = pairs[0].prompt is not None
    seen: dict[tuple, int] = {}
    for i, p in enumerate(pairs):
        where_i = loc[i]
        if not isinstance(p, ContrastPair):
            raise PairError(f"{where_i}: expected a ContrastPair, got {type(p).__name__}")
        _check_text(p.positive, "positive", where_i)
        _check_text(p.negative, "negative", where_i)
        if p.prompt is not None:
            _check_text(p.prompt, "prompt", where_i)
        if (p.prompt is not None) != with_prompt:
            raise PairError(
                f"{where_i}: pairs with and without a prompt are mixed; the first "
                f"{'has' if with_prompt else 'has no'} prompt. Use one form per set, or the "
                "read positions would mean different tokens for different pairs"
            )
        if p.positive == p.negative:
            raise PairError(f"{where_i}: positive and negative are the same text")
        key = (p.prompt, p.positive, p.negative)
        if key in seen:
            raise PairError(f"{where_i}: duplicate of {loc[seen[key]].split(': ')[-1]}")
        seen[key] = i


def _pair_from_record(rec: Any, where: str) -> ContrastPair:
    if not isinstance(rec, dict):
        raise PairError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(_PAIR_KEYS) - set(_IGNORED_KEYS))
    if unknown:
        raise PairError(
            f"{where}: unknown key(s) {unknown}; a pair has 'positive', 'negative' and an "
            f"optional 'prompt' (ignored: {list(_IGNORED_KEYS)})"
        )
    missing = [k for k in ("positive", "negative") if k not in rec]
    if missing:
        raise PairError(f"{where}: unbalanced pair, missing {missing}")
    prompt = rec.get("prompt")
    return ContrastPair(
        _check_text(rec["positive"], "positive", where),
        _check_text(rec["negative"], "negative", where),
        None if prompt is None else _check_text(prompt, "prompt", where),
    )


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                out.append((lineno, json.loads(s)))
            except json.JSONDecodeError as e:
                raise PairError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return out


def load_pairs(path: str | os.PathLike) -> PairSet:
    """Read and validate a contrast pair file (JSONL; see the module docstring)."""
    path = Path(path)
    rows = _read_jsonl(path)
    if not rows:
        raise PairError(f"{path}: no contrast pairs (the file has no records)")
    where = [f"{path}:{lineno}" for lineno, _ in rows]
    pairs = [_pair_from_record(rec, w) for w, (_, rec) in zip(where, rows)]
    validate_pairs(pairs, str(path), where)  # messages name the file's lines
    return PairSet(tuple(pairs), str(path))


def make_pairs(
    positive: Sequence[str],
    negative: Sequence[str],
    prompts: Sequence[str] | None = None,
    name: str = "<memory>",
) -> PairSet:
    """Pair up two equally long lists of texts (and optional shared prompts)."""
    if len(positive) != len(negative):
        raise PairError(
            f"{name}: unbalanced pairs: {len(positive)} positive vs {len(negative)} negative texts"
        )
    if prompts is not None and len(prompts) != len(positive):
        raise PairError(f"{name}: {len(prompts)} prompts for {len(positive)} pairs")
    ps = [None] * len(positive) if prompts is None else list(prompts)
    return PairSet(tuple(ContrastPair(p, n, q) for p, n, q in zip(positive, negative, ps)), name)


def as_pairs(data: Any) -> PairSet:
    """A :class:`PairSet` from a PairSet, a JSONL path, or a list of pairs / dicts."""
    if isinstance(data, PairSet):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_pairs(data)
    if isinstance(data, Iterable):
        items = list(data)
        pairs = [
            p if isinstance(p, ContrastPair) else _pair_from_record(p, f"<memory>: pair {i}")
            for i, p in enumerate(items)
        ]
        return PairSet(tuple(pairs))
    raise TypeError(f"expected contrast pairs (PairSet, path or list), got {type(data).__name__}")


@dataclass(frozen=True)
class LabelledSet:
    """Texts with binary labels (1 = positive side), each optionally after a prompt.

    Attributes:
        texts: the texts (completions when ``prompts`` is given).
        labels: 0 or 1 per text; both classes must occur.
        prompts: one prompt per text, or None.
        name: where they came from.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    prompts: tuple[str, ...] | None = None
    name: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.texts)
        if n == 0:
            raise PairError(f"{self.name}: no labelled texts (the set is empty)")
        if len(self.labels) != n:
            raise PairError(f"{self.name}: {n} texts but {len(self.labels)} labels")
        if self.prompts is not None and len(self.prompts) != n:
            raise PairError(f"{self.name}: {n} texts but {len(self.prompts)} prompts")
        for i, t in enumerate(self.texts):
            _check_text(t, "text", f"{self.name}: item {i}")
            if self.prompts is not None:
                _check_text(self.prompts[i], "prompt", f"{self.name}: item {i}")
        bad = [y for y in self.labels if y not in (0, 1)]
        if bad:
            raise PairError(f"{self.name}: labels must be 0/1 (or false/true), got {bad[0]!r}")
        if len(set(self.labels)) < 2:
            raise PairError(f"{self.name}: all texts have label {self.labels[0]}; need both")
        keys = list(zip(self.prompts or [None] * n, self.texts))
        if len(set(keys)) != n:
            first = next(i for i, k in enumerate(keys) if keys.index(k) != i)
            raise PairError(f"{self.name}: item {first} duplicates item {keys.index(keys[first])}")

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """A short hash of the texts, labels and prompts (order included)."""
        ps = self.prompts or [None] * len(self)
        return _fingerprint(
            {"text": t, "label": y, "prompt": p} for t, y, p in zip(self.texts, self.labels, ps)
        )


def load_labelled(path: str | os.PathLike) -> LabelledSet:
    """Read a labelled set: JSONL ``{"text", "label"}`` with an optional ``"prompt"``."""
    path = Path(path)
    rows = _read_jsonl(path)
    texts, labels, prompts = [], [], []
    for lineno, rec in rows:
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict) or "text" not in rec or "label" not in rec:
            raise PairError(f"{where}: expected an object with 'text' and 'label'")
        label = rec["label"]
        if isinstance(label, bool):
            label = int(label)
        texts.append(_check_text(rec["text"], "text", where))
        labels.append(label)
        prompts.append(rec.get("prompt"))
    has_prompt = [p is not None for p in prompts]
    if any(has_prompt) and not all(has_prompt):
        raise PairError(f"{path}: some items have a prompt and some do not; use one form")
    return LabelledSet(
        tuple(texts), tuple(labels), tuple(prompts) if all(has_prompt) and prompts else None,
        str(path),
    )  # fmt: skip


def load_prompts(path: str | os.PathLike) -> list[str]:
    """Read evaluation prompts: JSONL ``{"prompt": ...}`` (or plain strings), unique, non-empty."""
    path = Path(path)
    out: list[str] = []
    seen: dict[str, int] = {}
    for lineno, rec in _read_jsonl(path):
        where = f"{path}:{lineno}"
        text = rec.get("prompt") if isinstance(rec, dict) else rec
        text = _check_text(text, "prompt", where)
        if text in seen:
            raise PairError(f"{where}: duplicate of line {seen[text]}")
        seen[text] = lineno
        out.append(text)
    if not out:
        raise PairError(f"{path}: no prompts")
    return out
