"""What every figure builder shares: readable tokens and labels, reference lines that respect
log axes, and lines that do not invent data.

- :func:`display_token` turns a tokenizer's internal token string (byte-level BPE ``Ġhelpful``,
  ``Ċ``; SentencePiece ``▁the``) into the text it stands for, with whitespace made visible, so
  that tick labels and hovers show ``' helpful'`` and ``⏎`` instead of the BPE alphabet.
- :func:`pretty_label` maps result-field names (``task_acc``, ``flip_rate``) to axis and legend
  text.
- :func:`ref_line` draws a horizontal or vertical reference line with a label. Plotly places an
  annotation on a log axis at ``10**value`` (annotation coordinates are in log units there,
  while shapes take data values), so ``add_hline(..., annotation_text=...)`` on a log axis puts
  the label at, say, ``10**4.9`` for a value of 4.9 and autorange stretches the axis to reach it.
  :func:`ref_line` converts the label's coordinate on log axes.
- :func:`gap_at_zero` breaks a line between the last negative and the first positive ``x``
  when there is no point at ``x = 0``, so a line does not claim data where there is none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

import plotly.graph_objects as go

__all__ = [
    "display_token",
    "display_tokens",
    "gap_at_zero",
    "log_range",
    "pretty_label",
    "ref_line",
]

NEWLINE, TAB, SPACE = "⏎", "⇥", "␣"
"""Visible stand-ins for whitespace in token labels."""

_LABELS = {
    "task_acc": "task accuracy",
    "control_acc": "control-task accuracy",
    "selectivity": "selectivity (task − control)",
    "majority": "majority rate",
    "r2": "held-out R²",
    "cv_r2": "cross-validated R²",
    "mae": "mean absolute error",
    "score": "held-out score",
    "train_score": "training score",
    "flip_rate": "answer-flip rate",
    "directed_rate": "rate of changes the intended way",
    "accuracy": "held-out accuracy",
    "f1": "F1",
    "dev_f1": "dev F1",
    "fvu": "FVU",
    "l0": "L0",
    "dead_frac": "dead latents",
}


def pretty_label(name: str) -> str:
    """Axis / legend text for a result field: known names spelled out, else ``_`` → space."""
    return _LABELS.get(name, name.replace("_", " "))


@cache
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte → printable-character table (used by every byte-level BPE:
    GPT-2, Llama 3, SmolLM, Qwen, ...). Printable ASCII and most of Latin-1 map to themselves;
    the other 68 bytes map to ``chr(256 + i)`` in order (so the space byte is ``Ġ``)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _visible(text: str) -> str:
    text = text.replace("\r\n", NEWLINE).replace("\n", NEWLINE).replace("\r", NEWLINE)
    text = text.replace("\t", TAB)
    return SPACE * len(text) if text and not text.strip(" ") else text


def display_token(token: str) -> str:
    """The text a token string stands for, with newlines, tabs and all-space tokens visible.

    A string is read as byte-level BPE when every character is in the BPE byte alphabet and at
    least one is a shifted byte (``Ġ``, ``Ċ``, ...): already-decoded text (``" helpful"``,
    ``"café"``) has none and passes through. SentencePiece's ``▁`` becomes a space. Bytes of
    a character split across tokens decode to ``�``.

    >>> display_token("Ġhelpful"), display_token("Ċ"), display_token("▁the")
    (' helpful', '⏎', ' the')
    """
    table = _byte_decoder()
    if token and all(c in table for c in token) and any(ord(c) >= 256 for c in token):
        token = bytes(table[c] for c in token).decode("utf-8", errors="replace")
    return _visible(token.replace("▁", " "))


def display_tokens(tokens: Sequence[str]) -> list[str]:
    """:func:`display_token` of each token."""
    return [display_token(t) for t in tokens]


def ref_line(
    fig: go.Figure,
    value: float,
    *,
    axis: Literal["x", "y"] = "y",
    label: str | None = None,
    log: bool = False,
    row: int | None = None,
    col: int | None = None,
    secondary_y: bool = False,
    line: dict[str, Any] | None = None,
    position: str = "top left",
    font_size: int = 10,
) -> None:
    """A dashed reference line at ``value`` across a (sub)plot, with an optional label.

    The line is a shape (data coordinates on any axis type); the label is an annotation whose
    coordinate is ``log10(value)`` when the axis is logarithmic (Plotly's convention for
    annotations), so it sits on the line and autorange does not stretch to ``10**value``.

    Args:
        fig: the figure (a subplot grid when ``row``/``col`` are given).
        value: where the line is, in data units (> 0 on a log axis).
        axis: ``"y"`` for a horizontal line, ``"x"`` for a vertical one.
        label: text beside the line (None: no label).
        log: the axis the line crosses is logarithmic.
        row, col: the subplot.
        secondary_y: the subplot's secondary y axis.
        line: Plotly line properties (default grey, dashed).
        position: where the label sits along the line (``"top left"``, ``"bottom right"``...).
        font_size: label size.
    """
    if log and not value > 0:
        raise ValueError(f"a reference line on a log axis needs a value > 0, got {value}")
    where: dict[str, Any] = {} if row is None else {"row": row, "col": col}
    if secondary_y:
        where["secondary_y"] = True
    style = {"dash": "dash", "color": "gray", "width": 1, **(line or {})}
    add = fig.add_hline if axis == "y" else fig.add_vline
    add(value, line=style, **where)
    if label is None:
        return
    coord = math.log10(value) if log else value
    vertical, horizontal = (position.split() + ["right"])[:2]
    # the annotation's own axis refs come from the shape just added (same subplot)
    # plotly leaves Figure.layout untyped (stub gap)
    shape = fig.layout.shapes[-1]  # pyright: ignore[reportAttributeAccessIssue]
    if axis == "y":
        xref = shape.xref  # "x domain" style: the subplot's width
        ann = {"x": 0.0 if horizontal == "left" else 1.0, "y": coord, "xref": xref,
               "yref": shape.yref, "xanchor": horizontal, "yanchor":
               "bottom" if vertical == "top" else "top"}  # fmt: skip
    else:
        ann = {"x": coord, "y": 1.0 if vertical == "top" else 0.0, "xref": shape.xref,
               "yref": shape.yref, "xanchor": "left" if horizontal == "right" else "right",
               "yanchor": "top" if vertical == "top" else "bottom"}  # fmt: skip
    fig.add_annotation(text=label, showarrow=False, font={"size": font_size, "color": style["color"]},
                       **ann)  # fmt: skip


def log_range(values: Sequence[float], pad: float = 1.15) -> list[float]:
    """A log axis range (in log10 units, as Plotly wants it) covering ``values`` with a margin.

    Non-finite and non-positive values are ignored; raises if none is left.
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not vals:
        raise ValueError("no positive finite values for a log axis")
    lo, hi = min(vals) / pad, max(vals) * pad
    return [math.log10(lo), math.log10(hi)]


def gap_at_zero(xs: Sequence[float], ys: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """``(xs, ys)`` sorted by x with a ``None`` gap between negative and positive x when there
    is no point at 0 (Plotly breaks a line at None unless ``connectgaps`` is set)."""
    pts = sorted(zip(xs, ys), key=lambda p: p[0])
    out_x: list[Any] = []
    out_y: list[Any] = []
    has_zero = any(x == 0 for x, _ in pts)
    for i, (x, y) in enumerate(pts):
        if not has_zero and i > 0 and pts[i - 1][0] < 0 < x:
            out_x.append(None)
            out_y.append(None)
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y
