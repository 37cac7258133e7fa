"""Layer sweeps: capture every layer in one forward pass, fit a probe per layer, tabulate.

    >>> cap = capture_layers(handle, texts, spans)               # cap.acts: {layer: [n, d]}
    >>> rows = pls_sweep(cap.acts, years)                            # one dict per layer
    >>> print(format_table(rows, ["layer", "r2", "mae", "n_components"]))

Also the token-level task for control-task selectivity: :func:`code_token_task` labels every
token of small standard-library functions with its lexical role (keyword, builtin, definition
name, attribute, other name, number, string, operator), a POS-tagging analogue that runs
offline; the word *type* is the token's text.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import logging
import re
import tokenize
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from torch import Tensor

from steerlab.models import ModelHandle
from steerlab.positions import SpanTokens
from steerlab.probes.linear import ProbeConfig, fit_probe, selectivity
from steerlab.probes.pls import PLSConfig, fit_pls

logger = logging.getLogger(__name__)

__all__ = [
    "TOKEN_CLASSES",
    "LayerCapture",
    "TokenTask",
    "capture_layers",
    "code_token_task",
    "format_table",
    "pls_sweep",
    "probe_sweep",
    "selectivity_sweep",
]


class LayerCapture(NamedTuple):
    """Activations of several layers at the same rows."""

    acts: dict[int, Tensor]
    """``{layer: [n_rows, d_model]}``."""
    doc_ids: Tensor
    """``[n_rows]`` the text of each row."""
    span_ids: Tensor
    """``[n_rows]`` the span of its text each row belongs to (-1 without spans)."""
    token_ids: Tensor
    """``[n_rows]`` the token at each row."""


def capture_layers(
    handle: ModelHandle,
    texts: Sequence[str],
    positions: Any,
    *,
    layers: Sequence[int] | None = None,
    kind: str = "resid_post",
    span_tokens: SpanTokens = "last",
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> LayerCapture:
    """Activations of every requested layer from ONE capture pass.

    Args:
        handle: the model.
        texts: input texts.
        positions: a position rule for :func:`steerlab.capture.capture` (``"last"``, spans...).
        layers: layers to keep (default all).
        kind: site kind (``resid_post`` by default).
        span_tokens: with spans, which token of each span (``"last"``: the value's last digit,
            the entity's last token).
        batch_size: texts per forward.
        progress: called with tokens processed after each batch.

    Returns:
        :class:`LayerCapture`; rows in text then position order (float32, CPU).
    """
    from steerlab.capture import capture

    layers = list(range(handle.n_layers)) if layers is None else list(layers)
    sites = [f"{kind}.{L}" for L in layers]
    cap = capture(handle, list(texts), sites, positions=positions, span_tokens=span_tokens,
                  batch_size=batch_size, progress=progress)  # fmt: skip
    n_rows = len(cap)
    if isinstance(positions, list) and span_tokens in ("first", "last"):
        n_spans = sum(1 if isinstance(s, tuple) and isinstance(s[0], int) else len(s)
                      for s in positions)  # fmt: skip
        if n_rows != n_spans:
            logger.warning("%d spans gave %d rows (spans sharing a token merge)", n_spans, n_rows)
    acts = {L: cap[s] for L, s in zip(layers, sites)}
    return LayerCapture(acts, cap.doc_ids, cap.span_ids, cap.token_ids)


def pls_sweep(
    acts: dict[int, Tensor],
    y: Tensor,
    config: PLSConfig | None = None,
    *,
    groups: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Fit a PLS probe per layer; one row per layer with held-out R², MAE, components."""
    rows = []
    for L, x in acts.items():
        res = fit_pls(x.double(), y, config, groups=groups)
        rows.append({
            "layer": L, "r2": res.test.r2, "mae": res.test.mae,
            "cv_r2": max(res.cv_r2) if res.cv_r2 else float("nan"),
            "n_components": res.n_components, "n_train": res.n_train, "n_test": res.test.n,
        })  # fmt: skip
    return rows


def probe_sweep(
    acts: dict[int, Tensor],
    y: Tensor,
    config: ProbeConfig | None = None,
    *,
    groups: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Fit a linear probe (logistic or ridge) per layer; held-out accuracy or R² per row."""
    rows = []
    for L, x in acts.items():
        res = fit_probe(x, y, config, groups=groups)
        rows.append({"layer": L, "score": res.test_score, "train_score": res.train_score,
                     "strength": res.strength, "n_train": res.n_train,
                     "n_test": res.n_test})  # fmt: skip
    return rows


def selectivity_sweep(
    acts: dict[int, Tensor],
    labels: Tensor,
    types: Tensor,
    config: ProbeConfig | None = None,
    *,
    groups: Tensor | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Task and control-task accuracy and selectivity per layer (Hewitt & Liang 2019)."""
    rows = []
    for L, x in acts.items():
        s = selectivity(x, labels, types, config, groups=groups, seed=seed)
        rows.append({"layer": L, "task_acc": s.task.test_score,
                     "control_acc": s.control.test_score, "selectivity": s.selectivity,
                     "majority": s.majority, "C_task": s.task.strength,
                     "C_control": s.control.strength})  # fmt: skip
    return rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of sweep rows (floats with 3 decimals)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# --- a token-level task ---------------------------------------------------------------------------

TOKEN_CLASSES = ("keyword", "builtin", "definition", "attribute", "name", "number", "string",
                 "operator")  # fmt: skip
"""Labels of :func:`code_token_task` (class index = position in this tuple)."""


class TokenTask(NamedTuple):
    """Labelled tokens of code snippets."""

    texts: list[str]
    """The snippets."""
    spans: list[list[tuple[int, int]]]
    """Per snippet, the character span of each labelled token."""
    labels: list[list[int]]
    """Per snippet, the class index (into :data:`TOKEN_CLASSES`) of each span."""
    words: list[list[str]]
    """Per snippet, each span's text (the word type)."""


def _label_tokens(src: str) -> tuple[list[tuple[int, int]], list[int], list[str]] | None:
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    line_starts = [0]
    for line in src.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    spans, labels, words = [], [], []
    prev = None
    builtin_names = set(dir(builtins))
    for t in toks:
        if t.type in (tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.OP):
            if t.start[0] != t.end[0]:  # multi-line strings: skip
                prev = t
                continue
            s = line_starts[t.start[0] - 1] + t.start[1]
            e = line_starts[t.end[0] - 1] + t.end[1]
            if t.type == tokenize.NAME:
                if keyword.iskeyword(t.string):
                    lab = "keyword"
                elif prev is not None and prev.string in ("def", "class"):
                    lab = "definition"
                elif prev is not None and prev.string == ".":
                    lab = "attribute"
                elif t.string in builtin_names:
                    lab = "builtin"
                else:
                    lab = "name"
            elif t.type == tokenize.NUMBER:
                lab = "number"
            elif t.type == tokenize.STRING:
                lab = "string"
            else:
                lab = "operator"
            spans.append((s, e))
            labels.append(TOKEN_CLASSES.index(lab))
            words.append(t.string)
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.COMMENT):  # fmt: skip
            prev = t
    return spans, labels, words


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def source_lines(source: str) -> list[str]:
    """``source`` split into lines at ``\\r\\n``, ``\\r`` and ``\\n`` only, ends kept (as the
    parser and :func:`ast.get_source_segment` split it; ``str.splitlines`` also splits at form
    feeds and other separators)."""
    return _LINE.findall(source)


def source_segment(lines: list[str], node: ast.AST) -> str | None:
    """``ast.get_source_segment(source, node, padded=True)`` from the source's
    :func:`source_lines`, split once per file instead of once per node (which made collecting
    the functions of a long file quadratic in its length). Column offsets are UTF-8 bytes."""
    try:
        first_line, last_line = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
        col, end_col = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
    except AttributeError:
        return None
    if last_line is None or end_col is None:
        return None
    if first_line == last_line:
        return lines[first_line].encode()[col:end_col].decode()
    # padded: the first line keeps its indentation as whitespace (tabs and form feeds kept)
    pad = "".join(c if c in "\f\t" else " " for c in lines[first_line].encode()[:col].decode())
    first = pad + lines[first_line].encode()[col:].decode()
    last = lines[last_line].encode()[:end_col].decode()
    return "".join([first, *lines[first_line + 1 : last_line], last])


def code_token_task(
    n_snippets: int = 60, *, max_chars: int = 400, max_files: int | None = 200, seed: int = 0
) -> TokenTask:
    """Small functions of the standard library with every token labelled by lexical role.

    Functions (top-level and methods) of at most ``max_chars`` characters are taken from the
    first ``max_files`` files of :func:`steerlab.datasets.code_corpus`, dedented, and a random
    ``n_snippets`` of them (seeded) are labelled with Python's ``tokenize``: ``keyword``;
    ``definition`` (the name after ``def``/``class``); ``attribute`` (after ``.``);
    ``builtin``; other ``name``; ``number``; ``string``; ``operator``. A word type (e.g.
    ``append``) can carry several labels depending on its left context, as in POS tagging.
    """
    import random
    import textwrap

    from steerlab.datasets.corpora import code_corpus

    found: list[str] = []
    for doc in code_corpus(max_files):
        try:
            tree = ast.parse(doc)
        except SyntaxError:
            continue
        lines = source_lines(doc)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                seg = source_segment(lines, node)
                if seg and 40 <= len(seg) <= max_chars and '"""' not in seg and "'''" not in seg:
                    found.append(textwrap.dedent(seg))
    found = sorted(set(found))
    random.Random(seed).shuffle(found)
    texts, spans, labels, words = [], [], [], []
    for src in found:
        lab = _label_tokens(src)
        if lab is None or not lab[0]:
            continue
        texts.append(src)
        spans.append(lab[0])
        labels.append(lab[1])
        words.append(lab[2])
        if len(texts) == n_snippets:
            break
    if not texts:
        raise ValueError("no code snippets found; is the standard library readable?")
    return TokenTask(texts, spans, labels, words)
