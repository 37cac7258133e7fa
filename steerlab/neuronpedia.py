"""Neuronpedia's import layout: rows and directories, shared by SAE and steering-vector exports.

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
id and ``index`` the feature number as a string. A steering vector is a Neuron row with
``hasVector: true``, ``vector``, ``vectorLabel``, ``hookName`` and
``vectorDefaultSteerStrength`` (:func:`neuron_vector_row`). The SAE dashboards are written by
:func:`steerlab.saes.io.neuronpedia.export_sae`, steering vectors by
:func:`steerlab.steering.exchange.export_neuronpedia_vector`; this module knows neither SAEs nor
vectors, so both method packages use it without importing each other.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from steerlab.io import atomic_dir
from steerlab.sites import SiteError, parse_site

BATCH_SIZE = 1024
"""Rows per ``batch-<i>.jsonl.gz`` (Neuronpedia's ``FEATURES_EXPLANATIONS_BATCH_SIZE``)."""
CREATOR_ID = "steerlab"


def source_id(site: str, set_name: str) -> str:
    """Neuronpedia source id ``<layer>-<setName>`` of a site (``resid_post.6`` -> ``6-<set>``)."""
    layer = site.rsplit(".", 1)[-1]
    return f"{layer}-{set_name}" if layer.isdigit() else f"{site}-{set_name}"


def is_site(site: str) -> bool:
    try:
        parse_site(site)
    except (SiteError, ValueError):
        return False
    return True


def clamp_finite(x: float) -> float:
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
    return neuron_row(model_id, source, index, vector=[clamp_finite(float(v)) for v in vector],
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
