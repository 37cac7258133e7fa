"""Stage ``pca``: principal directions of every captured site, attention sinks left out.

PCA of the centred non-sink rows of each site (float64 covariance, :func:`steerlab.views.pca.
pca_summary`), and for comparison of all rows. The effective rank at a level ``v`` is the
fewest principal directions whose explained-variance ratios sum to ``v``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from steerlab.config import check_positive, check_types
from steerlab.datasets.corpora import token_contexts
from steerlab.report.context import Context
from steerlab.report.page import Section, plural
from steerlab.report.stages import StageResult
from steerlab.views.common import ref_line
from steerlab.views.pca import components_for, hover_label
from steerlab.views.saes import explained_variance_by_rank

__all__ = ["PCAConfig", "run", "section"]

LEVELS = (0.5, 0.9, 0.99)
"""Explained-variance levels of the effective ranks."""


@dataclass
class PCAConfig:
    """What the principal-directions section fits and draws."""

    scatter_layers: tuple[int, ...] = (3, 9, 21)
    """Layers drawn as PC1-vs-PC2 scatters (each must be a report layer)."""
    max_points: int = 1200
    """Non-sink tokens drawn per scatter (a seeded sample, the same tokens at every layer)."""
    max_sinks: int = 200
    """Sink tokens drawn apart per scatter."""
    atlas_components: int = 16
    """Top principal directions of the atlas layer kept for the subspace atlas."""
    context_window: int = 8
    """Tokens of context on each side in the hover labels."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "max_points", "max_sinks", "atlas_components", "context_window")


def run(ctx: Context, cfg: PCAConfig) -> StageResult:
    cap = ctx.result("capture")
    store = ctx.store()
    sink = cap.tensors["sink"].bool()
    rng = np.random.default_rng(ctx.config.seed)
    keep_idx, sink_idx = np.flatnonzero(~sink.numpy()), np.flatnonzero(sink.numpy())
    drawn = np.sort(rng.choice(keep_idx, min(cfg.max_points, len(keep_idx)), replace=False))
    drawn_sinks = np.sort(rng.choice(sink_idx, min(cfg.max_sinks, len(sink_idx)), replace=False))
    names: list[str] = cap.data["sites"]
    tensors: dict[str, torch.Tensor] = {}
    per_site: dict[str, Any] = {}
    for i, site in enumerate(names):
        ctx.progress("PCA of every site", i, len(names))
        x = store.site(site).to_tensor(torch.float32)
        fit, full = _two_fits(x, sink)
        per_site[site] = {
            "n_fit": int((~sink).sum()),
            "rank": {f"{v:g}": components_for(fit.spectrum, v) for v in LEVELS},
            "rank_with_sinks": {f"{v:g}": components_for(full.spectrum, v) for v in LEVELS},
            "pc1": float(fit.spectrum[0]),
            "pc1_with_sinks": float(full.spectrum[0]),
        }
        tensors[f"spectrum/{site}"] = fit.spectrum.float()
        layer = int(site.rsplit(".", 1)[1])
        if site.startswith("resid_post.") and layer in cfg.scatter_layers:
            rows = torch.from_numpy(np.concatenate([drawn, drawn_sinks]))
            coords = (x[rows].double() - fit.mean) @ fit.components[:2].T
            tensors[f"coords/{site}"] = coords.float()
        if site == ctx.site(ctx.config.atlas_layer):
            tensors["atlas_components"] = fit.components[: cfg.atlas_components].float()
    ctx.progress("token contexts", len(names), len(names))
    rows = np.concatenate([drawn, drawn_sinks])
    doc = store.site("doc_ids")[torch.from_numpy(rows)].long()
    pos = store.site("positions")[torch.from_numpy(rows)].long()
    seq = int(cap.data["seq_len"])
    ids = store.site("token_ids").to_tensor().long().reshape(-1, seq)  # whole windows in order
    first_doc = int(store.site("doc_ids")[0])
    tc = token_contexts(ctx.tokenizer, ids, torch.stack([doc - first_doc, pos], 1),
                        window=cfg.context_window)  # fmt: skip
    data = {"sites": names, "per_site": per_site, "n_rows": store.n_tokens,
            "n_sinks": int(sink.sum()), "n_drawn": len(drawn), "n_drawn_sinks": len(drawn_sinks),
            "tokens": tc.tokens, "contexts": tc.contexts, "positions": pos.tolist()}  # fmt: skip
    return StageResult(data, tensors)


class _Fit(NamedTuple):
    mean: torch.Tensor
    components: torch.Tensor
    """All eigenvectors as rows, by decreasing variance, largest entry positive."""
    spectrum: torch.Tensor
    """Explained-variance ratio of every direction."""


