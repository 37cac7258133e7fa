"""Steering vectors to and from repeng's ``ControlVector``, steering-vectors' ``SteeringVector``
and Neuronpedia's vector rows (llama.cpp / repeng GGUF files: :mod:`steerlab.steering.gguf`).

Read from repeng 0.4.0 (``repeng/extract.py``, ``control.py``) and steering-vectors 0.12.2
(``steering_vectors/steering_vector.py``, ``layer_matching.py``):

- repeng: ``ControlVector(model_type: str, directions: dict[int, np.ndarray])``. A
  ``ControlModel`` adds ``coeff · directions[i]`` to the output of decoder layer ``i`` at every
  token: steerlab's ``resid_post.i``, raw (not unit) directions. Negative layer ids count from
  the end (``i + n_layers``), as repeng normalises them. Its file form is GGUF
  (``export_gguf``), which :mod:`steerlab.steering.gguf` reads and writes.
- steering-vectors: ``SteeringVector(layer_activations: dict[int, Tensor], layer_type)``;
  ``apply(model, multiplier)`` adds ``multiplier · layer_activations[i]`` to the output of
  layer ``i`` of type ``layer_type``: ``decoder_block`` -> ``resid_post.i``, ``mlp`` ->
  ``mlp_out.i``, ``self_attn`` -> ``attn_out.i``. It has no file format (users pickle it);
  steerlab's own artifact (``vector.save(dir)``) is the portable form.

Both are plain data, so steerlab exchanges the constructor arguments as dicts and reads any
object with those attributes, without importing either package: ``ControlVector(**d)`` /
``SteeringVector(**d)`` on the other side. Directions keep their norms, so with
``vector.interventions(alpha, relative=False, normalize=False)`` steerlab adds exactly what the
peer adds at ``coeff = alpha`` / ``multiplier = alpha``. Round trips copy float32 values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steerlab.neuronpedia import neuron_vector_row, source_id, write_export
from steerlab.positions import as_positions
from steerlab.sites import parse_site
from steerlab.steering.vectors import SteeringVector

SV_LAYER_TYPES = {"decoder_block": "resid_post", "mlp": "mlp_out", "self_attn": "attn_out"}
"""steering-vectors ``layer_type`` -> steerlab site kind."""


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        if name not in obj:
            raise ValueError(f"expected a {name!r} entry (has {sorted(obj)})")
        return obj[name]
    if not hasattr(obj, name):
        raise TypeError(f"{type(obj).__name__} has no attribute {name!r}")
    return getattr(obj, name)


def _rows(
    directions: Mapping[int, Any], n_layers: int | None, what: str
) -> tuple[tuple[int, ...], Tensor]:
    layers: dict[int, Tensor] = {}
    for k, v in directions.items():
        i = int(k)
        if i < 0:
            if n_layers is None:
                raise ValueError(f"{what} has layer {i} (from the end): pass n_layers")
            i += n_layers
        t = torch.as_tensor(np.asarray(v, dtype=np.float32) if not isinstance(v, Tensor) else v)
        layers[i] = t.detach().float().cpu().reshape(-1)
    if not layers:
        raise ValueError(f"{what} has no directions")
    order = tuple(sorted(layers))
    widths = {layers[i].numel() for i in order}
    if len(widths) != 1:
        raise ValueError(f"{what} has directions of different widths {sorted(widths)}")
    return order, torch.stack([layers[i] for i in order])


def _fingerprint(tag: str, D: Tensor) -> str:
    return f"{tag}:{hashlib.sha256(D.numpy().tobytes()).hexdigest()[:16]}"


def to_repeng(vector: SteeringVector, model_type: str | None = None) -> dict[str, Any]:
    """``ControlVector(**to_repeng(v))``: ``model_type`` and ``{layer: float32 array}``."""
    if vector.site_kind != "resid_post":
        raise ValueError(f"repeng steers decoder-layer outputs (resid_post); this vector lives "
                         f"at {vector.site_kind}")  # fmt: skip
    hint = model_type or vector.meta.get("model_type")
    if not hint:
        raise ValueError("no model type: pass model_type='llama' (the HF config.model_type)")
    D = vector.directions.detach().float().cpu().numpy()
    return {
        "model_type": str(hint),
        "directions": {int(i): D[j].copy() for j, i in enumerate(vector.layers)},
    }


def from_repeng(
    control_vector: Any, *, n_layers: int | None = None, model_id: str = ""
) -> SteeringVector:
    """A :class:`SteeringVector` at ``resid_post`` from a repeng ``ControlVector`` (or its dict)."""
    mt = str(_get(control_vector, "model_type"))
    layers, D = _rows(_get(control_vector, "directions"), n_layers, "the control vector")
    return SteeringVector(D, layers, "resid_post", None, "repeng", as_positions("all"), model_id,
                          {}, _fingerprint("repeng", D), {"model_type": mt})  # fmt: skip


def to_steering_vectors(vector: SteeringVector) -> dict[str, Any]:
    """``SteeringVector(**to_steering_vectors(v))`` of the steering-vectors package."""
    back = {v: k for k, v in SV_LAYER_TYPES.items()}
    if vector.site_kind not in back:
        raise ValueError(f"steering-vectors has no layer type for {vector.site_kind}; it has "
                         f"{sorted(SV_LAYER_TYPES)}")  # fmt: skip
    D = vector.directions.detach().float().cpu()
    return {"layer_activations": {int(i): D[j].clone() for j, i in enumerate(vector.layers)},
            "layer_type": back[vector.site_kind]}  # fmt: skip


def from_steering_vectors(
    sv: Any, *, n_layers: int | None = None, model_id: str = ""
) -> SteeringVector:
    """A :class:`SteeringVector` from a steering-vectors ``SteeringVector`` (or its dict)."""
    lt = str(_get(sv, "layer_type") if not isinstance(sv, Mapping) or "layer_type" in sv
             else "decoder_block")  # fmt: skip
    if lt not in SV_LAYER_TYPES:
        raise ValueError(f"layer_type {lt!r} has no steerlab site; known: {sorted(SV_LAYER_TYPES)}")
    layers, D = _rows(_get(sv, "layer_activations"), n_layers, "the steering vector")
    return SteeringVector(D, layers, SV_LAYER_TYPES[lt], None, "steering_vectors",
                          as_positions("all"), model_id, {}, _fingerprint("steering_vectors", D),
                          {"layer_type": lt})  # fmt: skip


def export_neuronpedia_vector(
    vector: SteeringVector,
    out_dir: str | Path,
    *,
    model_id: str,
    label: str,
    set_name: str = "steerlab-vector",
    strength: float = 10.0,
    unit: bool = True,
) -> list[Path]:
    """Write each layer of ``vector`` as a Neuronpedia vector row (index 0 of source
    ``<layer>-<set_name>``), in the export layout of :mod:`steerlab.saes.io.neuronpedia`.

    Args:
        vector: the steering vector.
        out_dir: root of the export.
        model_id: Neuronpedia's model id.
        label: the vector's label.
        set_name: the source set name.
        strength: ``vectorDefaultSteerStrength``.
        unit: write unit directions (False: the raw directions).
    """
    paths = []
    for site in vector.sites:
        v = vector.direction(site, unit=unit).float().cpu().tolist()
        src = source_id(site, set_name)
        hook = parse_site(site).tl_name()  # Neuronpedia names hooks as TransformerLens does
        row = neuron_vector_row(model_id, src, 0, v, label, hook, strength)
        paths.append(write_export(out_dir, model_id, src, [row], [], width=vector.d_model,
                                  hook_name=site, set_description=f"steering vector {label}"))  # fmt: skip
    return paths
