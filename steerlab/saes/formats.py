"""SAEs on disk: steerlab's own directory and training checkpoints.

- steerlab: ``cfg.json`` (the :mod:`steerlab.artifacts` header with ``kind: "sae"``, plus the
  :class:`SaeConfig` fields) + ``sae.safetensors`` (the SAE's state dict: ``W_enc``,
  ``b_enc``, ``W_dec``, ``b_dec``, and the extra tensors of an architecture, e.g.
  ``threshold``), written atomically by :func:`steerlab.artifacts.save_artifact`.

Foreign layouts (SAELens, sparsify, dictionary_learning, Gemma Scope) live in
:mod:`steerlab.saes.io`, whose :func:`~steerlab.saes.io.load_sae` recognises all of them; the
SAELens reader and writer are re-exported here for code written before that package.

Training checkpoints (:func:`write_checkpoint`) are directories too: ``state.json``,
``state.safetensors`` and per SAE ``<name>/`` in the steerlab layout plus
``<name>/optimizer.safetensors``; Adam's state is flattened into named tensors
(:func:`adam_state_tensors`), never pickled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from steerlab.artifacts import CFG_NAME, HEADER, load_artifact, register, save_artifact
from steerlab.io import atomic_dir, previous_version
from steerlab.saes.io.common import fill_sae, sae_tensors
from steerlab.saes.sae import Sae, SaeConfig, build_sae
from steerlab.validation import check_tensor, reading

logger = logging.getLogger(__name__)

SAE_KIND = "sae"
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
"""The parameters every architecture has (the trainer optimises these)."""


_HEADER_ONLY = frozenset(HEADER) - {"d_in", "site", "model_id"}


@register(SAE_KIND)
class SaeArtifact:
    """The loader of ``kind: "sae"`` for :func:`steerlab.artifacts.load` (the SAE classes
    themselves are chosen by ``architecture``, see :func:`load_sae`)."""

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Sae:
        """:func:`load_sae`."""
        return load_sae(path, device=device)


def save_sae(sae: Sae, path: str | os.PathLike) -> Path:
    """Write ``sae`` as ``cfg.json`` + ``sae.safetensors`` into ``path`` (atomically).

    ``cfg.json`` holds the header (``d_in``, ``site`` and ``model_id`` from the config) and
    the :class:`SaeConfig` fields.
    """
    c = sae.cfg
    if not isinstance(sae, Sae):
        raise TypeError(f"save_sae writes a steerlab Sae, got {type(sae).__name__} (a "
                        "NormalizedSae is saved with save_saelens, which records its mode)")  # fmt: skip
    return save_artifact(path, SAE_KIND, c.to_dict(), sae_tensors(sae), d_in=c.d_in,
                         site=c.site, model_id=c.model_id)  # fmt: skip


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> Sae:
    """Read an SAE written by :func:`save_sae`; the class comes from ``architecture``."""
    cfg_dict, tensors = load_artifact(path, SAE_KIND, device=device)
    # the header fields that are not SaeConfig fields (d_in, site and model_id are both)
    own = {k: v for k, v in cfg_dict.items() if k not in _HEADER_ONLY}
    with reading(Path(path) / CFG_NAME, "SAE config"):  # its own checks name the field
        cfg = SaeConfig.from_dict(own)
    with reading(path, "SAE"):
        # the widths against the file before building (a damaged d_sae must not allocate)
        check_tensor(tensors["W_enc"], path, "W_enc", (cfg.d_in, cfg.d_sae))
        return fill_sae(build_sae(cfg, device=device), tensors, str(path))


# --- training checkpoints ----------------------------------------------------------------------

CHECKPOINT_NAME = "checkpoint"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


def adam_state_tensors(opt: torch.optim.Optimizer, sae: Sae) -> dict[str, Tensor]:
    """Adam's per-parameter state as ``{"<param>.exp_avg" | ".exp_avg_sq" | ".step": tensor}``."""
    out = {}
    for n in PARAM_NAMES:
        st = opt.state.get(getattr(sae, n), {})
        for key in _ADAM_KEYS:
            if key in st:
                out[f"{n}.{key}"] = st[key].reshape(-1) if key == "step" else st[key]
    return out


