"""Neuronpedia export: an SAE's feature dashboards (and steering vectors) in its import layout.

Source: Neuronpedia's own exporter, ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py``
(hijohnnylin/neuronpedia, commit 1a80fe9), which writes the dataset layout that its importer
reads, with the columns of its database schema (``apps/webapp/prisma/schema.prisma``, commit
008d504: tables ``Model``, ``Source``, ``SourceSet``, ``Neuron``, ``Activation``)::

    <out>/<modelId>/<sourceId>/
        model.jsonl                  one Model row
        sourceset.jsonl              one SourceSet row
        source.jsonl                 one Source row
        features/batch-<i>.jsonl.gz      Neuron rows, 1024 per batch, by index
        activations/batch-<i>.jsonl.gz   Activation rows of the features of batch i

A ``sourceId`` is ``<layer>-<setName>`` (``6-res-jb``); ``layer`` in every row is that source
id and ``index`` the feature number as a string. A feature row carries ``maxActApprox`` (its
largest activation), ``frac_nonzero`` (its density), ``pos_str``/``pos_values`` and
``neg_str``/``neg_values`` (most promoted / suppressed tokens and their direct logit effects)
and the frequency histogram (``freq_hist_data_bar_*`` over log10 density, one bar). An
activation row is one context: ``tokens`` (strings), ``values`` (the feature on each token),
``maxValue``, ``minValue``, ``maxValueTokenIndex``, ``dataSource``. A steering vector is a
Neuron row with ``hasVector: true``, ``vector``, ``vectorLabel``, ``hookName`` and
``vectorDefaultSteerStrength`` (:func:`neuron_vector_row`).

The data comes from the latent dashboard's: pass :func:`steerlab.views.saes.top_activations`
and :func:`~steerlab.views.saes.logit_effects` results (or anything with their fields); the
per-token values of each context are recomputed from the activation store.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from steerlab.io import atomic_dir
from steerlab.saes.sae import Sae
from steerlab.sites import SiteError, parse_site

BATCH_SIZE = 1024
"""Rows per ``batch-<i>.jsonl.gz`` (Neuronpedia's ``FEATURES_EXPLANATIONS_BATCH_SIZE``)."""
CREATOR_ID = "steerlab"


def source_id(site: str, set_name: str) -> str:
    """Neuronpedia source id ``<layer>-<setName>`` of a site (``resid_post.6`` -> ``6-<set>``)."""
    layer = site.rsplit(".", 1)[-1]
    return f"{layer}-{set_name}" if layer.isdigit() else f"{site}-{set_name}"


def _is_site(site: str) -> bool:
    try:
        parse_site(site)
    except (SiteError, ValueError):
        return False
    return True


def _finite(x: float) -> float:
    """Neuronpedia's importer rejects NaN / inf (SAELens replaces them the same way)."""
    return 0.0 if math.isnan(x) else max(min(x, 9999.0), -9999.0)


def neuron_row(model_id: str, source: str, index: int, **fields: Any) -> dict[str, Any]:
    """A ``Neuron`` row with every exported column, defaults as in the schema."""
    row: dict[str, Any] = {
        "modelId": model_id, "layer": source, "index": str(index), "maxActApprox": 0.0,
        "creatorId": CREATOR_ID, "frac_nonzero": 0.0, "freq_hist_data_bar_heights": [],
        "freq_hist_data_bar_values": [], "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [], "neuron_alignment_indices": [],
        "neuron_alignment_l1": [], "neuron_alignment_values": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [], "decoder_weights_dist": [], "neg_str": [],
        "neg_values": [], "pos_str": [], "pos_values": [], "sourceSetName": source.split("-", 1)[-1],
        "topkCosSimIndices": [], "topkCosSimValues": [], "vector": [], "vectorLabel": None,
        "hookName": None, "vectorDefaultSteerStrength": 10.0, "hasVector": False,
    }  # fmt: skip
    unknown = set(fields) - set(row)
    if unknown:
        raise ValueError(f"not Neuron columns: {sorted(unknown)}")
    return {**row, **fields}


def neuron_vector_row(model_id: str, source: str, index: int, vector: Sequence[float], label: str,
                      hook_name: str, strength: float = 10.0) -> dict[str, Any]:  # fmt: skip
    """A ``Neuron`` row holding a steering vector (``hasVector``)."""
    return neuron_row(model_id, source, index, vector=[_finite(float(v)) for v in vector],
                      vectorLabel=label, hookName=hook_name, hasVector=True,
                      vectorDefaultSteerStrength=float(strength))  # fmt: skip


def _jsonl_gz(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data, compresslevel=5))


