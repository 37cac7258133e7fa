"""Stage ``atlas``: how the subspaces that different methods find at one layer relate.

Every method of the report yields a linear subspace of the same residual stream: the top
principal directions, the token-role probe's weight rows, the PLS directions of years, the
LEACE direction of gender, the SAE's active decoder subspace and the steering vector. For each
pair the principal angles ``θ_1 ≤ θ_2 ≤ …`` (Björck & Golub 1973; :meth:`steerlab.subspace.
Subspace.principal_angles`) are computed; the matrix shows ``cos θ_1``, the largest cosine
between any direction of one and any of the other (1: they share a direction, 0: orthogonal).

The baseline is the same quantity for uniformly random subspaces of the same dimensions in
``R^d``: for two random directions ``E|cos θ| = Γ(d/2) / (√π Γ((d+1)/2)) ≈ √(2/(πd))``; for
higher dimensions it is estimated by sampling (:func:`random_max_cosine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from steerlab.config import check_positive, check_types
from steerlab.report.context import Context
from steerlab.report.page import Section, table_html
from steerlab.report.stages import StageResult
from steerlab.subspace import Subspace

__all__ = ["AtlasConfig", "orthonormal_rows", "random_max_cosine", "run", "section"]


@dataclass
class AtlasConfig:
    """The subspace atlas."""

    pca_dims: int = 8
    """Top principal directions in the atlas."""
    n_random: int = 200
    """Random subspace pairs drawn per pair of dimensions for the baseline."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "pca_dims", "n_random")


def orthonormal_rows(rows: Tensor, *, center: bool = False, rtol: float = 1e-6) -> Tensor:
    """An orthonormal basis ``[k, d]`` of the row space of ``rows`` (float64, by SVD).

    Args:
        rows: ``[n, d]`` vectors (or one ``[d]`` vector).
        center: subtract the mean row first (a softmax probe's logits are unchanged by adding
            one vector to every class row, so only the differences between rows matter).
        rtol: singular values below ``rtol × σ_max`` are dropped as numerical zero.
    """
    R = rows.double().reshape(-1, rows.shape[-1])
    if center:
        R = R - R.mean(0)
    _, s, Vh = torch.linalg.svd(R, full_matrices=False)
    if s.numel() == 0 or s[0] <= 0:
        raise ValueError("the rows span nothing (all zero)")
    return Vh[s > rtol * s[0]]


