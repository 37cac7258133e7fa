"""LoReFT interventions to and from pyreft's saved layout (pyvene's ``IntervenableModel.save``).

Read from pyreft 0.1.0 (``pyreft/interventions.py``) and pyvene 0.1.8
(``models/intervenable_base.py``: ``save`` / ``load``; ``configuration_intervenable_model.py``).
A saved pyreft model is a directory with

- ``config.json``: the ``IntervenableConfig``: ``representations`` (one list per intervention,
  the fields of pyvene's ``RepresentationConfig`` in order: ``layer, component, unit,
  max_number_of_units, low_rank_dimension, intervention_type, intervention,
  subspace_partition, group_key, intervention_link_key, moe_key, source_representation,
  hidden_source_representation, latent_dim``), ``intervention_types`` (class names as
  ``"<class 'pyreft.interventions.LoreftIntervention'>"``), ``sorted_keys``
  (``layer_<L>_comp_<component>_unit_<unit>_nunit_<n>#<i>``), ``intervention_dimensions``,
  ``intervention_constant_sources``, ``mode``;
- ``intkey_<key>.bin`` per intervention: ``torch.save`` of its state dict, for LoReFT
  ``{"weight": W [r, d], "bias": b [r], "rotate_layer": R [d, r]}`` (pyreft's
  ``LoreftIntervention.state_dict``).

pyreft's LoReFT computes ``h + (W h + b − h R) Rᵀ`` with ``R [d, r]`` orthonormal columns:
steerlab's :class:`~steerlab.interventions.kinds.LoReFT` with ``R = Rᵀ_pyreft``,
``f = (W, b)``. Components: ``block_output`` -> ``resid_post.L``, ``mlp_output`` ->
``mlp_out.L``, ``attention_output`` -> ``attn_out.L``. The ``.bin`` files are read with
``torch.load(weights_only=True)`` only, and written as ``torch.save`` of plain tensors, the
form pyvene's ``load`` (``torch.load``) reads. pyreft applies an intervention at the positions
passed at call time; a saved file records none, so :func:`load_pyreft` takes the steerlab
position rule to use (default every token).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from steerlab.interventions.algebra import LowRankEdit
from steerlab.interventions.components import Affine
from steerlab.interventions.kinds import LoReFT
from steerlab.io import atomic_dir
from steerlab.positions import Positions
from steerlab.sites import parse_site
from steerlab.validation import safe_torch_load

PYREFT_CONFIG = "config.json"
LOREFT_TYPE = "<class 'pyreft.interventions.LoreftIntervention'>"
COMPONENTS = {"block_output": "resid_post", "mlp_output": "mlp_out",
              "attention_output": "attn_out"}  # fmt: skip
"""pyvene component -> steerlab site kind."""
_REPR_FIELDS = 14  # fields of pyvene's RepresentationConfig


def _key(layer: int, component: str, i: int) -> str:
    return f"layer_{layer}_comp_{component}_unit_pos_nunit_1#{i}"


def _loreft_tensors(iv: LoReFT | LowRankEdit) -> tuple[Tensor, Tensor, Tensor]:
    """``(R [r, d], W [r, d], b [r])`` of a LoReFT or of a LowRankEdit with an affine target."""
    f = getattr(iv, "f", None)
    if isinstance(f, Affine) and iv.gate is None:  # LoReFT, or LowRankEdit with f = W h + b
        return iv.basis().detach(), f.weight.detach(), f.bias.detach()
    raise ValueError(f"pyreft's LoreftIntervention holds h + Rᵀ(W h + b − R h); a "
                     f"{type(iv).__name__} with f={type(getattr(iv, 'f', None)).__name__} and a "
                     "gate is not of that form")  # fmt: skip


def save_pyreft(interventions: LoReFT | LowRankEdit | list, path: str | os.PathLike) -> Path:
    """Write LoReFT interventions as a pyreft / pyvene directory, atomically.

    pyreft reads it with ``pyreft.ReftModel.load(path, model)`` (pyvene's ``load``).

    Args:
        interventions: one or several LoReFTs (or affine-target LowRankEdits), at
            ``resid_post`` / ``mlp_out`` / ``attn_out`` sites.
        path: the directory (replaced if it exists).
    """
    ivs = interventions if isinstance(interventions, list) else [interventions]
    back = {v: k for k, v in COMPONENTS.items()}
    reprs, keys, dims, files = [], [], [], {}
    for i, iv in enumerate(ivs):
        site = parse_site(iv.site)
        if site.kind not in back:
            raise ValueError(f"pyvene has no component for {site.name}; use one of "
                             f"{sorted(back)} sites")  # fmt: skip
        R, W, b = _loreft_tensors(iv)
        comp = back[site.kind]
        reprs.append([site.layer, comp, "pos", 1, R.shape[0]] + [None] * (_REPR_FIELDS - 5))
        keys.append(_key(site.layer, comp, i))
        dims.append(R.shape[1])
        files[f"intkey_{keys[-1]}.bin"] = {"weight": W.float().cpu().contiguous(),
                                          "bias": b.float().cpu().contiguous(),
                                          "rotate_layer": R.T.float().cpu().contiguous()}  # fmt: skip
    cfg = {"representations": reprs, "intervention_types": [LOREFT_TYPE] * len(ivs),
           "mode": "parallel", "sorted_keys": keys, "model_type": "None",
           "intervention_dimensions": dims, "intervention_constant_sources": [False] * len(ivs)}  # fmt: skip
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / PYREFT_CONFIG).write_text(json.dumps(cfg, indent=2))
        for name, sd in files.items():
            torch.save(sd, tmp / name)
    return path


def load_pyreft(path: str | os.PathLike, positions: str | Positions = "all") -> list[LoReFT]:
    """Read a pyreft / pyvene directory of LoReFT interventions as steerlab LoReFTs.

    Raises:
        FileNotFoundError: no ``config.json`` or a missing ``intkey_*.bin``.
        ValueError: an intervention type other than LoReFT, an unknown component, a pickle
            ``weights_only`` refuses, or shapes that disagree with the config.
    """
    path = Path(path)
    if not (path / PYREFT_CONFIG).is_file():
        raise FileNotFoundError(f"{path} is not a pyreft directory: no {PYREFT_CONFIG}")
    cfg = json.loads((path / PYREFT_CONFIG).read_text())
    reprs, types, keys = (cfg.get(k) for k in ("representations", "intervention_types",
                                               "sorted_keys"))  # fmt: skip
    if not (isinstance(reprs, list) and isinstance(types, list) and isinstance(keys, list)
            and len(reprs) == len(types) == len(keys)):  # fmt: skip
        raise ValueError(f"{path / PYREFT_CONFIG}: needs representations, intervention_types and "
                         "sorted_keys of one length (pyvene's IntervenableConfig)")  # fmt: skip
    out = []
    for rep, typ, key in zip(reprs, types, keys):
        rep = list(rep.values()) if isinstance(rep, dict) else list(rep)
        layer, comp = int(rep[0]), str(rep[1])
        if "LoreftIntervention" not in str(typ):
            raise ValueError(f"{path}: intervention {key} is {typ}; steerlab reads pyreft's "
                             "LoreftIntervention only")  # fmt: skip
        if comp not in COMPONENTS:
            raise ValueError(f"{path}: component {comp!r} of {key} has no steerlab site; "
                             f"known: {sorted(COMPONENTS)}")  # fmt: skip
        f = path / f"intkey_{key}.bin"
        if not f.is_file():
            raise FileNotFoundError(f"{path}: missing {f.name}")
        sd = safe_torch_load(f)
        for n in ("weight", "bias", "rotate_layer"):
            if n not in sd:
                raise ValueError(f"{f}: missing {n!r} (has {sorted(sd)})")
        R = sd["rotate_layer"].double().T  # [r, d]
        W, b = sd["weight"], sd["bias"]
        r, d = R.shape
        if tuple(W.shape) != (r, d) or tuple(b.shape) != (r,):
            raise ValueError(f"{f}: weight {tuple(W.shape)} / bias {tuple(b.shape)} disagree "
                             f"with rotate_layer [{d}, {r}]")  # fmt: skip
        iv = LoReFT(d, r, f"{COMPONENTS[comp]}.{layer}", positions)
        with torch.no_grad():
            iv.R.weight = R.float()  # the orthogonal parametrization's right inverse
            iv.f.weight.copy_(W)
            iv.f.bias.copy_(b)
        iv.meta = {"source": "pyreft", "key": key}
        out.append(iv)
    return out
