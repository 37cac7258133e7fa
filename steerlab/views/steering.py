"""Figures for steering: the strength sweep, and a text coloured token by token.

- :func:`sweep_figure` — α against concept score, perplexity, repetition, fluency, relevance
  and the combined score, one panel each, with the prompting baselines as horizontal lines.
- :func:`token_projection_figure` — a text's tokens laid out in rows, each cell coloured by the
  token's projection on a direction (hover: token, position, value).
- :func:`token_projection_html` — the same as inline HTML ``<span>``s (for notebooks).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from steerlab.views.common import display_tokens, gap_at_zero, log_range, pretty_label, ref_line

__all__ = ["sweep_figure", "token_projection_figure", "token_projection_html"]

_PANELS = (
    ("concept", "concept score"),
    ("perplexity", "perplexity (unsteered model)"),
    ("repetition", "repetition rate"),
    ("fluency", "fluency (normalised)"),
    ("relevance", "relevance (prompt similarity ÷ unsteered's)"),
    ("combined", "combined (harmonic mean)"),
)
_POLE_COLOUR = {1: "#1a9850", -1: "#d73027"}


def _rows(sweep: Any) -> list[dict[str, Any]]:
    if hasattr(sweep, "table"):
        return sweep.table()
    if isinstance(sweep, Mapping) and "table" in sweep:
        return list(sweep["table"])
    raise TypeError("expected a Sweep or its to_dict() (a mapping with a 'table')")


def sweep_figure(sweep: Any, *, title: str | None = None) -> go.Figure:
    """α against every metric of a strength sweep, with the prompting baselines as lines.

    The perplexity panel has a log axis whose range covers the points and the baselines (its
    labels are placed in log units, see :func:`steerlab.views.common.ref_line`); lines break
    across α = 0 when the sweep has no point there.

    Args:
        sweep: a :class:`steerlab.steering.evals.Sweep` or its ``to_dict()``.
        title: figure title (default names the concept).
    """
    rows = _rows(sweep)
    points = sorted((r for r in rows if r["alpha"] is not None), key=lambda r: r["alpha"])
    base = {int(r["pole"]): r for r in rows if r["alpha"] is None and r.get("pole") is not None}
    if not points:
        raise ValueError("the sweep has no α points")
    concept = sweep.concept if hasattr(sweep, "concept") else sweep.get("concept", "concept")
    fig = make_subplots(rows=2, cols=3, subplot_titles=[t for _, t in _PANELS],
                        horizontal_spacing=0.08, vertical_spacing=0.16)  # fmt: skip
    alphas = [r["alpha"] for r in points]
    for i, (key, _) in enumerate(_PANELS):
        row, col = i // 3 + 1, i % 3 + 1
        log = key == "perplexity"
        if key == "combined":
            series = [("towards +", "combined_pos", _POLE_COLOUR[1]),
                      ("towards −", "combined_neg", _POLE_COLOUR[-1])]  # fmt: skip
        else:
            series = [(key, key, "#4c72b0")]
        shown: list[float] = []
        for name, field, colour in series:
            ys = [r[field] for r in points]
            shown += [y for y in ys if _finite(y)]
            xs, ys = gap_at_zero(alphas, ys)
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=name, line={"color": colour},
                legendgroup=name, showlegend=key in ("concept", "combined"),
                hovertemplate=f"α=%{{x:g}}<br>{pretty_label(field)}=%{{y:.3f}}<extra></extra>",
            ), row=row, col=col)  # fmt: skip
        for pole, r in base.items():
            field = ("combined_pos" if pole > 0 else "combined_neg") if key == "combined" else key
            y = r.get(field)
            if not _finite(y) or (log and y <= 0):
                continue
            shown.append(y)
            ref_line(fig, y, label=f"prompt {'+' if pole > 0 else '−'}", log=log, row=row,
                     col=col, line={"color": _POLE_COLOUR[pole]}, font_size=9,
                     position="top left" if pole > 0 else "bottom left")  # fmt: skip
        fig.update_xaxes(title_text="α", row=row, col=col)
        if log:
            fig.update_yaxes(type="log", range=log_range(shown), row=row, col=col)
    fig.update_layout(
        title=title or f"Strength sweep: {concept} (dashed: prompting baselines)",
        height=700, template="plotly_white", legend={"orientation": "h", "y": -0.12},
    )  # fmt: skip
    return fig


def _finite(y: Any) -> TypeGuard[float]:
    return isinstance(y, int | float) and math.isfinite(y)


def _centered(scores: Any, center: float | str | None) -> tuple[list[float], float]:
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if len(s) == 0:
        raise ValueError("no tokens")
    c = float(s.mean()) if center == "mean" else float(center or 0.0)
    return (s - c).tolist(), c


_ROW_PX = 34  # one row of tokens
_MARGIN = {"t": 56, "b": 64, "l": 10, "r": 10}  # title above; the colour bar below the grid


def token_projection_figure(
    tokens: Sequence[str],
    scores: Any,
    *,
    per_row: int = 16,
    center: float | str | None = "mean",
    title: str = "Projection of each token on the direction",
) -> go.Figure:
    """A heatmap of a text's tokens in reading order, coloured by projection minus ``center``.

    Each row of ``per_row`` tokens is ``34`` px tall (at least two rows' worth of plot, so a
    one-line text is not a sliver); the colour bar lies horizontally under the grid, where its
    labels have the figure's width. Tokens are shown with :func:`~steerlab.views.common.
    display_token` (BPE markers decoded, newlines as ⏎).

    Args:
        tokens: token strings (e.g. :func:`steerlab.steering.scores.token_projections`).
        scores: one value per token.
        per_row: tokens per row of the grid.
        center: the value drawn white: a number, ``"mean"`` (of these scores) or None (0).
        title: figure title.
    """
    vals, c = _centered(scores, center)
    if len(vals) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(vals)} scores")
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    n_rows = math.ceil(len(vals) / per_row)
    z: list[list[float | None]] = [[None] * per_row for _ in range(n_rows)]
    text = [[""] * per_row for _ in range(n_rows)]
    hover = [[""] * per_row for _ in range(n_rows)]
    for i, (t, shown, v) in enumerate(zip(tokens, display_tokens(tokens), vals)):
        r, k = divmod(i, per_row)
        z[r][k] = v
        text[r][k] = shown
        hover[r][k] = f"#{i} {html.escape(repr(t))}<br>projection {v + c:.3f}"
    m = max(abs(v) for v in vals) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", customdata=hover, colorscale="RdBu",
        zmid=0, zmin=-m, zmax=m, hovertemplate="%{customdata}<extra></extra>", xgap=1, ygap=1,
        colorbar={"title": {"text": f"projection (centred at {c:.2f})" if c else "projection",
                            "side": "right"},
                  "orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "ypad": 6,
                  "len": 0.6, "thickness": 12, "nticks": 7},
    ))  # fmt: skip
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    plot_px = _ROW_PX * max(n_rows, 2)
    fig.update_layout(title=title, template="plotly_white", margin=_MARGIN,
                      height=_MARGIN["t"] + _MARGIN["b"] + plot_px)  # fmt: skip
    return fig


def token_projection_html(
    tokens: Sequence[str], scores: Any, *, center: float | str | None = "mean"
) -> str:
    """The tokens as ``<span>``s with a red (negative) to blue (positive) background."""
    vals, c = _centered(scores, center)
    if len(vals) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(vals)} scores")
    m = max(abs(v) for v in vals) or 1.0
    spans = []
    for t, v in zip(tokens, vals):
        a = min(1.0, abs(v) / m)
        rgb = "33,102,172" if v >= 0 else "178,24,43"
        spans.append(
            f'<span title="{v + c:.3f}" style="background:rgba({rgb},{a:.2f});'
            f'white-space:pre-wrap">{html.escape(t)}</span>'
        )
    return '<div style="font-family:monospace;line-height:1.8">' + "".join(spans) + "</div>"
