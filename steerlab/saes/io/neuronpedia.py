"""Neuronpedia export of an SAE's feature dashboards, in the import layout of
:mod:`steerlab.neuronpedia` (sources, directory layout and row columns are documented there).

A feature row carries ``maxActApprox`` (its largest activation), ``frac_nonzero`` (its density),
``pos_str``/``pos_values`` and ``neg_str``/``neg_values`` (most promoted / suppressed tokens and
their direct logit effects) and the frequency histogram (``freq_hist_data_bar_*`` over log10
density, one bar). An activation row is one context: ``tokens`` (strings), ``values`` (the
feature on each token), ``maxValue``, ``minValue``, ``maxValueTokenIndex``, ``dataSource``.

The data comes from the latent dashboard's: pass :func:`steerlab.views.saes.top_activations`
and :func:`~steerlab.views.saes.logit_effects` results (or anything with their fields); the
per-token values of each context are recomputed from the activation store.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from steerlab.neuronpedia import (  # re-exported: the layout lives in steerlab.neuronpedia
    BATCH_SIZE as BATCH_SIZE,
)
from steerlab.neuronpedia import (
    CREATOR_ID,
    clamp_finite,
    is_site,
    neuron_row,
    source_id,
    write_export,
)
from steerlab.neuronpedia import neuron_vector_row as neuron_vector_row
from steerlab.neuronpedia import read_export as read_export
from steerlab.saes.sae import Sae
from steerlab.sites import parse_site


@torch.no_grad()
def export_sae(
    sae: Sae,
    out_dir: str | os.PathLike,
    *,
    top: Any,
    effects: Any,
    store: Any,
    tokenizer: Any,
    model_id: str,
    set_name: str = "steerlab-res",
    window: int = 12,
    n_layers: int = 0,
    data_source: str = "steerlab-store",
) -> Path:
    """Export the dashboards of ``top.latents`` in Neuronpedia's layout; return the source dir.

    Args:
        sae: the SAE (its ``cfg.site`` names the source; its latents give the values).
        out_dir: root of the export.
        top: :func:`steerlab.views.saes.top_activations` output (``latents``, ``values``,
            ``rows``, ``density``).
        effects: :func:`steerlab.views.saes.logit_effects` output for the same latents.
        store: the activation store ``top`` scanned (site ``sae.cfg.site``, with
            ``token_ids``/``doc_ids``/``positions``).
        tokenizer: decodes token ids to the strings Neuronpedia shows.
        model_id: Neuronpedia's model id (lower case letters, digits, ``-``, ``_``).
        set_name: the source set name; the source id is ``<layer>-<set_name>``.
        window: tokens of context on each side of the top token.
        n_layers: the model's layer count (the ``Model`` row).
        data_source: the ``dataSource`` of activation rows.
    """
    if list(top.latents.tolist()) != list(effects.latents.tolist()):
        raise ValueError("top activations and logit effects are for different latents")
    site = sae.cfg.site
    if site is None:
        raise ValueError("the SAE has no cfg.site; Neuronpedia sources are per layer")
    src = source_id(site, set_name)
    hook = parse_site(site).tl_name() if is_site(site) else site  # TransformerLens names
    dec = lambda ids: [tokenizer.decode([int(t)]) for t in ids]  # noqa: E731
    neurons, acts = [], []
    for li, latent in enumerate(top.latents.tolist()):
        dens = float(top.density[li])
        neurons.append(neuron_row(
            model_id, src, latent, maxActApprox=clamp_finite(float(top.values[li, 0])),
            frac_nonzero=dens, freq_hist_data_bar_values=[math.log10(dens) if dens > 0 else -10.0],
            freq_hist_data_bar_heights=[1.0] if dens > 0 else [0.0],
            pos_str=dec(effects.top_ids[li]), pos_values=[clamp_finite(v) for v in effects.top_values[li].tolist()],
            neg_str=dec(effects.bottom_ids[li]), neg_values=[clamp_finite(v) for v in effects.bottom_values[li].tolist()],
            hookName=hook,
        ))  # fmt: skip
        for j, r in enumerate(r for r in top.rows[li].tolist() if r >= 0):
            pos = int(store.site("positions")[r])
            start, stop = r - min(pos, window), min(store.n_tokens, r + window + 1)
            doc = store.site("doc_ids")[start:stop]
            keep = (doc == doc[r - start]).nonzero().flatten()
            lo, hi = start + int(keep[0]), start + int(keep[-1]) + 1
            x = store.site(site)[lo:hi].to(sae.device)
            values = sae.encode_dense(x)[:, latent].float().cpu().tolist()
            acts.append({
                "id": f"{model_id}@{src}:{latent}:{j}", "modelId": model_id, "layer": src,
                "index": str(latent), "creatorId": CREATOR_ID, "dataSource": data_source,
                "tokens": dec(store.site("token_ids")[lo:hi].tolist()),
                "maxValue": clamp_finite(max(values)), "minValue": clamp_finite(min(values)),
                "values": [clamp_finite(v) for v in values],
                "maxValueTokenIndex": int(max(range(len(values)), key=values.__getitem__)),
                "dfaValues": [], "dfaMaxValue": None, "dfaTargetIndex": None,
                "binContains": None, "binMin": None, "binMax": None,
            })  # fmt: skip
    return write_export(out_dir, model_id, src, neurons, acts, n_layers=n_layers,
                        width=sae.d_sae, hook_name=hook, saelens_config=None,
                        set_description=f"steerlab {sae.cfg.architecture} SAE at {site}")  # fmt: skip
