"""Figures for sparse autoencoders: training curves, latent densities, the spectrum of a site,
and a latent dashboard (top-activating contexts and direct logit effects).

Every builder returns a ``go.Figure`` (the dashboard: one per latent) for
:func:`steerlab.views.write_html`. The data helpers :func:`top_activations` and
:func:`logit_effects` return NamedTuples, usable without plotly.

Direct logit effect of latent ``i``: ``W_dec[i] ⊙ γ @ W_Uᵀ``, the change of the logits per unit
of activation along the decoder row when the residual stream is read through the final
RMSNorm/LayerNorm gain ``γ`` and the unembedding ``W_U [vocab, d_model]``, ignoring the norm's
division by the RMS and every later layer (the usual "logit lens" simplification).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from plotly.subplots import make_subplots
from torch import Tensor

from steerlab.models import ModelHandle
from steerlab.saes.evals import density_histogram
from steerlab.saes.init import _rank_for
from steerlab.views.common import NEWLINE, display_token, ref_line

if TYPE_CHECKING:
    from steerlab.capture.store import ActivationStore
    from steerlab.saes.init import ActivationStats
    from steerlab.saes.sae import Sae

__all__ = [
    "LatentCard",
    "LogitEffects",
    "TopActivations",
    "density_figure",
    "explained_variance_by_rank",
    "latent_card_figure",
    "latent_cards",
    "latent_dashboard",
    "logit_effects",
    "read_train_log",
    "top_activations",
    "training_curves",
]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def read_train_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``train_log.jsonl`` written by ``steerlab sae train``."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def training_curves(
    logs: Sequence[Mapping[str, float]] | Mapping[str, Sequence[Mapping[str, float]]],
    title: str = "SAE training",
) -> go.Figure:
    """FVU (log scale), L0 and dead % against training tokens.

    Args:
        logs: one run's rows (``tokens``, ``fvu``, ``l0``, ``dead_frac``: a ``train_log.jsonl``
            or :class:`~steerlab.saes.train.TrainProgress` metrics with ``tokens`` added), or
            ``{run name: rows}`` to overlay runs.
        title: figure title.
    """
    runs = dict(logs) if isinstance(logs, Mapping) else {"": logs}
    fig = make_subplots(rows=1, cols=3, subplot_titles=("FVU", "L0", "dead latents (%)"))
    for i, (name, rows) in enumerate(runs.items()):
        rows = list(rows)
        x = [r["tokens"] for r in rows]
        color = _COLORS[i % len(_COLORS)]
        for col, (key, scale) in enumerate((("fvu", 1), ("l0", 1), ("dead_frac", 100)), 1):
            fig.add_trace(
                go.Scatter(x=x, y=[r[key] * scale for r in rows], mode="lines", name=name or key,
                           legendgroup=name, showlegend=bool(name) and col == 1,
                           line={"color": color}),
                row=1, col=col,
            )  # fmt: skip
        fig.update_xaxes(title_text="tokens")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title=title, height=380, template="plotly_white")
    return fig


def density_figure(
    density: Float[Tensor, " d_sae"] | Mapping[str, Tensor],
    bins: int = 50,
    lo: float = -7.0,
    title: str = "Latent density",
) -> go.Figure:
    """Histogram of ``log10`` firing frequency of the live latents; dead ones in the legend.

    Args:
        density: ``[d_sae]`` firing frequencies (:attr:`SaeMetrics.density`), or a mapping
            ``{name: density}`` to overlay SAEs.
        bins: histogram bins over ``[lo, 0]``.
        lo: lowest ``log10`` density shown (lower values are clipped into the first bin).
        title: figure title.
    """
    runs = dict(density) if isinstance(density, Mapping) else {"": density}
    fig = go.Figure()
    for i, (name, dens) in enumerate(runs.items()):
        h = density_histogram(dens, bins=bins, lo=lo)
        mids = ((h.edges[1:] + h.edges[:-1]) / 2).tolist()
        dead = 100 * h.n_dead / dens.numel()
        label = f"{name + ': ' if name else ''}{h.n_dead} dead ({dead:.1f}%)"
        fig.add_trace(go.Bar(x=mids, y=h.counts.tolist(), name=label, opacity=0.7,
                             marker_color=_COLORS[i % len(_COLORS)]))  # fmt: skip
    fig.update_layout(title=title, barmode="overlay", bargap=0, showlegend=True,
                      xaxis_title="log10(firing frequency)", yaxis_title="latents",
                      template="plotly_white", height=380)  # fmt: skip
    return fig


def explained_variance_by_rank(
    spectra: Mapping[str, ActivationStats | Tensor],
    var: float = 0.99,
    title: str = "Explained variance vs rank",
) -> go.Figure:
    """Cumulative explained variance of the top-``r`` principal directions, per site.

    Args:
        spectra: ``{site: ActivationStats}`` (or the explained-variance ratios, descending).
        var: threshold drawn as a line; each curve's legend gives its effective rank there
            (the smallest ``r`` reaching it) as a count and as a fraction of ``d``.
        title: figure title.
    """
    fig = go.Figure()
    for i, (name, s) in enumerate(spectra.items()):
        ratio = s if isinstance(s, Tensor) else s.explained_variance_ratio()
        ratio = ratio.double().cpu()
        d = ratio.numel()
        r = _rank_for(ratio, var)
        cum = ratio.cumsum(0).tolist()
        fig.add_trace(go.Scatter(
            x=list(range(1, d + 1)), y=cum, mode="lines", line={"color": _COLORS[i % 7]},
            name=f"{name}: {r}/{d} ({100 * r / d:.0f}%)",
            hovertemplate="rank %{x}: %{y:.4f}<extra>" + html.escape(name) + "</extra>",
        ))  # fmt: skip
    # the curves rise from the left: the line's left end is clear for its label
    ref_line(fig, var, label=f"{100 * var:g}% of variance", line={"dash": "dot"},
             position="top left")  # fmt: skip
    fig.update_layout(title=title, xaxis_title="principal directions",
                      yaxis_title="cumulative explained variance", template="plotly_white",
                      height=420, legend_title_text=f"effective rank at {100 * var:g}%")  # fmt: skip
    return fig


class TopActivations(NamedTuple):
    """The strongest activations of some latents over a store.

    Attributes:
        latents: ``[L]`` latent ids.
        values: ``[L, n]`` activations, descending (0 where fewer than ``n`` tokens fired).
        rows: ``[L, n]`` store rows of those tokens (-1 where none).
        density: ``[L]`` fraction of the scanned tokens on which each latent fired.
        n_tokens: tokens scanned.
    """

    latents: Int[Tensor, " L"]
    values: Float[Tensor, "L n"]
    rows: Int[Tensor, "L n"]
    density: Float[Tensor, " L"]
    n_tokens: int


@torch.no_grad()
def top_activations(
    sae: Sae,
    store: ActivationStore,
    latents: Sequence[int] | Tensor,
    n: int = 10,
    *,
    site: str | None = None,
    n_tokens: int | None = None,
    batch_size: int = 4096,
) -> TopActivations:
    """Stream a store site through ``sae`` and keep each latent's ``n`` largest activations."""
    lat = torch.as_tensor(list(latents) if not isinstance(latents, Tensor) else latents).long()
    site = site or sae.cfg.site
    if site is None:  # the store would fail on it with a bare "NoneType is not iterable"
        raise TypeError("top_activations: the SAE records no cfg.site; pass site=")
    best_v = torch.zeros(len(lat), n)
    best_r = torch.full((len(lat), n), -1, dtype=torch.long)
    fired = torch.zeros(len(lat))
    seen = 0
    for x in store.iter_batches(site, batch_size, shuffle=False, drop_last=False):
        if n_tokens is not None:
            x = x[: n_tokens - seen]
        if x.shape[0] == 0:
            break
        z = sae.encode_dense(x.to(sae.device)).float().cpu()[:, lat].T  # [L, batch]
        fired += (z > 0).sum(1)
        rows = torch.arange(seen, seen + x.shape[0]).expand_as(z)
        v, j = torch.cat([best_v, z], 1).topk(n, dim=1)
        best_r = torch.cat([best_r, rows], 1).gather(1, j)
        best_v = v
        seen += x.shape[0]
        if n_tokens is not None and seen >= n_tokens:
            break
    best_r[best_v <= 0] = -1
    best_v = best_v.clamp_min(0)
    return TopActivations(lat, best_v, best_r, fired / max(seen, 1), seen)


