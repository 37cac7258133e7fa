"""Figures for probes: per-layer curves, entities in the top PLS components, flip rates.

Each builder returns a ``plotly.graph_objects.Figure``; :func:`steerlab.views.write_html`
writes them into one offline report.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from torch import Tensor

from steerlab.views.common import gap_at_zero, pretty_label, ref_line

__all__ = ["flip_rates", "layer_curves", "pls_components"]


def layer_curves(
    curves: Mapping[str, Sequence[dict[str, Any]]] | Sequence[dict[str, Any]],
    metrics: Sequence[str] = ("r2",),
    *,
    title: str = "Probe quality per layer",
    y_title: str | None = None,
    reference: Mapping[str, float] | None = None,
    y_range: Sequence[float] | None = None,
) -> go.Figure:
    """Lines of per-layer metrics (held-out R², accuracy, selectivity, ...).

    Legend entries and the default y title spell the metrics out (:func:`~steerlab.views.
    common.pretty_label`: ``task_acc`` → "task accuracy").

    Args:
        curves: sweep rows (dicts with ``layer`` and the metrics), or a mapping from a name
            (e.g. the attribute) to such rows; each (name, metric) pair is one line.
        metrics: keys of the rows to draw.
        title: figure title.
        y_title: y-axis title (default the metrics' names, spelled out).
        reference: named constants drawn as dashed horizontal lines (e.g. a majority rate).
        y_range: fixed y-axis range (default: autorange).
    """
    groups = {"": curves} if not isinstance(curves, Mapping) else dict(curves)
    if not groups or not any(groups.values()):
        raise ValueError("no sweep rows to draw")
    fig = go.Figure()
    for name, rows in groups.items():
        for m in metrics:
            pts = sorted((r["layer"], r[m]) for r in rows if m in r)
            if not pts:
                raise KeyError(f"metric {m!r} is not in the rows of {name or 'the sweep'}")
            label = f"{name} {pretty_label(m)}".strip()
            fig.add_trace(go.Scatter(
                x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label,
                hovertemplate=f"{html.escape(label)}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>",
            ))  # fmt: skip
    for name, value in (reference or {}).items():
        ref_line(fig, value, label=f"{name} {value:.3f}", position="bottom right")
    layers = sorted({r["layer"] for rows in groups.values() for r in rows})
    if len(layers) <= 16:  # a tick at every layer, none between them
        fig.update_xaxes(tickvals=layers)
    fig.update_layout(title=title, xaxis_title="layer",
                      yaxis_title=y_title or ", ".join(pretty_label(m) for m in metrics),
                      template="plotly_white", hovermode="x unified")  # fmt: skip
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


def pls_components(
    scores: Tensor,
    values: Tensor | Sequence[float],
    names: Sequence[str],
    *,
    title: str = "Entities in the top two PLS components",
    value_name: str = "value",
) -> go.Figure:
    """Entities in the plane of the first two PLS scores, coloured by their value.

    Args:
        scores: ``[n, k >= 2]`` PLS scores (``PLSProbe.transform``), one row per entity (e.g.
            the mean over the entity's prompts).
        values: ``[n]`` attribute values for the colour scale.
        names: ``[n]`` entity names, shown on hover.
        title: figure title.
        value_name: colour-bar title.
    """
    s = torch.as_tensor(scores).detach().double().cpu()
    v = torch.as_tensor(values).detach().double().cpu().reshape(-1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must be [n, k >= 2], got {tuple(s.shape)}")
    if not (len(names) == len(v) == s.shape[0]):
        raise ValueError(f"{s.shape[0]} score rows, {len(v)} values, {len(names)} names")
    text = [f"{html.escape(str(n))}<br>{value_name} = {float(x):g}" for n, x in zip(names, v)]
    fig = go.Figure(go.Scatter(
        x=s[:, 0].tolist(), y=s[:, 1].tolist(), mode="markers", text=text,
        hovertemplate="%{text}<extra></extra>",
        marker={"color": v.tolist(), "colorscale": "Viridis", "size": 8,
                "colorbar": {"title": value_name}, "line": {"width": 0.5, "color": "#333"}},
    ))  # fmt: skip
    fig.update_layout(title=title, xaxis_title="PLS component 1", yaxis_title="PLS component 2",
                      template="plotly_white")  # fmt: skip
    return fig


def flip_rates(
    rows: Sequence[dict[str, Any]],
    *,
    title: str = "Answer flips vs steering strength",
    rate: str = "flip_rate",
) -> go.Figure:
    """α vs answer-flip rate per direction, with binomial (Wilson) 95% intervals.

    Args:
        rows: dicts with ``direction`` (e.g. ``"pls"``, ``"random"``), ``alpha``, ``rate``
            and optionally ``ci_low``/``ci_high`` (the interval) and ``flips``/``n``.
        title: figure title.
        rate: key of the rate to draw.
    """
    if not rows:
        raise ValueError("no flip-rate rows to draw")
    fig = go.Figure()
    for d in dict.fromkeys(r["direction"] for r in rows):
        pts = sorted((r for r in rows if r["direction"] == d), key=lambda r: r["alpha"])
        err = None
        if all("ci_low" in r and "ci_high" in r for r in pts):
            _, hi = gap_at_zero([r["alpha"] for r in pts], [r["ci_high"] - r[rate] for r in pts])
            _, lo = gap_at_zero([r["alpha"] for r in pts], [r[rate] - r["ci_low"] for r in pts])
            err = {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}
        # no line across α = 0 when nothing was measured there
        x, y = gap_at_zero([r["alpha"] for r in pts], [r[rate] for r in pts])
        _, text = gap_at_zero([r["alpha"] for r in pts],
                              [f"{r.get('flips', '')}/{r.get('n', '')}" for r in pts])  # fmt: skip
        fig.add_trace(go.Scatter(
            x=x, y=y, error_y=err, mode="lines+markers", name=str(d),
            text=text, hovertemplate=f"{html.escape(str(d))}<br>α=%{{x}}: %{{y:.3f}} "
                                     "(%{text})<extra></extra>",
        ))  # fmt: skip
    fig.update_layout(title=title, xaxis_title="α (steering strength)",
                      yaxis_title=pretty_label(rate), template="plotly_white")  # fmt: skip
    return fig
