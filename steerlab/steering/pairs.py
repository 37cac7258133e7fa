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

**Reading activations** (:func:`read_examples`, :func:`read_pairs`). Each example is tokenised
as prompt tokens (the chat template applied when ``chat=True``; a BOS token first when the
handle adds one) followed by completion tokens, tokenised separately so that the
prompt/completion boundary is exact (without the chat template a space joins them when neither
side has one). The read rule is a :mod:`steerlab.steering.positions` rule, the same vocabulary
that says where an intervention applies, resolved by
:func:`steerlab.steering.positions.select` with ``L_b`` = the prompt length: ``"generation"``
(every completion token; the default for pairs with a prompt), ``"last"`` (the last prompt
token; the default for standalone texts), ``"prompt"``, ``"generation:first_4"``, ... An
example's activation is the mean over its selected tokens (each example weighs the same); a BOS
token that steerlab prepends is never read. Every requested layer is read in the same forward
pass (:func:`steerlab.capture.capture`, which stops after the last one).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.sites import SiteError, parse_sites
from steerlab.steering.positions import Positions, as_positions, select

__all__ = [
    "ContrastPair",
    "Examples",
    "PairActivations",
    "LabelledSet",
    "PairError",
    "PairSet",
    "as_pairs",
    "load_labelled",
    "load_pairs",
    "load_prompts",
    "make_pairs",
    "read_examples",
    "read_pairs",
    "validate_pairs",
]

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


# --------------------------------------------------------------------------- reading activations


def _read_rule(rule: str | Positions) -> Positions:
    pos = as_positions(rule)
    if pos.tokens in ("scored", "indices"):
        raise ValueError(
            f"read rule {str(pos)!r} cannot read a steering vector: 'scored' needs a basis "
            "before there is one, and 'indices' names tokens of one particular batch"
        )
    return pos


class Examples(NamedTuple):
    """Per-example activations at several layers of one site kind.

    Attributes:
        acts: ``[n, layer, d]`` float64 mean over each example's read tokens.
        norms: ``[n, layer]`` float64 mean ‖h‖ over the same tokens.
        n_tokens: ``[n]`` how many tokens each example contributed.
    """

    acts: Float[Tensor, "n layer d"]
    norms: Float[Tensor, "n layer"]
    n_tokens: Tensor


class PairActivations(NamedTuple):
    """Activations of the two sides of contrast pairs (row ``i`` of both is pair ``i``).

    Attributes:
        pos: ``[n, layer, d]`` positive side.
        neg: ``[n, layer, d]`` negative side.
        pos_norms: ``[n, layer]`` mean ‖h‖ of the positive side's read tokens.
        neg_norms: ``[n, layer]`` same for the negative side.
    """

    pos: Float[Tensor, "n layer d"]
    neg: Float[Tensor, "n layer d"]
    pos_norms: Float[Tensor, "n layer"]
    neg_norms: Float[Tensor, "n layer"]


def _encode(handle: Any, prompt: str | None, text: str, chat: bool) -> tuple[list[int], int]:
    """Token ids and prompt length of one example (see the module docstring)."""
    tok = handle.tokenizer
    if prompt is None:
        head, tail = (handle.chat(text) if chat else text), None
    else:
        head, tail = (handle.chat(prompt) if chat else prompt), text
        if not chat and not head[-1].isspace() and not tail[0].isspace():
            tail = " " + tail  # plain text: keep the prompt and the completion two words
    ids = list(tok(head, add_special_tokens=False)["input_ids"])
    if handle.add_bos and (not ids or ids[0] != tok.bos_token_id):
        ids = [tok.bos_token_id, *ids]
    plen = len(ids)
    if tail is not None:
        ids += list(tok(tail, add_special_tokens=False)["input_ids"])
    return ids, plen


