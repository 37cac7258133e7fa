"""Code data for the AST-Probe: Python functions from the standard library, cleaned and split.

Follows AST-Probe (Hernández López et al., ASE 2022; martin-wey/ast-probe,
``src/data/code2ast.py``), with the standard library (:func:`steerlab.datasets.code_files`) in place
of CodeSearchNet:

- every ``def`` / ``async def`` at any depth (methods and nested functions included; decorators
  excluded) is one snippet, parsed with tree-sitter's Python grammar;
- comments are removed, and so are docstrings and every other statement that is a bare string
  literal; blank lines are dropped, trailing whitespace is stripped and the function is
  dedented so that ``def`` starts at column 0. Lines inside multi-line strings are kept as
  they are. The cleaned text is parsed again, so leaf spans are exact in it;
- every string literal (f-strings and their interpolations included) is one terminal
  ``string``; ``line_continuation`` tokens (backslash-newline) are layout, like whitespace, and
  are not leaves;
- snippets are deduplicated by a hash of the cleaned text (the first in processing order is
  kept, so a duplicate never lands in two splits) and split into train / dev / test by module
  file with a deterministic hash of the file's path relative to the standard library.

Dropped snippets are counted, never silently lost: see :data:`COUNT_KEYS`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from steerlab.probes.ast.trees import Targets, Tree, binarize, tree_to_targets

logger = logging.getLogger(__name__)

__all__ = [
    "COUNT_KEYS",
    "DROP_REASONS",
    "AstDataset",
    "AstSnippet",
    "extract_snippets",
    "leaf_token_alignment",
    "load_ast_snippets",
    "split_of",
    "straddling_tokens",
]

COUNT_KEYS = {
    "files": "module files read",
    "files_undecodable": "files that are not UTF-8 (skipped)",
    "functions": "function definitions found",
    "syntax_error": "functions whose parse holds an ERROR or MISSING node (dropped)",
    "empty_body": "functions with a block holding only docstrings/bare strings (dropped)",
    "cleaning_error": "functions whose cleaned text no longer parses (dropped)",
    "too_many_leaves": "functions with more than max_leaves leaves (dropped)",
    "too_many_tokens": "functions longer than max_tokens subword tokens (dropped)",
    "duplicate": "functions whose cleaned text was already kept (dropped)",
    "kept": "snippets kept",
    "train": "snippets in train",
    "dev": "snippets in dev",
    "test": "snippets in test",
}
"""The keys of :attr:`AstDataset.counts` and what each counts."""

DROP_REASONS = tuple(k for k, v in COUNT_KEYS.items() if v.endswith("(dropped)"))
"""The keys of :data:`COUNT_KEYS` that count dropped functions: without ``max_snippets``,
``functions == kept + sum(counts[k] for k in DROP_REASONS)``."""

_STRING = "string"
_QUERY = (
    "(function_definition) @fn (comment) @comment (string) @string "
    "(expression_statement) @expr (block) @block"
)
_LAYOUT = frozenset({"line_continuation", "comment"})


class AstSnippet(NamedTuple):
    """One cleaned function with its AST and leaf spans."""

    code: str
    """The cleaned function text (``def`` at column 0, no comments/docstrings/blank lines)."""
    tree: Tree
    """Its AST from tree-sitter (root ``module``), string literals collapsed to one leaf."""
    leaf_spans: list[tuple[int, int]]
    """Character span ``(start, end)`` in :attr:`code` of each leaf of :attr:`tree`, in order."""
    path: str
    """Module file, relative to the standard library (POSIX separators)."""
    name: str
    """The function's name."""
    line: int
    """1-based line of the ``def`` in the original file."""

    @property
    def leaves(self) -> list[str]:
        """The text of each leaf."""
        return [self.code[s:e] for s, e in self.leaf_spans]

    def targets(self) -> Targets:
        """The probe's gold targets: ``tree_to_targets(binarize(self.tree))``."""
        return tree_to_targets(binarize(self.tree))