def load_adam_state_(opt: torch.optim.Optimizer, sae: Sae, t: Mapping[str, Tensor]) -> None:
    """Restore :func:`adam_state_tensors` output into ``opt`` (built over ``PARAM_NAMES``)."""
    for n in PARAM_NAMES:
        if f"{n}.exp_avg" in t and t[f"{n}.exp_avg"].shape != getattr(sae, n).shape:
            raise ValueError(f"optimizer state for {n} has shape {tuple(t[f'{n}.exp_avg'].shape)}")
    sd = opt.state_dict()
    sd["state"] = {
        i: {key: t[f"{n}.{key}"].reshape(()) if key == "step" else t[f"{n}.{key}"]
            for key in _ADAM_KEYS}
        for i, n in enumerate(PARAM_NAMES)
        if f"{n}.step" in t
    }  # fmt: skip
    opt.load_state_dict(sd)


def write_checkpoint(
    root: str | os.PathLike,
    body: dict[str, Any],
    saes: Mapping[str, Sae],
    per_sae: Mapping[str, dict[str, Tensor]],
    tensors: dict[str, Tensor],
) -> Path:
    """Write ``root/checkpoint`` atomically (:func:`~steerlab.io.atomic_dir`); return its path.

    Args:
        root: checkpoint directory.
        body: JSON-serialisable state (``state.json``).
        saes: name -> SAE, each saved in the steerlab layout under ``<name>/``.
        per_sae: name -> tensors saved as ``<name>/optimizer.safetensors``.
        tensors: global tensors saved as ``state.safetensors`` (e.g. the RNG state).
    """
    target = Path(root) / CHECKPOINT_NAME
    with atomic_dir(target) as tmp:
        for name, sae in saes.items():
            save_sae(sae, tmp / name)
            t = {k: v.detach().cpu().contiguous() for k, v in per_sae[name].items()}
            save_file(t, str(tmp / name / OPTIMIZER_TENSORS))
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(body, indent=2))
    return target


def find_checkpoint(root: str | os.PathLike) -> Path | None:
    """``root/checkpoint`` if complete; after a crash between the two renames of
    :func:`steerlab.io.atomic_dir`, the previous one (``root/.checkpoint.old*``); else None."""
    target = Path(root) / CHECKPOINT_NAME
    for cand in (target, previous_version(target)):
        if cand is not None and (cand / STATE_JSON).is_file():
            return cand
    return None


def read_checkpoint(
    path: str | os.PathLike, names: list[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Sae], dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """Read what :func:`write_checkpoint` wrote: ``(body, saes, per_sae, tensors)``."""
    path = Path(path)
    body = json.loads((path / STATE_JSON).read_text())
    saes = {n: load_sae(path / n, device=device) for n in names}
    per_sae = {n: load_file(str(path / n / OPTIMIZER_TENSORS), device=str(device)) for n in names}
    return body, saes, per_sae, load_file(str(path / STATE_TENSORS))


# Re-exported for code written before steerlab.saes.io (imported last: steerlab.saes.io's
# package init imports this module's load_sae).
from steerlab.saes.io.saelens import (  # noqa: E402
    LOG_SPARSITY_EPS,
    SAELENS_ARCH,
    SAELENS_CFG,
    SAELENS_SPARSITY,
    SAELENS_WEIGHTS,
    load_saelens,
    load_saelens_sparsity,
    log_feature_sparsity,
    saelens_cfg,
    save_saelens,
)

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_SPARSITY_EPS",
    "PARAM_NAMES",
    "SAELENS_ARCH",
    "SAELENS_CFG",
    "SAELENS_SPARSITY",
    "SAELENS_WEIGHTS",
    "SAE_KIND",
    "SaeArtifact",
    "adam_state_tensors",
    "find_checkpoint",
    "load_adam_state_",
    "load_sae",
    "load_saelens",
    "load_saelens_sparsity",
    "log_feature_sparsity",
    "read_checkpoint",
    "save_sae",
    "save_saelens",
    "saelens_cfg",
    "write_checkpoint",
]