def write_export(
    out_dir: str | os.PathLike,
    model_id: str,
    source: str,
    neurons: list[dict[str, Any]],
    activations: list[dict[str, Any]],
    *,
    n_layers: int = 0,
    width: int = 0,
    set_description: str = "",
    hook_name: str | None = None,
    saelens_config: dict[str, Any] | None = None,
) -> Path:
    """Write rows in the layout above into ``out_dir/<model_id>/<source>/`` (atomically)."""
    set_name = source.split("-", 1)[-1]
    target = Path(out_dir) / model_id / source
    model = {"id": model_id, "displayNameShort": model_id, "displayName": model_id,
             "creatorId": CREATOR_ID, "layers": int(n_layers), "neuronsPerLayer": int(width),
             "owner": "", "visibility": "PUBLIC", "instruct": False, "inferenceEnabled": False}  # fmt: skip
    sourceset = {"modelId": model_id, "name": set_name, "description": set_description,
                 "type": "sae", "creatorName": CREATOR_ID, "urls": [], "creatorId": CREATOR_ID,
                 "visibility": "PUBLIC", "hasDashboards": True}  # fmt: skip
    src = {"id": source, "modelId": model_id, "setName": set_name, "creatorId": CREATOR_ID,
           "hasDashboards": True, "visibility": "PUBLIC", "saelensConfig": saelens_config,
           "notes": hook_name}  # fmt: skip
    by_index: dict[str, list[dict[str, Any]]] = {}
    for a in activations:
        by_index.setdefault(a["index"], []).append(a)
    with atomic_dir(target) as tmp:
        for name, row in (("model", model), ("sourceset", sourceset), ("source", src)):
            (tmp / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
        neurons = sorted(neurons, key=lambda r: int(r["index"]))
        for b in range(0, max(len(neurons), 1), BATCH_SIZE):
            part = neurons[b : b + BATCH_SIZE]
            _jsonl_gz(tmp / "features" / f"batch-{b // BATCH_SIZE}.jsonl.gz", part)
            acts = [a for r in part for a in by_index.get(r["index"], [])]
            _jsonl_gz(tmp / "activations" / f"batch-{b // BATCH_SIZE}.jsonl.gz", acts)
    return target


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
    hook = parse_site(site).tl_name() if _is_site(site) else site  # TransformerLens names
    dec = lambda ids: [tokenizer.decode([int(t)]) for t in ids]  # noqa: E731
    neurons, acts = [], []
    for li, latent in enumerate(top.latents.tolist()):
        dens = float(top.density[li])
        neurons.append(neuron_row(
            model_id, src, latent, maxActApprox=_finite(float(top.values[li, 0])),
            frac_nonzero=dens, freq_hist_data_bar_values=[math.log10(dens) if dens > 0 else -10.0],
            freq_hist_data_bar_heights=[1.0] if dens > 0 else [0.0],
            pos_str=dec(effects.top_ids[li]), pos_values=[_finite(v) for v in effects.top_values[li].tolist()],
            neg_str=dec(effects.bottom_ids[li]), neg_values=[_finite(v) for v in effects.bottom_values[li].tolist()],
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
                "maxValue": _finite(max(values)), "minValue": _finite(min(values)),
                "values": [_finite(v) for v in values],
                "maxValueTokenIndex": int(max(range(len(values)), key=values.__getitem__)),
                "dfaValues": [], "dfaMaxValue": None, "dfaTargetIndex": None,
                "binContains": None, "binMin": None, "binMax": None,
            })  # fmt: skip
    return write_export(out_dir, model_id, src, neurons, acts, n_layers=n_layers,
                        width=sae.d_sae, hook_name=hook, saelens_config=None,
                        set_description=f"steerlab {sae.cfg.architecture} SAE at {site}")  # fmt: skip


def read_export(source_dir: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Rows of an export source directory: ``model``, ``sourceset``, ``source``, ``features``,
    ``activations`` (for tests and for checking a directory before upload)."""
    d = Path(source_dir)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in ("model", "sourceset", "source"):
        out[name] = [json.loads(line) for line in (d / f"{name}.jsonl").read_text().splitlines()]
    for name in ("features", "activations"):
        rows = []
        for f in sorted((d / name).glob("batch-*.jsonl.gz"), key=lambda p: int(p.name[6:-9])):
            rows += [json.loads(line) for line in gzip.decompress(f.read_bytes()).splitlines()]
        out[name] = rows
    return out