class AstDataset(NamedTuple):
    """Snippets split by module file, from :func:`load_ast_snippets`."""

    train: list[AstSnippet]
    dev: list[AstSnippet]
    test: list[AstSnippet]
    counts: dict[str, int]
    """How many files and functions were read, dropped (by reason) and kept; see
    :data:`COUNT_KEYS`."""


# --------------------------------------------------------------------------- parsing


def _parser() -> Any:
    """A tree-sitter ``Parser`` for Python (the per-language wheel ``tree-sitter-python``)."""
    try:
        import tree_sitter
        import tree_sitter_python
    except ImportError as e:
        raise ImportError(
            "the AST probe parses code with tree-sitter: pip install tree-sitter tree-sitter-python"
        ) from e
    language = tree_sitter.Language(tree_sitter_python.language())
    return tree_sitter.Parser(language)


def _index(parser: Any, root: Any) -> dict[str, tuple[list[int], list[Any]]]:
    """Nodes of the kinds in :data:`_QUERY` under ``root``, each kind sorted by start byte."""
    import tree_sitter

    query = tree_sitter.Query(parser.language, _QUERY)
    out = {}
    for kind, nodes in tree_sitter.QueryCursor(query).captures(root).items():
        nodes = sorted(nodes, key=lambda n: (n.start_byte, -n.end_byte))
        out[kind] = ([n.start_byte for n in nodes], nodes)
    return out


def _within(index: dict, kind: str, start: int, end: int) -> list[Any]:
    """The nodes of ``kind`` that start inside ``[start, end)``, so lie inside that node."""
    starts, nodes = index.get(kind, ([], []))
    return nodes[bisect_left(starts, start) : bisect_left(starts, end)]


def _is_bare_string(node: Any) -> bool:
    """An expression statement that is only a string: a docstring or a string used as one."""
    kids = [k for k in node.named_children if k.type != "comment"]
    return (
        node.type == "expression_statement"
        and len(kids) == 1
        and kids[0].type in (_STRING, "concatenated_string")
    )


def _clean(src: bytes, fn: Any, index: dict) -> tuple[str | None, str]:
    """The cleaned text of function node ``fn`` of module ``src``, or ``(None, reason)``."""
    s0, s1 = fn.start_byte, fn.end_byte
    col0 = fn.start_point.column
    drop = _within(index, "comment", s0, s1)
    drop += [n for n in _within(index, "expr", s0, s1) if _is_bare_string(n)]
    dropped = {(n.start_byte, n.end_byte) for n in drop}
    for block in _within(index, "block", s0, s1):
        stmts = [k for k in block.named_children if k.type != "comment"]
        if all((k.start_byte, k.end_byte) in dropped for k in stmts):
            return None, "empty_body"
    # Bytes inside string literals: their lines are never re-indented or stripped.
    protected = bytearray(s1 - s0)
    for n in _within(index, _STRING, s0, s1):
        protected[n.start_byte - s0 : n.end_byte - s0] = b"\1" * (n.end_byte - n.start_byte)
    keep, pos = [], s0
    for a, b in sorted(dropped):
        if a >= pos:  # nested drops (a comment inside a dropped string statement) are covered
            keep.append((pos, a))
            pos = b
    keep.append((pos, s1))
    text = b"".join(src[a:b] for a, b in keep)
    prot = b"".join(protected[a - s0 : b - s0] for a, b in keep)

    lines: list[bytes] = []
    start = 0
    while start <= len(text):
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end]
        ends_in_string = end < len(text) and prot[end]
        if not ends_in_string:
            line = line.rstrip(b" \t\r\f\v")
        if start > 0 and prot[start - 1]:  # the line begins inside a multi-line string
            lines.append(line)
        elif ends_in_string or line.strip():
            k = 0
            while k < min(col0, len(line)) and line[k] in b" \t":
                k += 1
            lines.append(line[k:])
        start = end + 1
    try:
        return b"\n".join(lines).decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "cleaning_error"