def random_max_cosine(a: int, b: int, d: int, n: int, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of ``cos θ_1`` between uniformly random ``a``- and
    ``b``-dimensional subspaces of ``R^d``, over ``n`` sampled pairs (Gaussian matrices,
    orthonormalised: their spans are uniform on the Grassmannian)."""
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n):
        A, _ = torch.linalg.qr(torch.randn(d, a, generator=g, dtype=torch.float64))
        B, _ = torch.linalg.qr(torch.randn(d, b, generator=g, dtype=torch.float64))
        vals.append(float(torch.linalg.svdvals(A.T @ B)[0]))
    v = np.asarray(vals)
    return float(v.mean()), float(v.std(ddof=1)) if n > 1 else 0.0


def run(ctx: Context, cfg: AtlasConfig) -> StageResult:
    site = ctx.site(ctx.config.atlas_layer)
    sources = {
        "PCA": (ctx.result("pca").tensors["atlas_components"][: cfg.pca_dims], False,
                f"top {cfg.pca_dims} principal directions (sinks left out)"),
        "probe: token roles": (ctx.result("probes").tensors["probe_weight"], True,
                               "logistic probe's class rows, centred"),
        "PLS: years": (ctx.result("probes").tensors["pls_gradients"], False,
                       "PLS score directions of years in text"),
        "LEACE: gender": (ctx.result("erasure").tensors["leace_atlas"], False,
                          "the direction LEACE erases"),
        "SAE: active decoder": (ctx.result("sae").tensors["active_subspace"], False,
                                "top singular directions of active latents' decoder rows"),
        "steering: sentiment": (ctx.result("steering").tensors["direction"], False,
                                "mean-difference sentiment vector"),
    }  # fmt: skip
    bases = {n: orthonormal_rows(r, center=c) for n, (r, c, _) in sources.items()}
    names = list(bases)
    d = next(iter(bases.values())).shape[1]
    subs = {n: Subspace(B.T.contiguous()) for n, B in bases.items()}
    k = len(names)
    cos = np.eye(k)
    angles: dict[str, list[float]] = {}
    for i in range(k):
        for j in range(i + 1, k):
            th = subs[names[i]].principal_angles(subs[names[j]])
            cos[i, j] = cos[j, i] = float(torch.cos(th[0]))
            angles[f"{names[i]}|{names[j]}"] = torch.rad2deg(th).tolist()
    dims = sorted({B.shape[0] for B in bases.values()})
    baseline: dict[str, list[float]] = {}
    pairs = [(a, b) for a in dims for b in dims if a <= b]
    for n_done, (a, b) in enumerate(pairs):
        ctx.progress("random-subspace baselines", n_done, len(pairs))
        baseline[f"{a}x{b}"] = list(random_max_cosine(a, b, d, cfg.n_random, ctx.config.seed))
    data = {"site": site, "names": names, "dims": [bases[n].shape[0] for n in names],
            "what": [sources[n][2] for n in names], "cos": cos.tolist(), "angles": angles,
            "baseline": baseline, "d": d}  # fmt: skip
    return StageResult(data, {f"basis/{n}": B.float() for n, B in bases.items()})


def _baseline(d: dict, a: int, b: int) -> tuple[float, float]:
    lo, hi = sorted((a, b))
    mean, sd = d["baseline"][f"{lo}x{hi}"]
    return mean, sd


def atlas_figure(d: dict) -> go.Figure:
    """The matrix of largest cosines, each cell with its random baseline."""
    names, dims, cos = d["names"], d["dims"], np.asarray(d["cos"])
    labels = [f"{n} ({k})" for n, k in zip(names, dims)]
    text, hover = [], []
    for i, a in enumerate(names):
        trow, hrow = [], []
        for j, b in enumerate(names):
            if i == j:
                trow.append("—")
                hrow.append(f"{a}: {dims[i]} dimensions")
                continue
            mean, sd = _baseline(d, dims[i], dims[j])
            key = f"{a}|{b}" if f"{a}|{b}" in d["angles"] else f"{b}|{a}"
            ang = ", ".join(f"{x:.0f}°" for x in d["angles"][key][:4])
            trow.append(f"{cos[i, j]:.2f} (random {mean:.2f})")
            hrow.append(f"{a} vs {b}<br>largest cosine {cos[i, j]:.3f} (random: {mean:.3f} ± "
                        f"{sd:.3f})<br>principal angles {ang}")  # fmt: skip
        text.append(trow)
        hover.append(hrow)
    z = cos.copy()
    np.fill_diagonal(z, np.nan)  # the diagonal is 1 by definition: leave it blank
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, text=text, texttemplate="%{text}", customdata=hover,
        hovertemplate="%{customdata}<extra></extra>", colorscale="Blues", zmin=0, zmax=1,
        colorbar={"title": {"text": "cos θ₁"}, "thickness": 12}, xgap=2, ygap=2,
    ))  # fmt: skip
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False)
    fig.update_xaxes(tickangle=-25, showgrid=False, zeroline=False)
    fig.update_layout(height=560, template="plotly_white", margin={"t": 30, "l": 180, "b": 150})
    return fig


def section(res: StageResult, ctx: Context, cfg: AtlasConfig) -> Section:
    del ctx, cfg
    d = res.data
    names, cos = d["names"], np.asarray(d["cos"])
    iu = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    ratio = {(i, j): cos[i, j] / _baseline(d, d["dims"][i], d["dims"][j])[0] for i, j in iu}
    (bi, bj) = max(ratio, key=ratio.get)  # type: ignore[arg-type]
    (li, lj) = min(ratio, key=ratio.get)  # type: ignore[arg-type]
    text = (
        f"Six methods each found a subspace of {d['site']} (d = {d['d']}); each cell is the "
        f"cosine of the smallest principal angle between two of them, the most two subspaces "
        f"share a direction, with the value for random subspaces of the same dimensions below "
        f"it. Look for cells far above their random value: {names[bi]} and {names[bj]} "
        f"({cos[bi, bj]:.2f}, {ratio[(bi, bj)]:.1f}× random) share the most; {names[li]} and "
        f"{names[lj]} ({cos[li, lj]:.2f}, {ratio[(li, lj)]:.1f}× random) the least. Hover a cell "
        f"for all its principal angles."
    )
    table = table_html(["subspace", "dimensions", "what it is"],
                       [[n, k, w] for n, k, w in zip(names, d["dims"], d["what"])])  # fmt: skip
    return Section("atlas", f"Subspace atlas at {d['site']}", text,
                   [("Largest cosine between the subspaces (below each: random subspaces of the "
                     "same dimensions)", atlas_figure(d))], blocks=[table])  # fmt: skip
