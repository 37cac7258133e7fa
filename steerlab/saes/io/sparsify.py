"""EleutherAI sparsify checkpoints: ``cfg.json`` + ``sae.safetensors`` per hookpoint.

Read from eai-sparsify 1.3.3's source (``sparsify/sparse_coder.py``, ``config.py``,
``fused_encoder.py``). One SAE is a directory named after its hookpoint (``layers.6``) with

- ``cfg.json``: the ``SparseCoderConfig`` fields (``activation``, ``expansion_factor``,
  ``normalize_decoder``, ``num_latents``, ``k``, ``multi_topk``, ``skip_connection``,
  ``transcode``) plus ``d_in``;
- ``sae.safetensors``: ``encoder.weight [d_sae, d_in]``, ``encoder.bias [d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (and ``W_skip`` with a skip connection).

sparsify encodes ``TopK(ReLU((x − b_dec) Eᵀ + e))`` and decodes ``z W_dec + b_dec``: steerlab's
TopK SAE with ``W_enc = Eᵀ``, ``b_enc = e`` (TopK and ReLU commute). A training run directory
holds one such directory per hookpoint (and the trainer's ``config.json``, whose ``model`` is
read as the model id): :func:`load_sparsify_run` reads them all. ``d_sae`` is ``num_latents``,
or ``d_in · expansion_factor`` when that is 0.

Hookpoints map to steerlab sites where the module is a block (``layers.N`` -> ``resid_post.N``,
``layers.N.mlp`` -> ``mlp_out.N``, ``layers.N.self_attn`` / ``.attn`` -> ``attn_out.N``); other
names are kept as the site string. Refused with a clear error: ``groupmax`` activations,
transcoders, skip connections (not an SAE of ``x`` alone).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from steerlab.io import atomic_dir
from steerlab.saes.io.common import as_path, build_filled, need, read_json
from steerlab.saes.sae import Sae, SaeConfig

SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
RUN_CONFIG = "config.json"
_HOOK_TO_KIND = {"": "resid_post", ".mlp": "mlp_out", ".self_attn": "attn_out", ".attn": "attn_out"}
_HOOK_RE = re.compile(r"^(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h|blocks)\.(\d+)(.*)$")


def hookpoint_site(hookpoint: str) -> str:
    """steerlab site of a sparsify hookpoint (``layers.6`` -> ``resid_post.6``), else itself."""
    m = _HOOK_RE.match(hookpoint)
    if m and m.group(2) in _HOOK_TO_KIND:
        return f"{_HOOK_TO_KIND[m.group(2)]}.{m.group(1)}"
    return hookpoint


def site_hookpoint(site: str) -> str:
    """sparsify hookpoint of a steerlab site (``resid_post.6`` -> ``layers.6``)."""
    kind, _, layer = site.rpartition(".")
    back = {"resid_post": "", "mlp_out": ".mlp", "attn_out": ".self_attn"}
    if kind in back and layer.isdigit():
        return f"layers.{layer}{back[kind]}"
    return site


def is_sparsify_dir(path: Path) -> bool:
    """``cfg.json`` + ``sae.safetensors`` whose config names sparsify's fields."""
    if not ((path / SPARSIFY_CFG).is_file() and (path / SPARSIFY_WEIGHTS).is_file()):
        return False
    cfg = read_json(path / SPARSIFY_CFG, "a sparsify config")
    return "expansion_factor" in cfg or "num_latents" in cfg


