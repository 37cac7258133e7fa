"""Principal directions of a cloud of activations, and the figure that shows them.

PCA of centred activations ``X - μ``: the principal directions are the eigenvectors of the
covariance ``Σ = (X - μ)ᵀ(X - μ) / (n - 1)``, and the explained-variance ratio of component
``i`` is ``λ_i / Σ_j λ_j`` over the whole spectrum.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from steerlab.datasets.corpora import CONTEXT_CLOSE, CONTEXT_OPEN
from steerlab.views.common import display_token

THRESHOLDS = (0.90, 0.99)
"""Cumulative explained-variance levels marked on the figure."""

_BLOCK = 65536  # rows per block, so that a float64 copy of a large matrix is never made
_GL_ABOVE = 2000  # points above which the scatter uses WebGL


class PCASummary(NamedTuple):
    """The top principal components of a set of activations (float64, on the CPU)."""

    components: Float[Tensor, "k d_model"]
    """Orthonormal principal directions, by decreasing variance. Each sign is fixed so that
    the entry of largest magnitude is positive."""
    explained_variance_ratio: Float[Tensor, " k"]
    """Variance along each direction over the total variance (all directions)."""
    mean: Float[Tensor, " d_model"]
    """The mean activation μ."""
    coords: Float[Tensor, "n k"]
    """``(X - μ) @ componentsᵀ``."""
    spectrum: Float[Tensor, " d"] | None = None
    """Explained-variance ratio of every direction (all ``d``, descending), for effective
    ranks beyond the ``k`` kept components."""


def pca_summary(acts: Tensor | np.ndarray, n_components: int = 50) -> PCASummary:
    """PCA of ``acts`` in float64.

    Args:
        acts: activations ``[n, d]`` (torch or numpy; any float dtype or device).
        n_components: components to keep, clipped to ``d``.

    Returns:
        :class:`PCASummary`.
    """
    summary, _ = _pca(acts, n_components)
    return summary


def _pca(acts: Tensor | np.ndarray, n_components: int) -> tuple[PCASummary, Tensor]:
    """PCA, plus the explained-variance ratio of the whole spectrum (for thresholds)."""
    x = torch.as_tensor(acts).detach().cpu()
    if x.ndim != 2:
        raise ValueError(f"acts must have shape [n, d], got {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 points, got {n}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    k = min(n_components, d)

    # Two passes over float64 blocks: the mean, then the centred scatter matrix. The
    # eigendecomposition of the d×d covariance costs n·d² + d³ instead of an SVD of X, and in
    # float64 its eigenvalues are accurate far below what a ratio on a plot shows.
    mean = torch.zeros(d, dtype=torch.float64)
    for block in x.split(_BLOCK):
        mean += block.double().sum(0)
    mean /= n
    scatter = torch.zeros(d, d, dtype=torch.float64)
    for block in x.split(_BLOCK):
        centred = block.double() - mean
        scatter += centred.T @ centred
    scatter = (scatter + scatter.T) / 2  # rounding may leave it slightly non-symmetric
    eigvals, eigvecs = torch.linalg.eigh(scatter / (n - 1))
    eigvals = eigvals.flip(0).clamp_min(0)  # descending; tiny negatives are rounding
    eigvecs = eigvecs.flip(1)
    total = eigvals.sum()
    if total <= 0:
        raise ValueError("the activations have zero variance")
    ratio = eigvals / total

    components = eigvecs[:, :k].T.contiguous()
    biggest = components.abs().argmax(1, keepdim=True)
    components *= components.gather(1, biggest).sign()
    coords = torch.cat([(b.double() - mean) @ components.T for b in x.split(_BLOCK)])
    return PCASummary(components, ratio[:k].clone(), mean, coords, ratio), ratio


def components_for(spectrum: Tensor, var: float) -> int:
    """The fewest leading directions whose explained-variance ratios sum to at least ``var``
    (the effective rank at ``var``; a 1e-12 slack absorbs rounding at exact thresholds)."""
    cumulative = torch.as_tensor(spectrum).double().cumsum(0)
    return min(int((cumulative < var - 1e-12).sum()) + 1, cumulative.numel())


def principal_directions(
    acts: Tensor | np.ndarray,
    *,
    tokens: Sequence[str] | None = None,
    contexts: Sequence[str] | None = None,
    labels: Sequence[Any] | np.ndarray | Tensor | None = None,
    label_name: str = "label",
    n_components: int = 50,
    max_points: int = 5000,
    title: str | None = None,
    seed: int = 0,
    exclude: Sequence[bool] | np.ndarray | Tensor | None = None,
    exclude_name: str = "attention-sink rows",
) -> go.Figure:
    """Scatter of the first two principal components beside the explained-variance spectrum.

    PCA uses every row of ``acts`` except the ``exclude`` rows; only the scatter is subsampled.
    Excluded rows (e.g. attention sinks, whose norms are many times the rest and would take
    PC1 for themselves) are projected on the same components and drawn apart, as red crosses,
    with the axes fitted to the other rows: the legend says how many lie outside them. The left panel plots PC1
    against PC2, with each point's token and context in its hover label (the token is bold in
    the context when marked as :func:`steerlab.datasets.token_contexts` marks it); numeric
    ``labels`` colour the points on a continuous scale, other labels give one trace per class.
    The right panel shows the explained-variance ratio per component (bars, left axis) and its
    cumulative sum (line, right axis), with the components needed for 90% and 99% marked.

    Args:
        acts: activations ``[n, d]`` with ``d >= 2``.
        tokens: ``n`` strings, shown in the hover label.
        contexts: ``n`` strings, shown in the hover label.
        labels: ``n`` values (numbers, or classes of any type).
        label_name: name of the labels, for the colour bar, legend and hover.
        n_components: components computed and shown on the right.
        max_points: points drawn in the scatter, chosen with a RNG seeded by ``seed``.
        title: figure title; by default states the rows fitted, left out and drawn, and ``d``.
        seed: seed for the subsample.
        exclude: ``n`` booleans: rows left out of the fit and drawn apart.
        exclude_name: what the excluded rows are, for the legend and title.

    Returns:
        The figure.
    """
    x_all = torch.as_tensor(acts).detach().cpu()
    n_all = x_all.shape[0] if x_all.ndim == 2 else 0
    drop = _mask(exclude, n_all)
    keep_idx = np.flatnonzero(~drop)
    summary, full_ratio = _pca(x_all[torch.from_numpy(keep_idx)] if drop.any() else x_all,
                               n_components)  # fmt: skip
    n, d = summary.coords.shape[0], summary.mean.shape[0]
    if d < 2:
        raise ValueError("a PC1-vs-PC2 scatter needs activations with d >= 2")
    for name, values in (("tokens", tokens), ("contexts", contexts), ("labels", labels)):
        if values is not None and len(values) != n_all:
            raise ValueError(f"{name} has {len(values)} entries, acts has {n_all} rows")

    pick = np.arange(n)
    if n > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    rows = keep_idx[pick]  # indices into acts
    xy = summary.coords[pick, :2].numpy()
    hover = [hover_label(int(i), tokens, contexts, labels, label_name) for i in rows]

    cumulative = full_ratio.cumsum(0)
    needed = {t: int((cumulative < t - 1e-12).sum()) + 1 for t in THRESHOLDS}
    k = len(summary.explained_variance_ratio)
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.14,
        specs=[[{}, {"secondary_y": True}]],
        subplot_titles=(
            "PC1 vs PC2",
            "explained variance · " + " · ".join(f"{t:.0%}: {needed[t]} PCs" for t in THRESHOLDS),
        ),
    )
    scatter_cls = go.Scattergl if len(rows) > _GL_ABOVE else go.Scatter
    common = {"mode": "markers",
              "hovertemplate": "%{text}<br>PC1 %{x:.2f} · PC2 %{y:.2f}<extra></extra>"}  # fmt: skip
    label_values = None if labels is None else _as_array(labels)
    if label_values is None:
        fig.add_trace(
            scatter_cls(
                x=xy[:, 0],
                y=xy[:, 1],
                text=hover,
                name="points",
                marker={"size": 5},
                showlegend=False,
                **common,
            ),
            row=1,
            col=1,
        )
    elif label_values.dtype.kind in "iuf":
        # plotly leaves Figure.layout untyped (stub gap)
        domain_end = fig.layout.xaxis.domain[1]  # pyright: ignore[reportAttributeAccessIssue]
        fig.add_trace(
            scatter_cls(
                x=xy[:, 0],
                y=xy[:, 1],
                text=hover,
                name=label_name,
                showlegend=False,
                marker={
                    "size": 5,
                    "color": label_values[rows],
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {
                        "title": {"text": label_name},
                        "x": domain_end + 0.01,
                        "len": 0.9,
                        "thickness": 12,
                    },
                },
                **common,
            ),
            row=1,
            col=1,
        )
    else:
        classes = label_values[rows].astype(str)
        for cls in sorted(set(classes.tolist())):
            mask = classes == cls
            fig.add_trace(
                scatter_cls(
                    x=xy[mask, 0],
                    y=xy[mask, 1],
                    text=[h for h, m in zip(hover, mask) if m],
                    name=cls,
                    legendgroup=cls,
                    marker={"size": 5},
                    **common,
                ),
                row=1,
                col=1,
            )

    ratio = summary.explained_variance_ratio.numpy()
    components = np.arange(1, k + 1)
    fig.add_trace(
        go.Bar(
            x=components,
            y=ratio,
            name="per component",
            showlegend=False,
            hovertemplate="PC%{x}: %{y:.2%}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=components,
            y=cumulative[:k].numpy(),
            mode="lines",
            name="cumulative",
            showlegend=False,
            hovertemplate="PC1–%{x}: %{y:.2%}<extra></extra>",
        ),
        row=1,
        col=2,
        secondary_y=True,
    )
    for threshold, count in needed.items():
        if count > k:
            continue  # not reached within the components shown; the subplot title says where
        y = float(cumulative[count - 1])
        fig.add_trace(
            go.Scatter(
                x=[count],
                y=[y],
                mode="markers",
                name=f"{threshold:.0%}",
                marker={"size": 9, "symbol": "diamond", "color": "crimson"},
                showlegend=False,
                hovertemplate=f"{threshold:.0%} at %{{x}} PCs<extra></extra>",
            ),
            row=1,
            col=2,
            secondary_y=True,
        )
        fig.add_annotation(
            x=count,
            y=y,
            text=f"{threshold:.0%}: {count}",
            showarrow=True,
            arrowhead=2,
            ax=25,
            ay=25,
            row=1,
            col=2,
            secondary_y=True,
        )

    n_out = int(drop.sum())
    if n_out:
        _add_excluded(fig, x_all, drop, summary, xy, tokens, contexts, labels, label_name,
                      exclude_name, max_points, seed)  # fmt: skip

    pct = 100 * ratio
    fig.update_xaxes(title_text=f"PC1 ({pct[0]:.1f}% var)", row=1, col=1)
    fig.update_yaxes(title_text=f"PC2 ({pct[1]:.1f}% var)", row=1, col=1)
    fig.update_xaxes(title_text="component", row=1, col=2)
    fig.update_yaxes(title_text="explained variance ratio", tickformat=".1%", row=1, col=2)
    fig.update_yaxes(
        title_text="cumulative", tickformat=".0%", range=[0, 1.02], row=1, col=2, secondary_y=True
    )
    shown = f"{len(rows):,} of them drawn" if len(rows) < n else "all drawn"
    left_out = f", {n_out:,} {exclude_name} left out" if n_out else ""
    fig.update_layout(
        title=title or f"Principal directions: PCA of {n:,} rows (d={d}{left_out}; {shown})",
        # below the plots, clear of the colour bar and the cumulative axis on the right
        legend={
            "title": {"text": label_name if labels is not None else ""},
            "orientation": "h",
            "y": -0.2,
        },
        template="plotly_white",
        height=520,
    )
    return fig


def _mask(exclude: Any, n: int) -> np.ndarray:
    if exclude is None:
        return np.zeros(n, dtype=bool)
    m = _as_array(exclude).astype(bool).reshape(-1)
    if m.shape[0] != n:
        raise ValueError(f"exclude has {m.shape[0]} entries, acts has {n} rows")
    if (~m).sum() < 2:
        raise ValueError("exclude leaves fewer than 2 rows to fit")
    return m


def _add_excluded(
    fig: go.Figure,
    x: Tensor,
    drop: np.ndarray,
    summary: PCASummary,
    xy: np.ndarray,
    tokens: Sequence[str] | None,
    contexts: Sequence[str] | None,
    labels: Any,
    label_name: str,
    name: str,
    max_points: int,
    seed: int,
) -> None:
    """The rows left out of the fit, on the same components, with the axes kept to the rest."""
    idx = np.flatnonzero(drop)
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed + 1).choice(idx, max_points, replace=False))
    out = ((x[torch.from_numpy(idx)].double() - summary.mean) @ summary.components[:2].T).numpy()
    # the axes cover the fitted rows (0.5-99.5th percentiles, padded): the excluded rows
    # would otherwise squash them into a corner
    lo, hi = np.percentile(xy, [0.5, 99.5], axis=0)
    pad = 0.08 * (hi - lo) + 1e-9
    lo, hi = lo - pad, hi + pad
    inside = ((out >= lo) & (out <= hi)).all(1)
    label = f"{name} (left out of the fit; {int((~inside).sum())} of {len(idx)} beyond the axes)"
    fig.add_trace(
        go.Scatter(
            x=np.clip(out[:, 0], lo[0], hi[0]),
            y=np.clip(out[:, 1], lo[1], hi[1]),
            mode="markers",
            name=label,
            marker={"symbol": "x", "size": 7, "color": "crimson"},
            customdata=out,
            text=[hover_label(int(i), tokens, contexts, labels, label_name) for i in idx],
            hovertemplate="%{text}<br>PC1 %{customdata[0]:.2f} · PC2 %{customdata[1]:.2f}"
            "<br>(drawn at the edge when beyond the axes)<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.update_xaxes(range=[lo[0], hi[0]], row=1, col=1)
    fig.update_yaxes(range=[lo[1], hi[1]], row=1, col=1)


def _as_array(labels: Sequence[Any] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(labels, Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


def hover_label(
    i: int,
    tokens: Sequence[str] | None,
    contexts: Sequence[str] | None,
    labels: Any,
    label_name: str,
) -> str:
    """HTML hover label of row ``i``: its index, token, context (the token in bold) and label;
    every user string is escaped. ``tokens``, ``contexts`` and ``labels`` may each be None."""
    lines = [f"#{i}"]
    if tokens is not None:
        lines.append(f"token: <b>{_escape(repr(display_token(tokens[i])))}</b>")
    if contexts is not None:
        context = _escape(contexts[i])
        if tokens is not None:
            marked = _escape(f"{CONTEXT_OPEN}{tokens[i]}{CONTEXT_CLOSE}")
            context = context.replace(marked, f"<b>{_escape(tokens[i])}</b>", 1)
        lines.append(context.replace("\n", "↵<br>"))
    if labels is not None:
        value = labels[i]
        value = value.item() if isinstance(value, Tensor | np.generic) else value
        lines.append(f"{_escape(label_name)}: {_escape(str(value))}")
    return "<br>".join(lines)


def _escape(text: str) -> str:
    # Plotly renders hover labels as a small subset of HTML: escape markup, keep quotes as is.
    return html.escape(text, quote=False)
