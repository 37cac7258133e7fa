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
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

__all__ = ["sweep_figure", "token_projection_figure", "token_projection_html"]

_PANELS = (
    ("concept", "concept score"),
    ("perplexity", "perplexity (unsteered model)"),
    ("repetition", "repetition rate"),
    ("fluency", "fluency (normalised)"),
    ("relevance", "relevance (cosine to unsteered)"),
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
                        horizontal_spacing=0.08, vertical_spacing=0.14)  # fmt: skip
    alphas = [r["alpha"] for r in points]
    for i, (key, _) in enumerate(_PANELS):
        row, col = i // 3 + 1, i % 3 + 1
        if key == "combined":
            series = [("towards +", "combined_pos", _POLE_COLOUR[1]),
                      ("towards −", "combined_neg", _POLE_COLOUR[-1])]  # fmt: skip
        else:
            series = [(key, key, "#4c72b0")]
        for name, field, colour in series:
            ys = [r[field] for r in points]
            fig.add_trace(go.Scatter(
                x=alphas, y=ys, mode="lines+markers", name=name, line={"color": colour},
                legendgroup=name, showlegend=key in ("concept", "combined"),
                hovertemplate=f"α=%{{x:g}}<br>{field}=%{{y:.3f}}<extra></extra>",
            ), row=row, col=col)  # fmt: skip
        for pole, r in base.items():
            field = ("combined_pos" if pole > 0 else "combined_neg") if key == "combined" else key
            y = r.get(field)
            if y is None or (isinstance(y, float) and math.isnan(y)):
                continue
            fig.add_hline(y=y, line_dash="dash", line_color=_POLE_COLOUR[pole], row=row, col=col,
                          annotation_text=f"prompt {'+' if pole > 0 else '−'}",
                          annotation_font_size=9, annotation_position="top left")  # fmt: skip
        fig.update_xaxes(title_text="α", row=row, col=col)
        if key == "perplexity":
            fig.update_yaxes(type="log", row=row, col=col)
    fig.update_layout(
        title=title or f"Strength sweep: {concept} (dashed: prompting baselines)",
        height=700, template="plotly_white", legend={"orientation": "h", "y": -0.12},
    )  # fmt: skip
    return fig


def _centered(scores: Any, center: float | str | None) -> tuple[list[float], float]:
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if len(s) == 0:
        raise ValueError("no tokens")
    c = float(s.mean()) if center == "mean" else float(center or 0.0)
    return (s - c).tolist(), c


def token_projection_figure(
    tokens: Sequence[str],
    scores: Any,
    *,
    per_row: int = 16,
    center: float | str | None = "mean",
    title: str = "Projection of each token on the direction",
) -> go.Figure:
    """A heatmap of a text's tokens in reading order, coloured by projection minus ``center``.

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
    n_rows = math.ceil(len(vals) / per_row)
    z = [[None] * per_row for _ in range(n_rows)]
    text = [[""] * per_row for _ in range(n_rows)]
    hover = [[""] * per_row for _ in range(n_rows)]
    for i, (t, v) in enumerate(zip(tokens, vals)):
        r, k = divmod(i, per_row)
        z[r][k] = v
        text[r][k] = t.replace("\n", "⏎")
        hover[r][k] = f"#{i} {html.escape(repr(t))}<br>projection {v + c:.3f}"
    m = max(abs(v) for v in vals) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", customdata=hover, colorscale="RdBu",
        zmid=0, zmin=-m, zmax=m, hovertemplate="%{customdata}<extra></extra>", xgap=1, ygap=1,
        colorbar={"title": f"proj − {c:.2f}" if c else "projection"},
    ))  # fmt: skip
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title=title, template="plotly_white", height=120 + 34 * n_rows)
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