def read_examples(
    handle: Any,
    texts: Sequence[str],
    sites: str | Sequence[str],
    *,
    prompts: Sequence[str] | None = None,
    positions: str | Positions = "last",
    chat: bool = False,
    batch_size: int = 32,
    names: Sequence[str] | None = None,
) -> Examples:
    """Read every example's mean activation at ``sites`` (one kind, several layers) in one pass.

    Args:
        handle: the model.
        texts: completions (with ``prompts``) or standalone texts.
        sites: site names of one kind, e.g. ``"resid_post.4,resid_post.8"``.
        prompts: one prompt per text, or None.
        positions: the read rule.
        chat: apply the chat template to the prompt (or the standalone text).
        batch_size: sequences per forward pass.
        names: what to call each example in error messages (default ``"example <i>"``).
    """
    from steerlab.capture import capture
    from steerlab.capture.positions import model_context

    site_list = _one_kind(sites, handle.n_layers)
    rule = _read_rule(positions)
    if len(texts) == 0:
        raise ValueError("no texts to read")
    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    name = (lambda i: names[i]) if names is not None else (lambda i: f"example {i}")
    encoded = [
        _encode(handle, None if prompts is None else prompts[i], t, chat)
        for i, t in enumerate(texts)
    ]
    for i, (ids, _) in enumerate(encoded):
        if not ids:
            raise ValueError(f"{name(i)} tokenises to no tokens")
    limit = model_context(handle)
    too_long = [i for i, (ids, _) in enumerate(encoded) if len(ids) > limit]
    if too_long:
        raise ValueError(f"{name(too_long[0])} has more than {limit} tokens (the context)")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # less padding
    n, T = len(encoded), max(len(ids) for ids, _ in encoded)
    pad = handle.tokenizer.pad_token_id
    input_ids = torch.full((n, T), pad, dtype=torch.long)
    attn = torch.zeros(n, T, dtype=torch.long)
    plen = torch.zeros(n, dtype=torch.long)
    for row, i in enumerate(order):
        ids, p = encoded[i]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attn[row, : len(ids)] = 1
        plen[row] = p
    mask = select(rule, input_ids, attn, plen)
    if handle.add_bos:  # right padding: the BOS steerlab prepends is column 0
        mask[:, 0] &= input_ids[:, 0] != handle.tokenizer.bos_token_id
    empty = (~mask.any(1)).nonzero().flatten()
    if len(empty):
        i = min(order[int(r)] for r in empty)
        raise ValueError(
            f"read rule {str(rule)!r} selects no token of {name(i)}"
            + (
                " (it has no completion tokens; standalone texts are all prompt: read them "
                "with 'last' or 'prompt')"
                if encoded[i][1] == len(encoded[i][0])
                else ""
            )
        )
    cap = capture(handle, input_ids, [s.name for s in site_list], positions=mask,
                  attention_mask=attn, batch_size=batch_size)  # fmt: skip
    rows = torch.as_tensor(order)[cap.doc_ids]  # back to the caller's order
    count = torch.bincount(rows, minlength=n).double()
    d = cap.acts[site_list[0].name].shape[-1]
    acts = torch.zeros(n, len(site_list), d, dtype=torch.float64)
    norms = torch.zeros(n, len(site_list), dtype=torch.float64)
    for j, s in enumerate(site_list):
        a = cap.acts[s.name].double()
        acts[:, j].index_add_(0, rows, a)
        norms[:, j].index_add_(0, rows, torch.linalg.vector_norm(a, dim=-1))
    return Examples(acts / count[:, None, None], norms / count[:, None], count.long())


def read_pairs(
    handle: Any,
    pairs: Any,
    sites: str | Sequence[str],
    *,
    positions: str | Positions | None = None,
    chat: bool = False,
    batch_size: int = 16,
) -> PairActivations:
    """Read both sides of contrast pairs at ``sites`` (every layer in the same forward pass).

    Args:
        handle: the model.
        pairs: a :class:`~steerlab.steering.pairs.PairSet`, a JSONL path or a list of pairs.
        sites: site names of one kind.
        positions: the read rule; None picks the default (see :class:`VectorConfig`).
        chat: apply the chat template.
        batch_size: pairs per forward pass.
    """
    return _concat(_iter_pairs(handle, as_pairs(pairs), sites, positions, chat, batch_size))


def _default_rule(pairs: PairSet | LabelledSet) -> str:
    has_prompts = pairs.has_prompts if isinstance(pairs, PairSet) else pairs.prompts is not None
    return "generation" if has_prompts else "last"


def _iter_pairs(
    handle: Any, pairs: PairSet, sites: Any, positions: Any, chat: bool, batch_size: int
) -> Iterator[PairActivations]:
    rule = positions if positions is not None else _default_rule(pairs)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs.pairs[start : start + batch_size]
        texts = [p.positive for p in chunk] + [p.negative for p in chunk]
        prompts = None if chunk[0].prompt is None else [p.prompt for p in chunk] * 2
        names = [f"pair {start + i} ({side})" for side in ("positive", "negative")
                 for i in range(len(chunk))]  # fmt: skip
        ex = read_examples(handle, texts, sites, prompts=prompts, positions=rule, chat=chat,
                           batch_size=2 * batch_size, names=names)  # fmt: skip
        k = len(chunk)
        yield PairActivations(ex.acts[:k], ex.acts[k:], ex.norms[:k], ex.norms[k:])


def _concat(parts: Iterator[PairActivations]) -> PairActivations:
    items = list(parts)
    return PairActivations(
        *(torch.cat([getattr(p, f) for p in items]) for f in PairActivations._fields)
    )


def _one_kind(sites: Any, n_layers: int | None) -> list:
    """Parse sites of one kind; bare layer numbers mean ``resid_post``."""
    if isinstance(sites, int):
        sites = [sites]
    if not isinstance(sites, str):
        sites = [f"resid_post.{s}" if isinstance(s, int) else s for s in sites]
    site_list = parse_sites(sites, n_layers)
    kinds = {s.kind for s in site_list}
    if len(kinds) != 1:
        raise SiteError(f"a steering vector lives at one site kind per layer, got {sorted(kinds)}")
    return site_list
