"""Helpers shared by the SAE file readers and writers: fill an SAE, fold foreign options.

Every reader maps a foreign file onto a steerlab SAE whose encoder subtracts ``b_dec``
(``pre = (x − b_dec) W_enc + b_enc``) and whose decoder rows carry their own norms. Options
that steerlab's classes do not have are folded into the weights by maps that are exact in
real arithmetic, so the folded SAE computes the same function:

- no ``b_dec`` subtraction: ``x W_enc + b_enc == (x − b_dec) W_enc + (b_enc + b_dec W_enc)``;
- a constant input scale ``s`` (SAELens ``expected_average_only_in``): the SAE sees ``s·x``
  and returns ``x̂/s``, so ``W_enc ← s W_enc``, ``W_dec ← W_dec / s``, ``b_dec ← b_dec / s``
  (SAELens's ``fold_activation_norm_scaling_factor``; thresholds are on the ``pre`` scale and
  do not change);
- an affine whitening ``w = (x − μ) M`` (SAELens ``covariance_whitening``):
  ``W_enc ← M W_enc``, ``W_dec ← W_dec M⁻¹``, ``b_dec ← b_dec M⁻¹ + μ`` (SAELens's
  ``fold_activation_whitening`` with ``b_dec`` subtracted).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from steerlab.saes.sae import Sae, SaeConfig, build_sae

logger = logging.getLogger(__name__)


def sae_tensors(sae: Sae) -> dict[str, Tensor]:
    """Every tensor that defines ``sae`` (its state dict: parameters and buffers), detached."""
    return {n: t.detach() for n, t in sae.state_dict().items()}


def fill_sae(sae: Sae, tensors: Mapping[str, Tensor], where: str) -> Sae:
    """Copy ``tensors`` into ``sae``; names and shapes must be exactly those of its state dict.

    Raises:
        ValueError: a missing or unexpected tensor, or a shape other than the config implies,
            naming ``where`` (the file or directory).
    """
    own = sae.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f"{where}: missing tensor(s) {missing} (has {sorted(tensors)})")
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(f"{where}: unexpected tensor(s) {extra} for a {sae.cfg.architecture} "
                         f"SAE (expects {sorted(own)})")  # fmt: skip
    for n, p in own.items():
        if tuple(tensors[n].shape) != tuple(p.shape):
            raise ValueError(f"{where}: {n} has shape {tuple(tensors[n].shape)}, but the config "
                             f"(d_in={sae.d_in}, d_sae={sae.d_sae}) implies {tuple(p.shape)}")  # fmt: skip
    sae.load_state_dict({n: tensors[n].to(p) for n, p in own.items()})
    return sae


def build_filled(cfg: SaeConfig, tensors: Mapping[str, Tensor], where: str,
                 device: str | torch.device = "cpu") -> Sae:  # fmt: skip
    """A new SAE of ``cfg`` holding ``tensors`` (see :func:`fill_sae`)."""
    return fill_sae(build_sae(cfg, device=device), tensors, where)


def fold_b_dec_into_b_enc(t: dict[str, Tensor], b_enc: str = "b_enc") -> None:
    """In place: ``b_enc += b_dec W_enc`` (an encoder that did not subtract ``b_dec``)."""
    t[b_enc] = t[b_enc] + t["b_dec"] @ t["W_enc"]


def fold_input_scale(t: dict[str, Tensor], s: float) -> None:
    """In place: an SAE trained on ``s·x`` becomes one on ``x`` (see the module)."""
    t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * s, t["W_dec"] / s, t["b_dec"] / s


def fold_whitening(t: dict[str, Tensor], mean: Tensor, M: Tensor, M_inv: Tensor) -> None:
    """In place: an SAE on ``w = (x − μ) M`` that subtracts ``b_dec`` becomes one on ``x``."""
    dt = torch.promote_types(t["W_enc"].dtype, M.dtype)
    W_enc, W_dec, b_dec = (t[n].to(dt) for n in ("W_enc", "W_dec", "b_dec"))
    mean, M, M_inv = mean.to(dt), M.to(dt), M_inv.to(dt)
    t["W_enc"] = (M @ W_enc).to(t["W_enc"].dtype)
    t["W_dec"] = (W_dec @ M_inv).to(t["W_dec"].dtype)
    t["b_dec"] = (b_dec @ M_inv + mean).to(t["b_dec"].dtype)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, with the file named in any error."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected {what}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def need(cfg: Mapping[str, Any], key: str, where: Any) -> Any:
    """``cfg[key]``, or a ValueError naming the file and the key."""
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"{where}: the config has no {key!r} (keys: {sorted(cfg)})")
    return cfg[key]


def as_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` (``~`` expanded)."""
    return Path(path).expanduser()
