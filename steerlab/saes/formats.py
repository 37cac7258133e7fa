"""SAEs on disk: steerlab's directory and SAELens's layout.

- steerlab: ``cfg.json`` (the :mod:`steerlab.artifacts` header with ``kind: "sae"``, plus the
  :class:`SaeConfig` fields) + ``sae.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``,
  ``b_dec``), written atomically by :func:`steerlab.artifacts.save_artifact`.
- SAELens (v6): ``cfg.json`` + ``sae_weights.safetensors`` (same four tensors, same layouts)
  + ``sparsity.safetensors`` (``sparsity``: ``log10`` of each latent's firing frequency, as
  SAELens's trainer writes it). ``cfg.json`` holds SAELens's fields: ``architecture``
  (``topk`` | ``standard``), ``d_in``, ``d_sae``, ``dtype``, ``device``,
  ``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``, the TopK field
  ``k`` (and ``rescale_acts_by_decoder_norm``) at the top level as SAELens 6 does, the
  pre-6 keys ``model_name``, ``hook_name``, ``hook_layer``, ``hook_head_index``,
  ``activation_fn`` (+ ``activation_fn_kwargs: {k}``), and a ``metadata`` block. No
  ``sae_lens_version`` is claimed, so SAELens reads the file through its pre-6 converter,
  which maps exactly these keys (``k`` included) to its v6 config.

Training checkpoints (:func:`write_checkpoint`) are directories too: ``state.json``,
``state.safetensors`` and per SAE ``<name>/`` in the steerlab layout plus
``<name>/optimizer.safetensors``; Adam's state is flattened into named tensors
(:func:`adam_state_tensors`), never pickled.

Loading a SAELens directory folds the options steerlab's SAEs do not have into the weights:
``apply_b_dec_to_input = False`` becomes ``b_enc += b_dec W_enc``, and a TopK SAE with
``rescale_acts_by_decoder_norm`` gets unit-norm decoder rows with ``W_enc``/``b_enc`` columns
scaled by the norms (both exact in real arithmetic). Other architectures or activation
normalisations raise a clear error.
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

from steerlab.artifacts import HEADER, load_artifact, register, save_artifact
from steerlab.io import atomic_dir, previous_version
from steerlab.saes.sae import Sae, SaeConfig, build_sae

logger = logging.getLogger(__name__)

SAE_KIND = "sae"
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_SPARSITY = "sparsity.safetensors"
SAELENS_ARCH = {"topk": "topk", "relu_l1": "standard"}
"""steerlab architecture -> SAELens architecture."""
_FROM_SAELENS = {v: k for k, v in SAELENS_ARCH.items()}
LOG_SPARSITY_EPS = 1e-10
"""Added to firing frequencies before ``log10`` (SAELens's value), so dead latents get -10."""


_HEADER_ONLY = frozenset(HEADER) - {"d_in", "site", "model_id"}


def _tensors(sae: Sae) -> dict[str, Tensor]:
    return {n: getattr(sae, n).detach() for n in PARAM_NAMES}


def _fill(sae: Sae, tensors: dict[str, Tensor], where: str) -> Sae:
    for n in PARAM_NAMES:
        if n not in tensors:
            raise ValueError(f"{where}: missing tensor {n!r} (has {sorted(tensors)})")
        p = getattr(sae, n)
        if tuple(tensors[n].shape) != tuple(p.shape):
            raise ValueError(
                f"{where}: {n} has shape {tuple(tensors[n].shape)}, cfg implies {tuple(p.shape)}"
            )
        with torch.no_grad():
            p.copy_(tensors[n])
    return sae


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
    return save_artifact(path, SAE_KIND, c.to_dict(), _tensors(sae), d_in=c.d_in, site=c.site,
                         model_id=c.model_id)  # fmt: skip


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> Sae:
    """Read an SAE written by :func:`save_sae`; the class comes from ``architecture``."""
    cfg_dict, tensors = load_artifact(path, SAE_KIND, device=device)
    # the header fields that are not SaeConfig fields (d_in, site and model_id are both)
    own = {k: v for k, v in cfg_dict.items() if k not in _HEADER_ONLY}
    return _fill(build_sae(SaeConfig.from_dict(own), device=device), tensors, str(path))


def log_feature_sparsity(density: Tensor) -> Tensor:
    """SAELens's ``sparsity`` tensor: ``log10(density + 1e-10)``."""
    return torch.log10(density.double() + LOG_SPARSITY_EPS).float()


def saelens_cfg(
    sae: Sae,
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
    c = sae.cfg
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
    cfg: dict[str, Any] = {
        "architecture": SAELENS_ARCH[c.architecture],
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "model_name": meta["model_name"],
        "hook_name": hook_name,
        "hook_layer": hook_layer,
        "hook_head_index": None,
        "activation_fn": "topk" if c.architecture == "topk" else "relu",
        "metadata": meta,
    }
    if c.architecture == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False  # rows are unit norm: either reads the same
        cfg["activation_fn_kwargs"] = {"k": c.k}
    return cfg


def save_saelens(
    sae: Sae,
    path: str | os.PathLike,
    *,
    density: Tensor | None = None,
    **cfg_kwargs: Any,
) -> Path:
    """Write ``sae`` in SAELens's layout into ``path``, atomically (:func:`steerlab.io.atomic_dir`).

    Args:
        sae: the SAE.
        path: target directory (replaced if it exists).
        density: ``[d_sae]`` firing frequency of each latent (fraction of tokens); written as
            ``sparsity.safetensors`` when given.
        **cfg_kwargs: ``hook_name``, ``hook_layer``, ``model_name``, ``metadata`` for
            :func:`saelens_cfg`.
    """
    path = Path(path)
    if density is not None and density.shape != (sae.d_sae,):
        raise ValueError(f"density must have shape ({sae.d_sae},), got {tuple(density.shape)}")
    cfg = saelens_cfg(sae, **cfg_kwargs)
    with atomic_dir(path) as tmp:
        (tmp / SAELENS_CFG).write_text(json.dumps(cfg, indent=2, default=str))
        tensors = {k: v.to("cpu").contiguous() for k, v in _tensors(sae).items()}
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        if density is not None:
            sparsity = {"sparsity": log_feature_sparsity(density.detach().cpu())}
            save_file(sparsity, str(tmp / SAELENS_SPARSITY))
    return path


def load_saelens(path: str | os.PathLike, device: str | torch.device = "cpu") -> Sae:
    """Read a SAELens directory (``topk`` or ``standard``) into a steerlab SAE.

    Raises:
        FileNotFoundError: no ``cfg.json`` or ``sae_weights.safetensors``.
        ValueError: an architecture or option steerlab cannot represent exactly.
    """
    path = Path(path)
    cfg_file, weights_file = path / SAELENS_CFG, path / SAELENS_WEIGHTS
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{path} is not a SAELens SAE directory: no {f.name}")
    raw = json.loads(cfg_file.read_text())
    arch = raw.get("architecture", "standard")
    if arch == "standard" and raw.get("activation_fn", raw.get("activation_fn_str")) == "topk":
        arch = "topk"  # pre-6 TopK SAEs were "standard" with a topk activation
    if arch not in _FROM_SAELENS:
        raise ValueError(
            f"{path}: SAELens architecture {arch!r} is not supported; "
            f"steerlab reads {sorted(_FROM_SAELENS)}"
        )
    norm = raw.get("normalize_activations") or "none"
    if norm != "none":
        raise ValueError(
            f"{path}: normalize_activations={norm!r} is not supported; fold the scaling into "
            "the weights first (SAELens: fold_activation_norm_scaling_factor)"
        )
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{path}: reshape_activations={raw['reshape_activations']!r} unsupported")
    meta = raw.get("metadata") or {}
    steerlab_cfg = meta.get("steerlab_config") or {}
    fields: dict[str, Any] = {
        **steerlab_cfg,
        "architecture": _FROM_SAELENS[arch],
        "d_in": int(raw["d_in"]),
        "d_sae": int(raw["d_sae"]),
        "dtype": raw.get("dtype", "float32"),
        "site": steerlab_cfg.get("site", meta.get("hook_name", raw.get("hook_name"))),
        "model_id": steerlab_cfg.get("model_id", meta.get("model_name", raw.get("model_name"))),
    }
    if arch == "topk":
        k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise ValueError(f"{path}: a topk SAE needs 'k' in cfg.json")
        fields["k"] = int(k)
    cfg = SaeConfig.from_dict(fields)
    t = load_file(str(weights_file), device=str(device))
    t = {n: t[n].to(cfg.torch_dtype) for n in PARAM_NAMES if n in t}
    if not raw.get("apply_b_dec_to_input", True) and "W_enc" in t and "b_dec" in t:
        # x W_enc + b_enc == (x − b_dec) W_enc + (b_enc + b_dec W_enc)
        t["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]
    if arch == "topk" and raw.get("rescale_acts_by_decoder_norm") and "W_dec" in t:
        # TopK on pre·‖W_dec‖ then decode (z/‖W_dec‖) W_dec == unit rows, W_enc/b_enc scaled
        norms = t["W_dec"].norm(dim=1)
        t["W_enc"], t["b_enc"] = t["W_enc"] * norms, t["b_enc"] * norms
        t["W_dec"] = t["W_dec"] / norms[:, None]
    return _fill(build_sae(cfg, device=device), t, str(path))


def load_saelens_sparsity(path: str | os.PathLike) -> Tensor | None:
    """The ``sparsity`` (log10 firing frequency) tensor of a SAELens directory, if present."""
    f = Path(path) / SAELENS_SPARSITY
    return load_file(str(f))["sparsity"] if f.is_file() else None


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