def _fit(second: torch.Tensor, total: torch.Tensor, n: int) -> _Fit:
    """PCA from float64 moments: ``Σ = (Σ x xᵀ − n μ μᵀ) / (n − 1)`` with ``μ = Σ x / n``."""
    mean = total / n
    cov = (second - n * torch.outer(mean, mean)) / (n - 1)
    cov = (cov + cov.T) / 2  # rounding leaves it slightly non-symmetric
    vals, vecs = torch.linalg.eigh(cov)
    vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)  # descending; tiny negatives: rounding
    comps = vecs.T.contiguous()
    comps *= comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
    return _Fit(mean, comps, vals / vals.sum())


def _two_fits(x: torch.Tensor, sink: torch.Tensor) -> tuple[_Fit, _Fit]:
    """PCA of the non-sink rows and of all rows, from one float64 pass over ``x``.

    The moments of all rows are those of the non-sink rows plus the (few) sink rows', so the
    second fit costs one small product instead of another pass (the PCA of
    :func:`steerlab.views.pca.pca_summary` is the same computation; the tests compare both to
    scikit-learn).
    """
    second = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    keep = x[~sink]
    for block in keep.split(8192):
        b = block.double()
        second += b.T @ b
        total += b.sum(0)
    s = x[sink].double()
    n_keep = keep.shape[0]
    fit = _fit(second, total, n_keep)
    full = _fit(second + s.T @ s, total + s.sum(0), n_keep + s.shape[0])
    return fit, full


# --------------------------------------------------------------------------- figures


def _scatter_figure(res: StageResult, layers: list[int]) -> go.Figure:
    d, t = res.data, res.tensors
    n_keep = d["n_drawn"]
    hover = [hover_label(i, d["tokens"], d["contexts"], None, "") for i in range(len(d["tokens"]))]
    fig = make_subplots(rows=1, cols=len(layers), horizontal_spacing=0.06,
                        subplot_titles=[f"resid_post.{L}" for L in layers])  # fmt: skip
    for col, L in enumerate(layers, 1):
        xy = t[f"coords/resid_post.{L}"].numpy()
        keep, out = xy[:n_keep], xy[n_keep:]
        lo, hi = np.percentile(keep, [0.5, 99.5], axis=0)
        pad = 0.08 * (hi - lo) + 1e-9
        lo, hi = lo - pad, hi + pad
        fig.add_trace(go.Scattergl(
            x=keep[:, 0], y=keep[:, 1], mode="markers", text=hover[:n_keep],
            marker={"size": 4, "color": "#4c72b0", "opacity": 0.6}, name="tokens (in the fit)",
            legendgroup="kept", showlegend=col == 1,
            hovertemplate="%{text}<br>PC1 %{x:.1f} · PC2 %{y:.1f}<extra></extra>",
        ), row=1, col=col)  # fmt: skip
        if len(out):
            beyond = int((~((out >= lo) & (out <= hi)).all(1)).sum())
            fig.add_trace(go.Scatter(
                x=np.clip(out[:, 0], lo[0], hi[0]), y=np.clip(out[:, 1], lo[1], hi[1]),
                mode="markers", text=hover[n_keep:], customdata=out,
                marker={"symbol": "x", "size": 6, "color": "crimson"},
                name="attention sinks (left out of the fit; pinned to the edge when beyond it)",
                legendgroup="sinks", showlegend=col == 1,
                hovertemplate="%{text}<br>PC1 %{customdata[0]:.0f} · PC2 %{customdata[1]:.0f}"
                              f"<extra>{beyond} of {len(out)} beyond the axes</extra>",
            ), row=1, col=col)  # fmt: skip
        spec = t[f"spectrum/resid_post.{L}"]
        fig.update_xaxes(range=[lo[0], hi[0]], title_text=f"PC1 ({100 * float(spec[0]):.1f}%)",
                         row=1, col=col)  # fmt: skip
        fig.update_yaxes(range=[lo[1], hi[1]], title_text=f"PC2 ({100 * float(spec[1]):.1f}%)",
                         row=1, col=col)  # fmt: skip
    fig.update_layout(height=440, template="plotly_white", margin={"t": 60, "b": 40},
                      legend={"orientation": "h", "y": -0.18})  # fmt: skip
    return fig