def load_sparsify(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, model_id: str | None = None
) -> Sae:
    """Read one sparsify SAE directory as a steerlab TopK SAE (see the module).

    Raises:
        FileNotFoundError: no ``cfg.json`` / ``sae.safetensors``.
        ValueError: an unsupported option, or tensors that disagree with the config.
    """
    path = as_path(path)
    for name in (SPARSIFY_CFG, SPARSIFY_WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a sparsify SAE directory: no {name}")
    where = path / SPARSIFY_CFG
    raw = read_json(where, "a sparsify SparseCoderConfig")
    act = raw.get("activation", "topk")
    if act != "topk":
        raise ValueError(f"{where}: activation={act!r} is not supported (steerlab reads topk)")
    for flag, why in (("transcode", "a transcoder predicts another site's output"),
                      ("skip_connection", "its output adds x W_skip")):  # fmt: skip
        if raw.get(flag):
            raise ValueError(f"{where}: {flag}=true is not supported ({why}; not an SAE of x)")
    d_in = int(need(raw, "d_in", where))
    d_sae = int(raw.get("num_latents") or 0) or d_in * int(need(raw, "expansion_factor", where))
    t = load_file(str(path / SPARSIFY_WEIGHTS), device="cpu")
    for n in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        if n not in t:
            raise ValueError(f"{path / SPARSIFY_WEIGHTS}: missing {n!r} (has {sorted(t)})")
    dtype = str(t["encoder.weight"].dtype).replace("torch.", "")
    if model_id is None and (path.parent / RUN_CONFIG).is_file():
        model_id = read_json(path.parent / RUN_CONFIG, "a sparsify TrainConfig").get("model")
    cfg = SaeConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=int(need(raw, "k", where)),
                    site=hookpoint_site(path.name), model_id=model_id, dtype=dtype)  # fmt: skip
    if tuple(t["encoder.weight"].shape) != (d_sae, d_in):
        raise ValueError(f"{path / SPARSIFY_WEIGHTS}: encoder.weight has shape "
                         f"{tuple(t['encoder.weight'].shape)}, the config implies {(d_sae, d_in)}")  # fmt: skip
    tensors = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"],
               "b_dec": t["b_dec"]}  # fmt: skip
    return build_filled(cfg, tensors, str(path / SPARSIFY_WEIGHTS)).to(device)


def sparsify_hookpoints(run_dir: str | os.PathLike) -> list[str]:
    """The hookpoint directories of a sparsify run directory, sorted (``layers.2`` < ``layers.10``)."""
    run_dir = as_path(run_dir)
    names = [p.name for p in run_dir.iterdir() if p.is_dir() and is_sparsify_dir(p)]
    key = [(int(m.group(1)), m.group(2)) if (m := _HOOK_RE.match(n)) else (10**9, n) for n in names]
    return [n for _, n in sorted(zip(key, names))]


def load_sparsify_run(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> dict[str, Sae]:
    """Every SAE of a sparsify run directory, by hookpoint."""
    run_dir = as_path(run_dir)
    hooks = sparsify_hookpoints(run_dir)
    if not hooks:
        raise FileNotFoundError(f"{run_dir} holds no sparsify SAE directories "
                                "(<hookpoint>/cfg.json + sae.safetensors)")  # fmt: skip
    return {h: load_sparsify(run_dir / h, device) for h in hooks}


def save_sparsify(sae: Sae, path: str | os.PathLike) -> Path:
    """Write a TopK ``sae`` as a sparsify directory ``path`` (atomically).

    sparsify reads it with ``SparseCoder.load_from_disk(path)``; name the directory after the
    hookpoint (:func:`site_hookpoint`) so that ``load_many`` and steerlab recover the site.
    """
    c = sae.cfg
    if c.architecture != "topk":
        raise ValueError(f"sparsify has TopK SAEs only; this one is {c.architecture!r} "
                         "(write it with save_saelens instead)")  # fmt: skip
    cfg = {"activation": "topk", "expansion_factor": max(1, c.d_sae // c.d_in),
           "normalize_decoder": True, "num_latents": c.d_sae, "k": c.k, "multi_topk": False,
           "skip_connection": False, "transcode": False, "d_in": c.d_in}  # fmt: skip
    t = {"encoder.weight": sae.W_enc.detach().T, "encoder.bias": sae.b_enc.detach(),
         "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}  # fmt: skip
    path = as_path(path)
    with atomic_dir(path) as tmp:
        (tmp / SPARSIFY_CFG).write_text(json.dumps(cfg, indent=2))
        save_file({k: v.cpu().contiguous() for k, v in t.items()}, str(tmp / SPARSIFY_WEIGHTS))
    return path


def save_sparsify_run(saes: dict[str, Sae] | list[Sae], run_dir: str | os.PathLike) -> Path:
    """Write several TopK SAEs as one sparsify run directory (one ``<hookpoint>/`` each).

    Args:
        saes: hookpoint -> SAE, or a list whose hookpoints come from each ``cfg.site``.
        run_dir: target directory (replaced if it exists).
    """
    if isinstance(saes, list):
        saes = {site_hookpoint(s.cfg.site or f"sae{i}"): s for i, s in enumerate(saes)}
    run_dir = as_path(run_dir)
    with atomic_dir(run_dir) as tmp:
        for hook, sae in saes.items():
            save_sparsify(sae, tmp / hook)
    return run_dir
