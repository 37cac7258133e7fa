"""SAELens directories: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``).

Read from SAELens 6.54's source (``saes/*.py``, ``loading/pretrained_sae_loaders.py``,
``training/activation_scaler.py``). ``cfg.json`` keys read here:

- ``architecture``: ``standard`` (ReLU; steerlab ``relu_l1``), ``topk``, ``jumprelu``,
  ``gated``, and ``batchtopk`` (a SAELens *training* checkpoint: its ``topk_threshold``
  buffer becomes steerlab's BatchTopK threshold; SAELens saves finished BatchTopK SAEs as
  ``jumprelu``). Files from before SAELens 6 (no ``sae_lens_version``) say ``standard`` with
  ``activation_fn`` / ``activation_fn_str == "topk"`` and ``activation_fn_kwargs.k`` for TopK.
- ``d_in``, ``d_sae``, ``dtype``; ``k`` (TopK, BatchTopK; a float for BatchTopK, rounded);
  ``rescale_acts_by_decoder_norm`` (TopK, BatchTopK: folded into unit-norm decoder rows);
- ``apply_b_dec_to_input`` (default True; False is folded into ``b_enc``, and for gated SAEs
  into ``b_gate`` and ``b_mag``);
- ``normalize_activations``: ``none``; ``expected_average_only_in`` (the constant factor is
  folded in when known: the ``norm_scaling_factor`` argument, e.g. from a registry entry, or
  ``activation_scaler.json`` in the directory; without it SAELens runs the SAE unscaled, and
  so does steerlab, with a warning); ``covariance_whitening`` (folded from
  ``activation_whitening.safetensors`` when present, else unscaled as SAELens); and the
  per-token ``constant_norm_rescale`` / ``layer_norm``, returned as a
  :class:`~steerlab.saes.normalize.NormalizedSae`;
- ``reshape_activations`` must be ``none`` (``hook_z`` SAEs read per-head outputs, which are
  no steerlab site); a true ``finetuning_scaling_factor`` is refused;
- ``metadata.hook_name`` / ``model_name`` (or the pre-6 top-level keys) become ``site`` and
  ``model_id``; ``metadata.steerlab_config``, written by :func:`save_saelens`, restores
  steerlab's own config.

Weights: ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``; plus
``threshold`` (``jumprelu``; older checkpoints ``log_threshold``), ``b_gate``, ``r_mag``,
``b_mag`` (``gated``, which has no ``b_enc``), ``topk_threshold`` (``batchtopk``).

:func:`save_saelens` writes SAELens 6's inference layout for every steerlab architecture
(BatchTopK as ``jumprelu`` with every threshold equal to its ``θ``, as SAELens does) and no
``sae_lens_version``, so SAELens reads it through its pre-6 converter, which maps these keys.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from steerlab.io import atomic_dir
from steerlab.saes.io.common import (
    as_path,
    build_filled,
    fold_b_dec_into_b_enc,
    fold_input_scale,
    fold_whitening,
    need,
    read_json,
    sae_tensors,
)
from steerlab.saes.normalize import NORM_MODES, NormalizedSae
from steerlab.saes.sae import Sae, SaeConfig

logger = logging.getLogger(__name__)

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SPARSITY = "sparsity.safetensors"
SAELENS_SCALER = "activation_scaler.json"
SAELENS_WHITENING = "activation_whitening.safetensors"
SAELENS_ARCH = {"topk": "topk", "relu_l1": "standard", "jumprelu": "jumprelu",
                "gated": "gated", "batchtopk": "jumprelu"}  # fmt: skip
"""steerlab architecture -> the SAELens architecture it is written as."""
FROM_SAELENS = {"standard": "relu_l1", "topk": "topk", "jumprelu": "jumprelu",
                "gated": "gated", "batchtopk": "batchtopk"}  # fmt: skip
"""SAELens architecture -> steerlab architecture (what :func:`load_saelens` reads)."""
LOG_SPARSITY_EPS = 1e-10
"""Added to firing frequencies before ``log10`` (SAELens's value), so dead latents get -10."""


def log_feature_sparsity(density: Tensor) -> Tensor:
    """SAELens's ``sparsity`` tensor: ``log10(density + 1e-10)``."""
    return torch.log10(density.double() + LOG_SPARSITY_EPS).float()


def _inner(sae: Sae | NormalizedSae) -> tuple[Sae, str]:
    return (sae.sae, sae.mode) if isinstance(sae, NormalizedSae) else (sae, "none")


def saelens_cfg(
    sae: Sae | NormalizedSae,
    *,
    hook_name: str | None = None,
    hook_layer: int | None = None,
    model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The SAELens ``cfg.json`` for ``sae`` (see the module docstring).

    ``hook_name``, ``hook_layer`` and ``model_name`` default to ``cfg.site`` (its layer when
    it ends in ``.<int>``) and ``cfg.model_id``; pass TransformerLens names to use the file in
    SAELens with a HookedTransformer.
    """
    inner, norm = _inner(sae)
    c = inner.cfg
    hook_name = hook_name if hook_name is not None else c.site
    if hook_layer is None and c.site and c.site.rsplit(".", 1)[-1].isdigit():
        hook_layer = int(c.site.rsplit(".", 1)[-1])
    meta = {
        "model_name": model_name if model_name is not None else c.model_id,
        "hook_name": hook_name,
        "hook_head_index": None,
        "steerlab_config": c.to_dict(),
        **(metadata or {}),
    }
    arch = SAELENS_ARCH[c.architecture]
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": norm,
        "reshape_activations": "none",
        "model_name": meta["model_name"],
        "hook_name": hook_name,
        "hook_layer": hook_layer,
        "hook_head_index": None,
        "activation_fn": "topk" if arch == "topk" else "relu",
        "metadata": meta,
    }
    for key in ("model_name", "hook_name", "hook_layer"):
        if cfg[key] is None:
            del cfg[key]  # SAELens's pre-6 converter reads these as strings when present
    if arch == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False  # rows are unit norm: either reads the same
        cfg["activation_fn_kwargs"] = {"k": c.k}
    return cfg


def _saelens_tensors(sae: Sae) -> dict[str, Tensor]:
    t = {k: v.to("cpu").contiguous() for k, v in sae_tensors(sae).items()}
    if sae.cfg.architecture == "gated":
        t["b_gate"] = t.pop("b_enc")
    elif sae.cfg.architecture == "batchtopk":
        t["threshold"] = t["threshold"].expand(sae.d_sae).contiguous()
    return t


def save_saelens(
    sae: Sae | NormalizedSae,
    path: str | os.PathLike,
    *,
    density: Tensor | None = None,
    **cfg_kwargs: Any,
) -> Path:
    """Write ``sae`` in SAELens's layout into ``path``, atomically (:func:`steerlab.io.atomic_dir`).

    Args:
        sae: the SAE (a :class:`NormalizedSae` records its ``normalize_activations`` mode).
        path: target directory (replaced if it exists).
        density: ``[d_sae]`` firing frequency of each latent (fraction of tokens); written as
            ``sparsity.safetensors`` when given.
        **cfg_kwargs: ``hook_name``, ``hook_layer``, ``model_name``, ``metadata`` for
            :func:`saelens_cfg`.
    """
    path = as_path(path)
    inner, _ = _inner(sae)
    if density is not None and density.shape != (inner.d_sae,):
        raise ValueError(f"density must have shape ({inner.d_sae},), got {tuple(density.shape)}")
    cfg = saelens_cfg(sae, **cfg_kwargs)
    tensors = _saelens_tensors(inner)
    with atomic_dir(path) as tmp:
        (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2, default=str))
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        if density is not None:
            sparsity = {"sparsity": log_feature_sparsity(density.detach().cpu())}
            save_file(sparsity, str(tmp / SAELENS_SPARSITY))
    return path


def saelens_architecture(raw: dict[str, Any]) -> str:
    """The SAELens architecture a ``cfg.json`` describes (pre-6 TopK configs included)."""
    arch = raw.get("architecture", "standard")
    act = raw.get("activation_fn", raw.get("activation_fn_str"))
    if arch == "standard" and act == "topk":
        arch = "topk"  # pre-6 TopK SAEs were "standard" with a topk activation
    return arch


def _fields(raw: dict[str, Any], arch: str, path: Path) -> dict[str, Any]:
    meta = raw.get("metadata") or {}
    own = dict(meta.get("steerlab_config") or {})
    steerlab_arch = FROM_SAELENS[arch]
    if arch == "jumprelu" and own.get("architecture") == "batchtopk":
        steerlab_arch = "batchtopk"  # a steerlab BatchTopK SAE written as jumprelu
    fields: dict[str, Any] = {
        **own,
        "architecture": steerlab_arch,
        "d_in": int(need(raw, "d_in", path / SAELENS_CFG)),
        "d_sae": int(need(raw, "d_sae", path / SAELENS_CFG)),
        "dtype": raw.get("dtype") or "float32",
        "site": own.get("site", meta.get("hook_name", raw.get("hook_name"))),
        "model_id": own.get("model_id", meta.get("model_name", raw.get("model_name"))),
    }
    if fields["dtype"] not in ("float32", "float64", "float16", "bfloat16"):
        fields["dtype"] = str(fields["dtype"]).replace("torch.", "")
    if steerlab_arch in ("topk", "batchtopk"):
        k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k", own.get("k")))
        if k is None:
            raise ValueError(f"{path}: a {arch} SAE needs 'k' in cfg.json")
        fields["k"] = round(float(k))
    return fields


def _weights(raw: dict[str, Any], arch: str, t: dict[str, Tensor], path: Path,
             norm_scaling_factor: float | None) -> dict[str, Tensor]:  # fmt: skip
    where = path / SAELENS_WEIGHTS
    if "log_threshold" in t:  # JumpReLU checkpoints from before SAELens 6
        t["threshold"] = t.pop("log_threshold").exp()
    if arch == "gated":
        for n in ("b_gate", "r_mag", "b_mag"):
            if n not in t:
                raise ValueError(f"{where}: a gated SAE needs {n!r} (has {sorted(t)})")
        t["b_enc"] = t.pop("b_gate")
    if arch == "batchtopk":
        th = t.pop("topk_threshold", t.pop("threshold", None))
        t["threshold"] = torch.tensor(-1.0) if th is None else th.reshape(-1)[0].clone()
    if not raw.get("apply_b_dec_to_input", True):
        if arch == "gated":
            shift = t["b_dec"] @ t["W_enc"]
            t["b_enc"], t["b_mag"] = t["b_enc"] + shift, t["b_mag"] + shift * t["r_mag"].exp()
        else:
            fold_b_dec_into_b_enc(t)
    if arch in ("topk", "batchtopk") and raw.get("rescale_acts_by_decoder_norm"):
        # TopK on pre·‖W_dec‖ then decode (z/‖W_dec‖) W_dec == unit rows, W_enc/b_enc scaled
        norms = t["W_dec"].norm(dim=1)
        t["W_enc"], t["b_enc"] = t["W_enc"] * norms, t["b_enc"] * norms
        t["W_dec"] = t["W_dec"] / norms[:, None]
    norm = raw.get("normalize_activations") or "none"
    if norm == "expected_average_only_in":
        s = norm_scaling_factor
        if s is None and (path / SAELENS_SCALER).is_file():
            s = read_json(path / SAELENS_SCALER, "SAELens's activation scaler").get(
                "scaling_factor"
            )
        if s is None:
            logger.warning("%s: normalize_activations=expected_average_only_in without a scaling "
                           "factor; running unscaled, as SAELens does", path)  # fmt: skip
        else:
            fold_input_scale(t, float(s))
    elif norm == "covariance_whitening":
        if (path / SAELENS_WHITENING).is_file():
            w = load_file(str(path / SAELENS_WHITENING))
            fold_whitening(t, w["mean"], w["matrix"], w["inverse_matrix"])
        else:
            logger.warning("%s: covariance_whitening without %s; running unwhitened, as SAELens "
                           "does", path, SAELENS_WHITENING)  # fmt: skip
    return t


def load_saelens(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    norm_scaling_factor: float | None = None,
) -> Sae | NormalizedSae:
    """Read a SAELens directory into a steerlab SAE (see the module for what is honoured).

    Args:
        path: the directory.
        device: where to put the SAE.
        norm_scaling_factor: the constant of ``expected_average_only_in`` (a registry entry's
            ``norm_scaling_factor``), folded into the weights.

    Returns:
        The SAE, or a :class:`NormalizedSae` for the per-token normalisations.

    Raises:
        FileNotFoundError: no ``cfg.json`` or ``sae_weights.safetensors``.
        ValueError: an architecture or option steerlab cannot represent exactly, or tensors
            whose names or shapes disagree with the config.
    """
    path = as_path(path)
    cfg_file, weights_file = path / SAELENS_CFG, path / SAELENS_WEIGHTS
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{path} is not a SAELens SAE directory: no {f.name}")
    raw = read_json(cfg_file, "a SAELens SAE config")
    arch = saelens_architecture(raw)
    if arch not in FROM_SAELENS:
        raise ValueError(
            f"{path}: SAELens architecture {arch!r} is not supported; "
            f"steerlab reads {sorted(FROM_SAELENS)}"
        )
    norm = raw.get("normalize_activations") or "none"
    known = ("none", "expected_average_only_in", "covariance_whitening", *NORM_MODES)
    if norm not in known:
        raise ValueError(f"{cfg_file}: normalize_activations={norm!r} is unknown; steerlab "
                         f"reads {list(known)}")  # fmt: skip
    if raw.get("reshape_activations") not in ("none", None):
        raise ValueError(f"{cfg_file}: reshape_activations={raw['reshape_activations']!r} is "
                         "not supported (steerlab sites are whole activations, not per-head)")  # fmt: skip
    if raw.get("finetuning_scaling_factor"):
        raise ValueError(f"{cfg_file}: finetuning_scaling_factor is not supported; fold it "
                         "into W_dec first")  # fmt: skip
    fields = _fields(raw, arch, path)
    t = load_file(str(weights_file), device="cpu")
    t = _weights(raw, arch, dict(t), path, norm_scaling_factor)
    if fields["architecture"] == "batchtopk" and arch == "jumprelu":
        th = t["threshold"]  # steerlab's BatchTopK saved as SAELens does: one θ everywhere
        if th.numel() and bool((th == th[0]).all()):
            t["threshold"] = th[0].clone()
        else:
            fields["architecture"] = "jumprelu"
    cfg = SaeConfig.from_dict(fields)
    sae = build_filled(cfg, {n: v.to(cfg.torch_dtype) for n, v in t.items()}, str(weights_file))
    sae = sae.to(device)
    return NormalizedSae(sae, norm) if norm in NORM_MODES else sae


def load_saelens_sparsity(path: str | os.PathLike) -> Tensor | None:
    """The ``sparsity`` (log10 firing frequency) tensor of a SAELens directory, if present."""
    f = as_path(path) / SAELENS_SPARSITY
    return load_file(str(f))["sparsity"] if f.is_file() else None