class LogitEffects(NamedTuple):
    """Direct logit effects of latents (see the module docstring).

    Attributes:
        latents: ``[L]`` latent ids.
        top_ids, top_values: ``[L, n]`` most promoted token ids and their effects.
        bottom_ids, bottom_values: ``[L, n]`` most suppressed token ids and their effects.
    """

    latents: Int[Tensor, " L"]
    top_ids: Int[Tensor, "L n"]
    top_values: Float[Tensor, "L n"]
    bottom_ids: Int[Tensor, "L n"]
    bottom_values: Float[Tensor, "L n"]


@torch.no_grad()
def logit_effects(
    sae: Sae, handle: ModelHandle, latents: Sequence[int] | Tensor, n: int = 10
) -> LogitEffects:
    """``W_dec[i] ⊙ γ @ W_Uᵀ`` for each latent ``i``: its most promoted and suppressed tokens.

    ``W_U`` is ``handle.model.get_output_embeddings().weight``; ``γ`` the weight of the final
    norm (``model.model.norm``, ``transformer.ln_f``) when the model has one.
    """
    lat = torch.as_tensor(list(latents) if not isinstance(latents, Tensor) else latents).long()
    W_U = handle.model.get_output_embeddings().weight.detach().float().cpu()  # [vocab, d]
    d = sae.W_dec[lat].detach().float().cpu()
    gamma = _final_norm_weight(handle.model)
    if gamma is not None:
        d = d * gamma
    eff = d @ W_U.T  # [L, vocab]
    top = eff.topk(n, dim=1)
    bot = eff.topk(n, dim=1, largest=False)
    return LogitEffects(lat, top.indices, top.values, bot.indices, bot.values)


