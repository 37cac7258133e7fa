"""Figures for concept erasure: accuracy vs rank, probe accuracy by layer, PCA before/after.

Inputs are the results of :mod:`steerlab.erasure.evaluation` and plain activations; the
figures are Plotly objects for notebooks or :func:`steerlab.views.report.write_html`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from steerlab.views.common import ref_line
from steerlab.views.pca import pca_summary

__all__ = ["accuracy_vs_rank_figure", "erasure_pca_figure", "probe_by_site_figure"]

_STYLE = {
    "leace": {"color": "#1f77b4", "symbol": "diamond", "name": "LEACE"},
    "rlace": {"color": "#d62728", "symbol": "circle", "name": "R-LACE"},
    "inlp": {"color": "#2ca02c", "symbol": "square", "name": "INLP"},
}


_SPREAD_ABOVE = 16
"""Largest rank drawn on a plain linear axis; beyond it ranks are spread on a log2 scale."""


def _rank_position(rank: float, spread: bool) -> float:
    """Where a rank sits on the x axis: itself, or ``log2(rank)`` with rank 0 one step left
    of rank 1 (a log axis would drop rank 0, the accuracy without erasure)."""
    if not spread:
        return float(rank)
    return -1.0 if rank == 0 else math.log2(rank)


def accuracy_vs_rank_figure(curves: Any, *, title: str | None = None) -> go.Figure:
    """Held-out probe accuracy against the rank of the edit, one line per method.

    Args:
        curves: :class:`steerlab.erasure.evaluation.RankCurves` (or its ``to_json()`` dict).
        title: figure title.

    The dashed line is the majority rate of the test labels; a dotted line marks what a
    constant probe (the training majority) scores when that differs. Every curve starts at
    rank 0, the accuracy without erasure. When some rank exceeds 16 (INLP's long runs), the
    x axis spreads ranks on a log2 scale with rank 0 drawn one step left of rank 1 and ticks
    labelled with the ranks themselves.
    """
    data = curves.to_json() if hasattr(curves, "to_json") else dict(curves)
    if not data.get("curves"):
        raise ValueError("no curves to plot")
    max_rank = max(max(c["ranks"]) for c in data["curves"].values())
    spread = max_rank > _SPREAD_ABOVE
    fig = go.Figure()
    for method, c in data["curves"].items():
        style = _STYLE.get(method, {"name": method})
        mse = c.get("mse") or [float("nan")] * len(c["ranks"])
        fig.add_trace(
            go.Scatter(
                x=[_rank_position(r, spread) for r in c["ranks"]],
                y=c["accuracy"],
                mode="lines+markers",
                name=style["name"],
                line={"color": style.get("color")},
                marker={"symbol": style.get("symbol"), "size": 9},
                customdata=np.asarray([[r, m] for r, m in zip(c["ranks"], mse)], dtype=float),
                hovertemplate=(
                    f"{style['name']} rank %{{customdata[0]}}: accuracy %{{y:.3f}}"
                    "<br>mean squared change %{customdata[1]:.3g}<extra></extra>"
                ),
            )
        )
    maj = data["majority"]
    ref_line(fig, maj, label=f"majority {maj:.3f}", position="bottom right")
    const = data.get("constant")
    if const is not None and abs(const - maj) > 1e-9:  # the training majority is not the test's
        ref_line(fig, const, label=f"constant (training majority) {const:.3f}",
                 line={"dash": "dot"}, position="top right")  # fmt: skip
    if spread:
        ticks = [0] + [2**i for i in range(int(math.log2(max_rank)) + 1)]
        if max_rank not in ticks:
            ticks.append(max_rank)
        xaxis = {"tickvals": [_rank_position(t, True) for t in ticks],
                 "ticktext": ["0 (none)"] + [str(t) for t in ticks[1:]],
                 "range": [-1.5, math.log2(max_rank) + 0.3]}  # fmt: skip
    else:
        xaxis = {"range": [-0.5, max_rank + 0.5], "dtick": 1 if max_rank <= 8 else 2}
    lowest = min(0.4, maj - 0.05, (const if const is not None else 1) - 0.05)
    fig.update_layout(
        title=title or "Held-out probe accuracy after erasure vs rank of the edit",
        xaxis={"title": "rank of the edit (directions erased)", "type": "linear", **xaxis},
        yaxis_title="held-out probe accuracy",
        yaxis={"range": [lowest, 1.02], "tickformat": ".0%"},
        template="plotly_white",
        height=450,
    )
    return fig


def probe_by_site_figure(
    scores: Mapping[str, Any], majority: float | None = None, *, title: str | None = None
) -> go.Figure:
    """Held-out probe accuracy at each site, the best one marked (ties: lower log-loss).

    Args:
        scores: site -> :class:`~steerlab.erasure.evaluation.SiteProbe` (``probe_by_site``'s
            result), an ``(accuracy, log_loss)`` pair, or its JSON dict.
        majority: the majority rate, drawn as a dashed line.
        title: figure title.
    """
    if not scores:
        raise ValueError("no sites to plot")
    sites = list(scores)

    def field(v: Any, name: str, i: int) -> float:  # SiteProbe, (acc, loss) or a JSON dict
        return float(v[name] if isinstance(v, Mapping) else v[i])

    acc = [field(scores[s], "accuracy", 0) for s in sites]
    loss = [field(scores[s], "log_loss", 1) for s in sites]
    best = max(range(len(sites)), key=lambda i: (acc[i], -loss[i]))
    fig = go.Figure(
        go.Scatter(x=sites, y=acc, mode="lines+markers", name="probe accuracy",
                   hovertemplate="%{x}: %{y:.3f}<extra></extra>")
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=[sites[best]], y=[acc[best]], mode="markers", name=f"best: {sites[best]}",
                   marker={"size": 14, "symbol": "star", "color": "crimson"})
    )  # fmt: skip
    if majority is not None:
        ref_line(fig, majority, label=f"majority {majority:.3f}", position="bottom right")
    shown = acc + ([majority] if majority is not None else [])
    lo, hi = min(shown), max(shown)
    pad = max(0.02, 0.08 * (hi - lo))  # the majority line and its label inside the axes
    fig.update_layout(
        title=title or "Held-out probe accuracy by site",
        xaxis_title="site",
        yaxis_title="held-out accuracy",
        yaxis={"tickformat": ".0%", "range": [lo - pad, min(hi + pad, 1.0 + pad)]},
        template="plotly_white",
        height=400,
    )
    return fig


def erasure_pca_figure(
    before: Tensor | np.ndarray,
    after: Tensor | np.ndarray | Mapping[str, Tensor | np.ndarray],
    labels: Sequence[Any] | np.ndarray | Tensor,
    *,
    class_names: Sequence[str] | None = None,
    basis: Literal["own", "before"] = "own",
    title: str | None = None,
    max_points: int = 3000,
    seed: int = 0,
) -> go.Figure:
    """PC1 vs PC2 of the activations before and after erasure, coloured by the concept.

    Args:
        before: activations ``[n, d]``.
        after: erased activations ``[n, d]``, or several as ``{panel title: acts}``.
        labels: ``n`` class indices (or any class values).
        class_names: names of the class indices (e.g. ``["female", "male"]``).
        basis: ``"own"``: each panel's own PCA (does the concept still show among the largest
            directions?); ``"before"``: every panel on the PCs of ``before`` (same axes).
        title: figure title.
        max_points: points drawn per panel (a seeded subsample; PCA uses all rows).
        seed: seed of the subsample.
    """
    panels = {"before": before}
    panels.update(after if isinstance(after, Mapping) else {"after": after})
    arrays = {k: torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).detach()
              for k, v in panels.items()}  # fmt: skip
    n = arrays["before"].shape[0]
    for k, v in arrays.items():
        if v.ndim != 2 or v.shape[0] != n:
            raise ValueError(f"{k}: expected [{n}, d] activations, got {tuple(v.shape)}")
    lab = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if lab.shape[0] != n:
        raise ValueError(f"labels has {lab.shape[0]} entries, activations have {n} rows")
    if class_names is not None and lab.dtype.kind in "iu":
        lab = np.asarray([class_names[int(i)] for i in lab])
    lab = lab.astype(str)
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))

    ref = pca_summary(arrays["before"], n_components=2) if basis == "before" else None
    fig = make_subplots(rows=1, cols=len(arrays), subplot_titles=list(arrays))
    colors = ["#e377c2", "#17becf", "#ff7f0e", "#9467bd", "#8c564b", "#bcbd22"]
    classes = sorted(set(lab.tolist()))
    for col, (name, x) in enumerate(arrays.items(), start=1):
        if ref is None:
            s = pca_summary(x, n_components=2)
            xy, ratio = s.coords.numpy(), s.explained_variance_ratio.numpy()
        else:
            xy = ((x.double() - ref.mean) @ ref.components.T).numpy()
            ratio = ref.explained_variance_ratio.numpy()
        for i, cls in enumerate(classes):
            m = lab[rows] == cls
            fig.add_trace(
                go.Scattergl(
                    x=xy[rows][m, 0], y=xy[rows][m, 1], mode="markers", name=cls,
                    legendgroup=cls, showlegend=col == 1,
                    marker={"size": 5, "color": colors[i % len(colors)], "opacity": 0.7},
                    hovertemplate=f"{cls}<extra>{name}</extra>",
                ),
                row=1, col=col,
            )  # fmt: skip
        axes = "PC of before" if ref is not None else "PC"
        fig.update_xaxes(title_text=f"{axes}1 ({100 * ratio[0]:.1f}% var)", row=1, col=col)
        fig.update_yaxes(title_text=f"{axes}2 ({100 * ratio[1]:.1f}% var)", row=1, col=col)
    fig.update_layout(
        title=title or f"PCA of {n} activations before and after erasure",
        template="plotly_white",
        height=450,
        legend={"title": {"text": "concept"}},
    )
    return fig