def _rank_figure(res: StageResult, cap: StageResult) -> go.Figure:
    d = res.data
    resid = [s for s in d["sites"] if s.startswith("resid_post.")]
    layers = [int(s.rsplit(".", 1)[1]) for s in resid]
    per = d["per_site"]
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09, subplot_titles=(
        "effective rank (PCs for 90% / 99% of variance)", "variance on PC1",
        "row norm: median token vs first token"))  # fmt: skip
    for v, dash in (("0.9", "solid"), ("0.99", "solid")):
        for key, name, style in (("rank", "sinks left out", dash), ("rank_with_sinks",
                                                                     "all rows", "dot")):  # fmt: skip
            fig.add_trace(go.Scatter(
                x=layers, y=[per[s][key][v] for s in resid], mode="lines+markers",
                name=f"{float(v):.0%}, {name}", line={"dash": style},
                marker={"symbol": "circle" if v == "0.9" else "diamond"},
                hovertemplate=f"layer %{{x}}: %{{y}} PCs for {float(v):.0%} ({name})<extra></extra>",
            ), row=1, col=1)  # fmt: skip
    for s in d["sites"]:
        if s.startswith("attn_out."):
            L = int(s.rsplit(".", 1)[1])
            fig.add_trace(go.Scatter(
                x=[L, L], y=[per[s]["rank"]["0.9"], per[s]["rank"]["0.99"]], mode="markers",
                name=f"{s} (90%, 99%)", marker={"symbol": "star", "size": 11, "color": "#8172b3"},
                hovertemplate=f"{s}: %{{y}} PCs<extra></extra>",
            ), row=1, col=1)  # fmt: skip
    for key, name, style in (
        ("pc1", "sinks left out", "solid"),
        ("pc1_with_sinks", "all rows", "dot"),
    ):
        fig.add_trace(go.Scatter(
            x=layers, y=[per[s][key] for s in resid], mode="lines+markers", name=f"PC1, {name}",
            line={"dash": style, "color": "#55a868"}, showlegend=False,
            hovertemplate=f"layer %{{x}}: PC1 holds %{{y:.1%}} ({name})<extra></extra>",
        ), row=1, col=2)  # fmt: skip
    norms = cap.data["per_site"]
    for key, name, colour in (("median_norm", "median token", "#4c72b0"),
                              ("first_token_median_norm", "first token of a window", "crimson")):  # fmt: skip
        fig.add_trace(go.Scatter(
            x=layers, y=[norms[s][key] for s in resid], mode="lines+markers", name=name,
            line={"color": colour}, showlegend=False,
            hovertemplate=f"layer %{{x}}: {name} norm %{{y:.0f}}<extra></extra>",
        ), row=1, col=3)  # fmt: skip
    fig.update_xaxes(title_text="layer", tickvals=layers if len(layers) <= 12 else None)
    fig.update_yaxes(title_text="principal directions", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="share of variance", tickformat=".0%", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="‖h‖ (log scale)", type="log", row=1, col=3)
    fig.update_layout(height=440, template="plotly_white", margin={"t": 60},
                      legend={"orientation": "h", "y": -0.2})  # fmt: skip
    return fig


def _spectrum_figure(res: StageResult) -> go.Figure:
    spectra = {s: res.tensors[f"spectrum/{s}"] for s in res.data["sites"]}
    fig = explained_variance_by_rank(spectra, var=0.9, title="")
    d = max(int(s.numel()) for s in spectra.values())
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= d]
    fig.update_xaxes(type="log", title_text="principal directions (log scale)", tickvals=ticks)
    fig.update_layout(height=420, margin={"t": 30}, title_text="")
    ref_line(fig, 0.99, label="99% of variance", line={"dash": "dot"}, position="top left")
    return fig


def section(res: StageResult, ctx: Context, cfg: PCAConfig) -> Section:
    d = res.data
    cap = ctx.result("capture").data
    atlas = ctx.site(ctx.config.atlas_layer)
    per = d["per_site"][atlas]
    n_fit = per["n_fit"]
    text = (
        f"Each point is one token of the prose at a layer, on the top two principal directions "
        f"of that layer's activations; hover for the token in its context and its coordinates. "
        f"Every PCA here is fitted on {n_fit:,} of the {d['n_rows']:,} captured rows: the "
        f"{plural(d['n_sinks'], 'attention-sink row')} ({cap['n_first']} first tokens of the "
        f"windows and {cap['n_massive_later']} later tokens with a norm above "
        f"{cap['sink_norm_ratio']:g}× the median) are left out and drawn apart as red "
        f"crosses; the scatters draw a sample of {d['n_drawn']:,} of the fitted rows. "
        f"Look at how few directions carry the variance: at {atlas}, {per['rank']['0.9']} of "
        f"{res.tensors[f'spectrum/{atlas}'].numel()} directions hold 90% "
        f"({per['rank_with_sinks']['0.9']} with the sinks, where PC1 alone takes "
        f"{per['pc1_with_sinks']:.0%} instead of {per['pc1']:.0%})."
    )
    layers = [L for L in cfg.scatter_layers if f"coords/resid_post.{L}" in res.tensors]
    figs: list[tuple[str | None, go.Figure]] = [
        ("PC1 vs PC2 at three depths (sinks left out of the fit)", _scatter_figure(res, layers)),
        ("Effective rank, PC1's share and the sinks' norms by layer",
         _rank_figure(res, ctx.result("capture"))),
        ("Cumulative explained variance per site (sinks left out; legend: PCs for 90%)",
         _spectrum_figure(res)),
    ]  # fmt: skip
    return Section("pca", "Principal directions per layer", text, figs)