def _to_tree(root: Any, code_bytes: bytes, code: str) -> tuple[Tree, list[tuple[int, int]]]:
    """Convert a tree-sitter tree to a :class:`Tree` plus each leaf's character span."""
    char_of = (  # byte offset -> character offset; None for ASCII, where they agree
        None
        if len(code_bytes) == len(code)
        else [i for i, ch in enumerate(code) for _ in ch.encode("utf-8")] + [len(code)]
    )
    spans: list[tuple[int, int]] = []
    values: list[Tree] = []
    # (node, its type, its kept children once expanded, else None)
    stack: list[tuple[Any, str, list[Any] | None]] = [(root, root.type, None)]
    while stack:
        node, kind, children = stack.pop()
        if children is None:
            children = (
                []
                if kind == _STRING or node.child_count == 0
                else [k for k in node.children if k.type not in _LAYOUT]
            )
            if children:
                stack.append((node, kind, children))
                stack.extend((c, c.type, None) for c in reversed(children))
                continue
            s, e = node.start_byte, node.end_byte
            spans.append((s, e) if char_of is None else (char_of[s], char_of[e]))
            values.append(Tree(kind))
        else:
            k = len(children)
            made = tuple(values[len(values) - k :])
            del values[len(values) - k :]
            values.append(Tree(kind, made))
    return values[0], spans


def extract_snippets(
    source: str, path: str = "<string>", *, max_leaves: int | None = None, parser: Any = None
) -> tuple[list[AstSnippet], Counter[str]]:
    """Clean and parse every function of one module (see the module docstring).

    Args:
        source: the module's text.
        path: name recorded in each snippet's :attr:`~AstSnippet.path`.
        max_leaves: drop functions with more leaves (counted as ``too_many_leaves``).
        parser: a tree-sitter ``Parser`` for Python, reused across calls; built if None.

    Returns:
        The snippets in source order and a :class:`~collections.Counter` with the keys
        ``functions``, ``syntax_error``, ``empty_body``, ``cleaning_error``,
        ``too_many_leaves`` and ``kept`` (no deduplication here).
    """
    parser = parser or _parser()
    src = source.encode("utf-8")
    counts: Counter[str] = Counter()
    out: list[AstSnippet] = []
    index = _index(parser, parser.parse(src).root_node)
    for fn in index.get("fn", ([], []))[1]:
        counts["functions"] += 1
        if fn.has_error:
            counts["syntax_error"] += 1
            continue
        code, reason = _clean(src, fn, index)
        if code is None:
            counts[reason] += 1
            continue
        code_bytes = code.encode("utf-8")
        root = parser.parse(code_bytes).root_node
        if root.has_error:
            counts["cleaning_error"] += 1
            continue
        tree, spans = _to_tree(root, code_bytes, code)
        if any(e <= s or not code[s:e].strip() for s, e in spans):
            # Valid code gives no empty or blank leaves; treat one as a failed cleaning.
            counts["cleaning_error"] += 1
            continue
        if max_leaves is not None and len(spans) > max_leaves:
            counts["too_many_leaves"] += 1
            continue
        name = fn.child_by_field_name("name")
        out.append(
            AstSnippet(
                code=code,
                tree=tree,
                leaf_spans=spans,
                path=path,
                name=name.text.decode("utf-8") if name is not None else "",
                line=fn.start_point.row + 1,
            )
        )
        counts["kept"] += 1
    return out, counts


# --------------------------------------------------------------------------- dataset


