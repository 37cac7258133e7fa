"""Figures for multi-subspace steering (MSRS): scores per method and gates over a text.

- :func:`attribute_scores_figure` — per-attribute concept scores (and fluency, relevance) of each
  method, one panel per steering condition (each attribute alone, all together).
- :func:`interference_figure` — how much steering attribute ``i`` moves attribute ``j``'s score,
  one heatmap per method.
- :func:`gate_figure` — a text's tokens against each block's gate ``m(h_t)`` and projection
  ``‖R_i h_t‖`` (from :meth:`steerlab.steering.msrs.MSRS.trace`), with the chosen tokens marked.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from steerlab.views.common import display_tokens

__all__ = ["attribute_scores_figure", "gate_figure", "interference_figure"]

_TICK_PX = 16  # horizontal room of one rotated token label
_MAX_WIDTH = 1400  # wider figures would scroll sideways in a page

_PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def attribute_scores_figure(
    scores: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    metrics: Sequence[str] | None = None,
    title: str = "Per-attribute scores by method",
) -> go.Figure:
    """Grouped bars: one panel per condition, x = metric, one bar per method.

    Args:
        scores: ``scores[condition][method][metric]`` (e.g. condition ``"sentiment"`` or
            ``"joint"``; metrics ``"concept:sentiment"``, ``"fluency"``, ``"relevance"``).
        metrics: which metrics to show, in order (default: every metric of the first entry).
        title: figure title.
    """
    conds = list(scores)
    if not conds:
        raise ValueError("no conditions to plot")
    first = next(iter(scores[conds[0]].values()))
    metrics = list(metrics or first)
    fig = make_subplots(rows=1, cols=len(conds), subplot_titles=[f"steer: {c}" for c in conds],
                        shared_yaxes=True, horizontal_spacing=0.04)  # fmt: skip
    methods: list[str] = []
    for c in conds:
        methods += [m for m in scores[c] if m not in methods]
    for col, c in enumerate(conds, 1):
        for k, m in enumerate(methods):
            if m not in scores[c]:
                continue
            vals = [scores[c][m].get(x, float("nan")) for x in metrics]
            fig.add_trace(go.Bar(name=m, x=metrics, y=vals, legendgroup=m, showlegend=col == 1,
                                 marker_color=_PALETTE[k % len(_PALETTE)],
                                 hovertemplate=f"{m}<br>%{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=1, col=col)  # fmt: skip
    fig.update_layout(barmode="group", title=title, height=420, width=max(600, 380 * len(conds)),
                      yaxis_title="score (0–1)")  # fmt: skip
    return fig


def interference_figure(
    deltas: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    title: str = "Interference: change of each attribute's score when steering one",
) -> go.Figure:
    """Heatmaps ``Δ[i][j]``: steering attribute ``i`` (row) changes ``j``'s score (column).

    Args:
        deltas: ``deltas[method][steered][scored]``.
        title: figure title.
    """
    methods = list(deltas)
    if not methods:
        raise ValueError("no methods to plot")
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods,
                        horizontal_spacing=0.08)  # fmt: skip
    for col, m in enumerate(methods, 1):
        rows = list(deltas[m])
        cols = list(next(iter(deltas[m].values())))
        z = [[deltas[m][r][c] for c in cols] for r in rows]
        fig.add_trace(go.Heatmap(z=z, x=cols, y=rows, zmid=0, colorscale="RdBu", zmin=-1, zmax=1,
                                 showscale=col == len(methods), texttemplate="%{z:.2f}",
                                 hovertemplate="steer %{y}<br>score %{x}: Δ %{z:.3f}"
                                               "<extra></extra>"),
                      row=1, col=col)  # fmt: skip
    fig.update_layout(title=title, height=380, width=max(500, 360 * len(methods)))
    return fig


def gate_figure(
    trace: Any,
    tokens: Sequence[str],
    *,
    chosen: Mapping[str, int] | None = None,
    start: int = 0,
    title: str = "MSRS gates and block projections over a text",
) -> go.Figure:
    """Two heatmaps over the tokens: the gate of every block and its projection ``‖R_i h_t‖``.

    Args:
        trace: a :class:`steerlab.steering.msrs.GateTrace` (``gates``, ``scores`` ``[pos,
            group]``, ``names``).
        tokens: the token strings, one per position of the trace.
        chosen: block name → position of its chosen (argmax) token, drawn as a marker.
        start: index of the first token to show (e.g. skip a long system prompt).
        title: figure title.
    """
    gates, scores, names = trace.gates, trace.scores, list(trace.names)
    if gates.shape[0] != len(tokens):
        raise ValueError(f"{gates.shape[0]} positions in the trace for {len(tokens)} tokens")
    if not 0 <= start < len(tokens):
        raise ValueError(f"start={start} is outside the {len(tokens)} tokens")
    shown = display_tokens(tokens)  # 'Ġhelpful' -> ' helpful', 'Ċ' -> '⏎'
    x = list(range(start, len(tokens)))
    labels = [f"{i}: {html.escape(shown[i])}" for i in x]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["gate m(h_t) per block", "projection ‖R_i h_t‖"])  # fmt: skip
    for row, (mat, scale) in enumerate(((gates, "Viridis"), (scores, "Magma")), 1):
        z = mat[start:].T.tolist()
        fig.add_trace(go.Heatmap(z=z, x=x, y=names, colorscale=scale, customdata=[labels] * len(names),
                                 colorbar={"len": 0.45, "y": 0.78 if row == 1 else 0.22},
                                 hovertemplate="%{y} @ %{customdata}<br>%{z:.3f}<extra></extra>"),
                      row=row, col=1)  # fmt: skip
    for name, pos in (chosen or {}).items():
        if name in names and pos >= start:
            fig.add_trace(go.Scatter(x=[pos], y=[name], mode="markers", showlegend=False,
                                     marker={"symbol": "x", "size": 12, "color": "white"},
                                     hovertext=f"{name}: chosen token {labels[pos - start]}",
                                     hoverinfo="text"),
                          row=2, col=1)  # fmt: skip
    # one tick label per _TICK_PX at most, so rotated labels never overlap
    width = min(_MAX_WIDTH, max(700, _TICK_PX * len(x) + 160))
    step = max(1, math.ceil(_TICK_PX * len(x) / (width - 160)))
    ticks = x[::step]
    fig.update_xaxes(tickvals=ticks, ticktext=[shown[i] for i in ticks], tickangle=-60,
                     tickfont={"family": "monospace"}, row=2, col=1)  # fmt: skip
    fig.update_layout(title=title, height=540, width=width, margin={"b": 110})
    return fig
