"""Text corpora and token packing.

Two corpora ship with CPython, so every machine that runs steerlab has them offline:

- ``"prose"``: the documents of :mod:`pydoc_data.topics` (about 465k characters of English),
  then the standard library's long docstrings (about 3.5M more characters);
- ``"code"``: the standard library's own ``.py`` files (about 12 MB).

:func:`load_texts` also reads local files and, for users with the hub, any Hugging Face
``datasets`` id. :func:`chunk_tokens` packs texts into fixed-length token windows, the input of
every capture, and fingerprints them so that an artifact can record exactly which tokens it saw.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from steerlab.io import atomic_write_text

logger = logging.getLogger(__name__)

NAMED_CORPORA = ("prose", "code")
"""Corpora that :func:`load_texts` knows by name; join them with ``+`` (``"prose+code"``) to
interleave their documents."""

TEXT_SUFFIXES = (".txt", ".md", ".py")
"""Suffixes read as one document each, alone or inside a directory."""

CONTEXT_OPEN, CONTEXT_CLOSE = "\u27e6", "\u27e7"
"""Marks (``⟦`` ``⟧``) around the token inside the contexts from :func:`token_contexts`."""

# Directory names skipped when walking the standard library: installed packages, the test
# suites (``test``, ``tests``, ``idlelib/idle_test``) and with them the lib2to3 fixtures under
# ``lib2to3/tests/data``, some of which are deliberately broken or not UTF-8.
_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)

# A hub id is ``name`` or ``owner/name`` made of word characters, dots and dashes.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------- corpora


def prose_corpus(docstrings: bool = True) -> list[str]:
    """English prose that ships with CPython.

    First the documents of :mod:`pydoc_data.topics` (the language reference, ~465k characters,
    ~113k SmolLM2 tokens), then, with ``docstrings=True``, the docstrings of the standard
    library's modules, classes and functions that are at least 200 characters long (English
    prose about the library, ~3.5M characters), in :func:`code_files` order. The second part
    lets a capture of 200k+ prose tokens run offline.

    Returns:
        The documents, stripped, empty ones dropped; deterministic for a given Python build.
    """
    from pydoc_data.topics import topics

    docs = [d for d in (topics[key].strip() for key in sorted(topics)) if d]
    if docstrings:
        docs.extend(_cached_docstrings())
    return docs


def _cached_docstrings() -> list[str]:
    """The stdlib docstrings, extracted once per Python build and cached as JSON.

    Parsing the whole standard library takes ~5-20 s; the JSON cache (under
    ``$STEERLAB_CACHE/corpora``) loads in well under a second.
    """
    import platform
    import sys

    from steerlab.models import cache_dir

    key = hashlib.sha256(f"{sys.version}|{stdlib_dir()}|{platform.platform()}".encode())
    path = cache_dir() / "corpora" / f"stdlib-docstrings-{key.hexdigest()[:12]}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("ignoring a corrupt corpus cache %s", path)
    docs = list(_stdlib_docstrings())
    atomic_write_text(path, json.dumps(docs))  # concurrent builders each rename a whole file
    return docs


def _stdlib_docstrings(min_chars: int = 200) -> Iterator[str]:
    """Long docstrings of the standard library, lazily, in file order."""
    import ast
    import warnings

    for path in code_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(path.read_text(encoding="utf-8-sig"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    yield doc.strip()


def stdlib_dir() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def code_files(max_files: int | None = None) -> list[Path]:
    """The standard library's own ``.py`` files, sorted by their path relative to the stdlib.

    Installed packages (``site-packages``), test suites (``test``, ``tests``,
    ``idlelib/idle_test``) and the lib2to3 fixtures inside them are excluded.

    Args:
        max_files: keep only the first ``max_files`` files of the sorted list.

    Returns:
        Absolute paths.
    """
    root = stdlib_dir()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    # Sort by path components, so a package's files stay together whatever characters follow.
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found if max_files is None else found[:max_files]


def code_corpus(max_files: int | None = None) -> list[str]:
    """The source text of the standard library's ``.py`` files (see :func:`code_files`).

    Files that are not valid UTF-8 are skipped (their number is logged at debug level), and so
    are files holding only whitespace (empty ``__init__.py``).

    Args:
        max_files: stop after this many documents.

    Returns:
        One document per file, in :func:`code_files` order.
    """
    docs: list[str] = []
    n_undecodable = 0
    for path in code_files():
        if max_files is not None and len(docs) >= max_files:
            break
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            n_undecodable += 1
            continue
        if text.strip():
            docs.append(text)
    logger.debug(
        "code corpus: %d documents, %d undecodable files skipped", len(docs), n_undecodable
    )
    return docs


def load_texts(
    source: str | os.PathLike,
    *,
    split: str = "train",
    text_field: str = "text",
    max_docs: int | None = None,
) -> list[str]:
    """Load documents by corpus name, local path or Hugging Face ``datasets`` id.

    Args:
        source: ``"prose"`` or ``"code"`` (see :data:`NAMED_CORPORA`), or both interleaved
            (``"prose+code"``, see :func:`interleave`); a local ``.txt``,
            ``.md`` or ``.py`` file (one document); a directory (every ``.txt``/``.md``/``.py``
            file under it, sorted by relative path, one document each); a ``.jsonl`` file (one
            document per non-blank line, from ``text_field``); otherwise a hub id such as
            ``"owner/name"``, loaded with ``datasets.load_dataset`` (streamed when ``max_docs``
            is given, so that a few documents do not download a whole dataset).
        split: dataset split, for hub ids.
        text_field: the field that holds the text, for ``.jsonl`` files and hub ids.
        max_docs: keep at most this many documents.

    Returns:
        The documents.

    Raises:
        FileNotFoundError: ``source`` looks like a path (absolute, relative with ``./``, a known
            suffix, a backslash or several ``/``) but does not exist.
        ImportError: a hub id was given and ``datasets`` is not installed.
        ValueError: a record lacks ``text_field`` or its value is not a string.
    """
    if max_docs is not None and max_docs < 0:
        raise ValueError(f"max_docs must be >= 0, got {max_docs}")
    name = os.fspath(source)
    if name == "prose":
        return prose_corpus()[:max_docs]
    if name == "code":
        return code_corpus(max_files=max_docs)
    if "+" in name and all(part in NAMED_CORPORA for part in name.split("+")):
        return interleave([load_texts(part) for part in name.split("+")])[:max_docs]
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path, text_field, max_docs)
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"no such file or directory: {name!r}. A source is one of the named corpora "
            f"{', '.join(map(repr, NAMED_CORPORA))}, an existing .txt/.md/.py/.jsonl file or "
            "directory, or a Hugging Face datasets id such as 'owner/name'."
        )
    return _load_hub(name, split, text_field, max_docs)


def interleave(corpora: Sequence[Sequence[str]]) -> list[str]:
    """Documents taken in turn from each corpus (round robin), then the longer ones' rest.

    A token budget over the result (:func:`chunk_tokens`) then draws from every corpus, which
    is how ``"prose+code"`` gives an SAE several million distinct tokens of mixed text: the
    offline prose alone has about 450k.
    """
    if not corpora:
        raise ValueError("interleave needs at least one corpus")
    out: list[str] = []
    for i in range(max(len(c) for c in corpora)):
        out.extend(c[i] for c in corpora if i < len(c))
    return out


def _looks_like_path(name: str) -> bool:
    suffix = Path(name).suffix.lower()
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or suffix in (*TEXT_SUFFIXES, ".jsonl", ".json", ".csv")
        or not _HUB_ID.match(name)
    )


def _load_local(path: Path, text_field: str, max_docs: int | None) -> list[str]:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES]
        files.sort(key=lambda p: p.relative_to(path).parts)
        return [p.read_text(encoding="utf-8") for p in files[:max_docs]]
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [path.read_text(encoding="utf-8")][:max_docs]
    if suffix == ".jsonl":
        docs: list[str] = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if max_docs is not None and len(docs) >= max_docs:
                    break
                if line.strip():
                    docs.append(_text_of(json.loads(line), text_field, f"{path}:{lineno}"))
        return docs
    raise ValueError(
        f"{path}: unsupported file type {suffix!r}; expected one of "
        f"{', '.join((*TEXT_SUFFIXES, '.jsonl'))} or a directory"
    )


def _load_hub(name: str, split: str, text_field: str, max_docs: int | None) -> list[str]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"{name!r} is not a named corpus ({', '.join(NAMED_CORPORA)}) nor a local path, so it "
            "is read as a Hugging Face dataset id, which needs `pip install datasets`"
        ) from e
    dataset = datasets.load_dataset(name, split=split, streaming=max_docs is not None)
    rows = dataset if max_docs is None else itertools.islice(dataset, max_docs)
    return [_text_of(row, text_field, f"{name}[{split}] row {i}") for i, row in enumerate(rows)]


def _text_of(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: no field {text_field!r} (found {keys}); pass text_field=")
    text = record[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, not str")
    return text


def corpus_fingerprint(texts: Iterable[str]) -> str:
    """A short hash of a list of documents (order and boundaries included).

    Returns:
        The first 16 hex digits of a sha256 over the length-prefixed UTF-8 documents.
    """
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- token packing


class TokenChunks(NamedTuple):
    """Texts packed into fixed-length token windows by :func:`chunk_tokens`."""

    input_ids: Int[Tensor, "batch pos"]
    """Token ids, int64."""
    doc_ids: Int[Tensor, "batch pos"]
    """Index into ``texts`` of the document each token came from; -1 for separators and BOS."""
    fingerprint: str
    """First 16 hex digits of a sha256 over the ids, the doc ids and the packing settings."""


def chunk_tokens(
    tokenizer: Any,
    texts: Iterable[str],
    *,
    seq_len: int = 128,
    n_tokens: int | None = None,
    separator_id: int | None = None,
    prepend_bos: bool = False,
) -> TokenChunks:
    """Pack documents into consecutive windows of ``seq_len`` tokens.

    Each text is tokenized without special tokens; the token streams are concatenated with
    ``separator_id`` between consecutive documents (texts that give no tokens are skipped) and
    cut into consecutive windows; the final partial window is dropped. Documents are tokenized
    lazily, in batches that double in size from one document, so asking for a few thousand
    tokens of a large corpus (or of a generator) tokenizes only its first documents.

    Args:
        tokenizer: any Hugging Face tokenizer.
        texts: the documents (a list or any iterable; consumed once).
        seq_len: tokens per window, BOS included.
        n_tokens: stop after ``ceil(n_tokens / seq_len)`` windows. If the texts run out first,
            all full windows are returned and a warning is logged.
        separator_id: token placed between documents; defaults to ``tokenizer.eos_token_id``.
        prepend_bos: make each window ``[bos] + seq_len - 1`` tokens of the stream, with
            ``bos = tokenizer.bos_token_id``.

    Returns:
        :class:`TokenChunks` with ``input_ids`` and ``doc_ids`` of shape ``[n_seq, seq_len]``.

    Raises:
        ValueError: ``seq_len < 2``; ``n_tokens < 1``; no texts; texts too short for one window;
            no separator or BOS id available.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of documents, not a single str")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if n_tokens is not None and n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    sep = tokenizer.eos_token_id if separator_id is None else separator_id
    if sep is None:
        raise ValueError("the tokenizer has no eos_token_id; pass separator_id=")
    bos = tokenizer.bos_token_id if prepend_bos else None
    if prepend_bos and bos is None:
        raise ValueError("prepend_bos=True but the tokenizer has no bos_token_id")
    body = seq_len - 1 if prepend_bos else seq_len
    n_seq_wanted = None if n_tokens is None else math.ceil(n_tokens / seq_len)
    stream_wanted = None if n_seq_wanted is None else n_seq_wanted * body

    id_parts: list[Tensor] = []
    doc_parts: list[Tensor] = []
    length = n_docs = 0
    # With a budget, batches stay small so that little is tokenized beyond it.
    max_batch = 64 if stream_wanted is None else 8
    for doc_index, ids in _tokenized(tokenizer, texts, max_batch):
        n_docs += 1
        if not ids:
            continue
        if length:
            id_parts.append(torch.tensor([sep], dtype=torch.long))
            doc_parts.append(torch.tensor([-1], dtype=torch.long))
            length += 1
        id_parts.append(torch.tensor(ids, dtype=torch.long))
        doc_parts.append(torch.full((len(ids),), doc_index, dtype=torch.long))
        length += len(ids)
        if stream_wanted is not None and length >= stream_wanted:
            break
    if n_docs == 0:
        raise ValueError("no texts to tokenize")
    if length < body:
        raise ValueError(
            f"the {n_docs} text(s) give {length} tokens (separators included); one window of "
            f"seq_len={seq_len} needs {body}"
        )

    n_seq = length // body
    if n_seq_wanted is not None:
        if n_seq < n_seq_wanted:
            logger.warning(
                "asked for %d tokens but the texts fill only %d windows of %d (%d tokens)",
                n_tokens,
                n_seq,
                seq_len,
                n_seq * seq_len,
            )
        n_seq = min(n_seq, n_seq_wanted)
    input_ids = torch.cat(id_parts)[: n_seq * body].view(n_seq, body)
    doc_ids = torch.cat(doc_parts)[: n_seq * body].view(n_seq, body)
    if bos is not None:  # prepend_bos (checked above: then the tokenizer has a BOS id)
        input_ids = torch.cat([torch.full((n_seq, 1), bos, dtype=torch.long), input_ids], 1)
        doc_ids = torch.cat([torch.full((n_seq, 1), -1, dtype=torch.long), doc_ids], 1)

    settings = {"seq_len": seq_len, "separator_id": sep, "prepend_bos": prepend_bos, "bos": bos}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(input_ids.numpy().astype("<i8").tobytes())
    h.update(doc_ids.numpy().astype("<i8").tobytes())
    return TokenChunks(input_ids, doc_ids, h.hexdigest()[:16])