def split_of(path: str, seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split (``"train"``, ``"dev"`` or ``"test"``) of a module file.

    ``sha256(f"{seed}:{path}")`` mapped to [0, 1) and cut at the cumulative ``fractions``: the
    same file always lands in the same split for a given seed, on every machine.
    """
    h = int(hashlib.sha256(f"{seed}:{path}".encode()).hexdigest()[:15], 16) / 16**15
    cut_train, cut_dev = fractions[0], fractions[0] + fractions[1]
    return "train" if h < cut_train else "dev" if h < cut_dev else "test"


def load_ast_snippets(
    max_snippets: int | None = None,
    max_leaves: int = 256,
    seed: int = 0,
    *,
    tokenizer: Any = None,
    max_tokens: int = 512,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    files: Sequence[str | Path] | None = None,
) -> AstDataset:
    """Functions of the standard library as AST-Probe snippets, split by module file.

    Files are processed in the order of their split hash (pseudo-random for a given ``seed``),
    so ``max_snippets`` takes functions from many modules, not only the alphabetically first.

    Args:
        max_snippets: stop once this many snippets are kept (all splits together); the counts
            then cover the files read so far.
        max_leaves: drop functions with more AST leaves.
        seed: salts the file hash that decides both the split and the processing order.
        tokenizer: a Hugging Face tokenizer; if given, functions longer than ``max_tokens``
            tokens (without special tokens) are dropped (AST-Probe drops those over 512).
        max_tokens: the token limit, used with ``tokenizer``.
        fractions: train/dev/test fractions of the module files.
        files: module files to read instead of :func:`steerlab.datasets.code_files`; paths are
            recorded relative to the standard library when under it.

    Returns:
        :class:`AstDataset`; ``counts`` has every key of :data:`COUNT_KEYS`.

    Raises:
        ValueError: bad ``fractions``, ``max_leaves`` or ``max_snippets``.
    """
    from steerlab.datasets.corpora import code_files, stdlib_dir

    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    if max_leaves < 2:
        raise ValueError(f"max_leaves must be >= 2, got {max_leaves}")
    if max_snippets is not None and max_snippets < 1:
        raise ValueError(f"max_snippets must be >= 1, got {max_snippets}")
    root = stdlib_dir()
    paths = [Path(p) for p in (code_files() if files is None else files)]
    rel = [
        p.relative_to(root).as_posix() if p.is_relative_to(root) else p.as_posix() for p in paths
    ]
    order = sorted(
        range(len(paths)), key=lambda i: hashlib.sha256(f"{seed}:{rel[i]}".encode()).digest()
    )

    parser = _parser()
    counts: Counter[str] = Counter({k: 0 for k in COUNT_KEYS})
    splits: dict[str, list[AstSnippet]] = {"train": [], "dev": [], "test": []}
    seen: set[bytes] = set()
    for i in order:
        if max_snippets is not None and counts["kept"] >= max_snippets:
            break
        counts["files"] += 1
        try:
            source = paths[i].read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            counts["files_undecodable"] += 1
            continue
        snippets, c = extract_snippets(source, rel[i], max_leaves=max_leaves, parser=parser)
        c.pop("kept", None)
        counts.update(c)
        if tokenizer is not None and snippets:
            ids = tokenizer([s.code for s in snippets], add_special_tokens=False)["input_ids"]
            counts["too_many_tokens"] += sum(len(x) > max_tokens for x in ids)
            snippets = [s for s, x in zip(snippets, ids, strict=True) if len(x) <= max_tokens]
        split = splits[split_of(rel[i], seed, fractions)]
        for s in snippets:
            key = hashlib.sha256(s.code.encode("utf-8")).digest()
            if key in seen:
                counts["duplicate"] += 1
                continue
            if max_snippets is not None and counts["kept"] >= max_snippets:
                break
            seen.add(key)
            split.append(s)
            counts["kept"] += 1
    for name, lst in splits.items():
        counts[name] = len(lst)
    dropped = {k: counts[k] for k in DROP_REASONS}
    logger.info("AST snippets: %s; dropped: %s", {k: counts[k] for k in splits}, dropped)
    return AstDataset(splits["train"], splits["dev"], splits["test"], dict(counts))


# --------------------------------------------------------------------------- token alignment


def _overlaps(
    leaf_spans: Sequence[tuple[int, int]], token_offsets: Any
) -> tuple[list[list[int]], list[tuple[int, int, int]]]:
    offsets = token_offsets.tolist() if hasattr(token_offsets, "tolist") else token_offsets
    # Zero-width tokens (BOS, padding, offsets (0, 0)) carry no text and overlap nothing.
    toks = sorted((int(s), int(e), j) for j, (s, e) in enumerate(offsets) if int(e) > int(s))
    ends = [e for _, e, _ in toks]
    monotone = all(a <= b for a, b in zip(ends, ends[1:]))
    out: list[list[int]] = []
    for s, e in leaf_spans:
        # With non-decreasing ends, the first overlapping token is the first whose end > s.
        k = bisect_right(ends, s) if monotone else 0
        hit = []
        while k < len(toks) and toks[k][0] < e:
            if toks[k][1] > s:
                hit.append(toks[k][2])
            k += 1
        out.append(sorted(hit))
    return out, toks


def leaf_token_alignment(
    leaf_spans: Sequence[tuple[int, int]],
    token_offsets: Any,
    *,
    straddling: Literal["share", "refuse"] = "share",
) -> list[list[int]]:
    """The subword tokens of each leaf, for mean-pooling leaf vectors (AST-Probe, Sec. III-B).

    Token ``j`` belongs to leaf ``i`` when their character spans overlap
    (``tok_start < leaf_end`` and ``tok_end > leaf_start``). Whitespace a token carries
    (``" x"``) overlaps no other leaf and does not straddle. A token that straddles a leaf
    boundary (BPE merges such as ``"):"`` when the text is tokenised as one string) belongs to
    *every* leaf it overlaps with ``straddling="share"``, so that two adjacent leaves can get
    the same vector; ``"refuse"`` raises instead (for tokens from
    :func:`steerlab.probes.ast.features.encode_leaves`, which never straddle).
    :func:`straddling_tokens` lists those tokens.

    Args:
        leaf_spans: ``(start, end)`` character spans, e.g. :attr:`AstSnippet.leaf_spans`.
        token_offsets: ``[pos, 2]`` character offsets of the tokens into the same text (a list,
            array or tensor, e.g. one row of ``Encoded.offsets``); zero-width tokens such as BOS
            and padding are ignored.
        straddling: ``"share"`` or ``"refuse"`` a token that overlaps two leaves.

    Returns:
        For each leaf, the sorted indices of its tokens.

    Raises:
        ValueError: a leaf overlaps no token (truncated away, or offsets of another text), or a
            token straddles two leaves with ``straddling="refuse"``.
    """
    if straddling not in ("share", "refuse"):
        raise ValueError(f"straddling must be 'share' or 'refuse', got {straddling!r}")
    out, _ = _overlaps(leaf_spans, token_offsets)
    if straddling == "refuse":
        n = Counter(j for hit in out for j in hit)
        bad = sorted(j for j, k in n.items() if k > 1)
        if bad:
            leaves = [i for i, hit in enumerate(out) if bad[0] in hit]
            raise ValueError(
                f"{len(bad)} tokens straddle two leaves (first: token {bad[0]}, leaves "
                f"{leaves}); tokenise leaf by leaf (encode_leaves) or pass straddling='share'"
            )
    missing = [i for i, hit in enumerate(out) if not hit]
    if missing:
        i = missing[0]
        raise ValueError(
            f"{len(missing)} of {len(out)} leaves overlap no token (first: leaf {i} at "
            f"{tuple(leaf_spans[i])}); was the text truncated or tokenised differently?"
        )
    return out


def straddling_tokens(leaf_spans: Sequence[tuple[int, int]], token_offsets: Any) -> list[int]:
    """Indices of the tokens that overlap more than one leaf (see :func:`leaf_token_alignment`)."""
    out, _ = _overlaps(leaf_spans, token_offsets)
    n = Counter(j for hit in out for j in hit)
    return sorted(j for j, k in n.items() if k > 1)