def _final_norm_weight(model: Any) -> Tensor | None:
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        w = getattr(mod, "weight", None) if mod is not None else None
        if isinstance(w, Tensor):
            return w.detach().float().cpu()
    return None


def _context_html(tokenizer: Any, ids: list[int], pos: int, window: int) -> str:
    left = tokenizer.decode(ids[max(0, pos - window) : pos])
    tok = tokenizer.decode(ids[pos : pos + 1])
    right = tokenizer.decode(ids[pos + 1 : pos + 1 + window])
    esc = lambda s: html.escape(s, quote=False).replace("\n", NEWLINE)  # noqa: E731
    return (f"{esc(left)}<b><span style='color:#d62728'>[{esc(display_token(tok))}]</span></b>"
            f"{esc(right)}")  # fmt: skip


class LatentCard(NamedTuple):
    """What the dashboard shows of one latent (plain data: it saves as JSON via ``_asdict``).

    Attributes:
        latent: the latent id.
        density: fraction of the scanned tokens on which it fired.
        max_act: its largest activation.
        contexts: HTML of the top-activating contexts, the token in bold red brackets.
        values: the activation of each context.
        promoted, suppressed: ``(token, effect)`` pairs of its direct logit effects.
    """

    latent: int
    density: float
    max_act: float
    contexts: list[str]
    values: list[float]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