def _tokenized(
    tokenizer: Any, texts: Iterable[str], max_batch: int
) -> Iterator[tuple[int, list[int]]]:
    """Yield ``(index, ids)`` per text, tokenizing batches of 1, 2, 4, ... ``max_batch`` texts.

    Fast tokenizers work on a batch in parallel; starting from one text keeps a small token
    budget from tokenizing more than it needs.
    """
    it = iter(texts)
    index = 0
    size = 1
    while batch := list(itertools.islice(it, size)):
        # verbose=False: long documents are expected here, not a model-length overflow.
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            yield index, list(ids)
            index += 1
        size = min(2 * size, max_batch)


class TokenContexts(NamedTuple):
    """Decoded tokens and the text around them, for hover labels."""

    tokens: list[str]
    """Each token, decoded alone."""
    contexts: list[str]
    """``left + ⟦token⟧ + right``: up to ``window`` tokens each side, within the same row."""


def token_contexts(
    tokenizer: Any,
    input_ids: Int[Tensor, "batch pos"],
    rows: Sequence[tuple[int, int]] | Tensor,
    window: int = 8,
) -> TokenContexts:
    """Decode the tokens at ``rows`` and a window of text around each.

    Args:
        tokenizer: the tokenizer that produced ``input_ids``.
        input_ids: token windows, e.g. ``chunk_tokens(...).input_ids``.
        rows: ``(seq, pos)`` pairs (or an int tensor of shape ``[n, 2]``).
        window: tokens of context on each side (clipped at the window's ends).

    Returns:
        :class:`TokenContexts`; the token is marked in its context with
        :data:`CONTEXT_OPEN` and :data:`CONTEXT_CLOSE`. Special tokens are kept.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    ids = input_ids.tolist() if isinstance(input_ids, Tensor) else [list(r) for r in input_ids]
    pairs = rows.tolist() if isinstance(rows, Tensor) else rows
    lefts, centres, rights = [], [], []
    n_seq = len(ids)
    for seq, pos in pairs:
        if not (0 <= seq < n_seq and 0 <= pos < len(ids[seq])):
            raise IndexError(f"row ({seq}, {pos}) is outside input_ids of {n_seq} sequences")
        row = ids[seq]
        lefts.append(row[max(0, pos - window) : pos])
        centres.append([row[pos]])
        rights.append(row[pos + 1 : pos + 1 + window])
    tokens = tokenizer.batch_decode(centres, skip_special_tokens=False)
    left_text = tokenizer.batch_decode(lefts, skip_special_tokens=False)
    right_text = tokenizer.batch_decode(rights, skip_special_tokens=False)
    contexts = [
        f"{a}{CONTEXT_OPEN}{t}{CONTEXT_CLOSE}{b}"
        for a, t, b in zip(left_text, tokens, right_text, strict=True)
    ]
    return TokenContexts(tokens, contexts)