def latent_cards(
    sae: Sae,
    store: ActivationStore,
    handle: ModelHandle,
    latents: Sequence[int],
    *,
    n_contexts: int = 8,
    n_logits: int = 10,
    window: int = 12,
    n_tokens: int | None = None,
    top: TopActivations | None = None,
) -> list[LatentCard]:
    """The data of :func:`latent_dashboard`: one :class:`LatentCard` per latent (arguments as
    there); build the figures with :func:`latent_card_figure`."""
    top = top or top_activations(sae, store, latents, n_contexts, n_tokens=n_tokens)
    eff = logit_effects(sae, handle, top.latents, n_logits)
    tok = handle.tokenizer
    cards = []
    for li, latent in enumerate(top.latents.tolist()):
        rows = [r for r in top.rows[li].tolist() if r >= 0]
        contexts, values = [], []
        for r, v in zip(rows, top.values[li].tolist(), strict=False):
            pos = int(store.site("positions")[r])
            start, stop = r - pos, min(store.n_tokens, r + window + 1)
            ids = store.site("token_ids")[start:stop].long().tolist()
            doc = store.site("doc_ids")[start:stop].tolist()
            # the rows after this window's end belong to the next window: cut them
            ids = [t for t, dd in zip(ids, doc, strict=True) if dd == doc[pos]]
            contexts.append(_context_html(tok, ids, pos, window))
            values.append(float(v))

        def shown(ids: Tensor, vals: Tensor) -> list[tuple[str, float]]:
            return [(display_token(tok.decode([t])), float(v))
                    for t, v in zip(ids.tolist(), vals.tolist())]  # fmt: skip

        cards.append(LatentCard(int(latent), float(top.density[li]), float(top.values[li, 0]),
                                contexts, values, shown(eff.top_ids[li], eff.top_values[li]),
                                shown(eff.bottom_ids[li], eff.bottom_values[li])))  # fmt: skip
    return cards


_CONTEXT_ROW_PX = 44  # room for a context that wraps onto a second line


def latent_card_figure(card: LatentCard, title: str | None = None) -> go.Figure:
    """Two tables: the latent's top-activating contexts, and its promoted and suppressed
    tokens. The height leaves each context two lines, so the table does not scroll."""
    card = LatentCard(*card)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.72, 0.28],
                        specs=[[{"type": "table"}, {"type": "table"}]])  # fmt: skip
    fig.add_trace(go.Table(
        columnwidth=[1, 9],
        header={"values": ["act", "top-activating contexts"], "align": "left"},
        cells={"values": [[f"{v:.3g}" for v in card.values], card.contexts], "align": "left",
               "height": _CONTEXT_ROW_PX - 4},
    ), row=1, col=1)  # fmt: skip
    esc = lambda pairs: [html.escape(t, quote=False) for t, _ in pairs]  # noqa: E731
    fig.add_trace(go.Table(
        columnwidth=[3, 2, 3, 2],
        header={"values": ["promoted", "", "suppressed", ""], "align": "left"},
        cells={"values": [esc(card.promoted), [f"{v:+.2f}" for _, v in card.promoted],
                          esc(card.suppressed), [f"{v:+.2f}" for _, v in card.suppressed]],
               "align": "left"},
    ), row=1, col=2)  # fmt: skip
    n_rows = max(len(card.contexts), 1)
    fig.update_layout(
        title=title
        or f"latent {card.latent} · density {card.density:.2e} · max act {card.max_act:.3g}",
        height=110 + _CONTEXT_ROW_PX * n_rows + 40,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig


def latent_dashboard(
    sae: Sae,
    store: ActivationStore,
    handle: ModelHandle,
    latents: Sequence[int],
    *,
    n_contexts: int = 8,
    n_logits: int = 10,
    window: int = 12,
    n_tokens: int | None = None,
    top: TopActivations | None = None,
) -> dict[str, go.Figure]:
    """One figure per latent: its top-activating contexts (the token highlighted) and its top
    direct logit effects. Pass the result to :func:`steerlab.views.write_html`.

    The contexts come from the store's ``token_ids``/``doc_ids``/``positions``, so the store
    must hold whole windows in order (a capture with ``positions="all"``).

    Args:
        sae: the SAE.
        store: the activation store to scan (its site ``sae.cfg.site``).
        handle: the model handle (tokenizer, unembedding).
        latents: latent ids to show.
        n_contexts: contexts per latent.
        n_logits: promoted and suppressed tokens per latent.
        window: tokens of context on each side.
        n_tokens: scan at most this many tokens (default all).
        top: precomputed :func:`top_activations` (skips the scan).
    """
    cards = latent_cards(sae, store, handle, latents, n_contexts=n_contexts, n_logits=n_logits,
                         window=window, n_tokens=n_tokens, top=top)  # fmt: skip
    figs = {}
    for card in cards:
        fig = latent_card_figure(card)
        # plotly leaves Figure.layout untyped (stub gap)
        figs[fig.layout.title.text] = fig  # pyright: ignore[reportAttributeAccessIssue]
    return figs
