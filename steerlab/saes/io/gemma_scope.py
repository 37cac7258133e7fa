"""Gemma Scope ``params.npz``: a JumpReLU SAE as five NumPy arrays.

Lieberum et al. (2024), "Gemma Scope"; the layout SAELens's ``gemma_2`` converter reads
(``loading/pretrained_sae_loaders.py``: ``gemma_2_sae_huggingface_loader``): ``W_enc
[d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``, ``threshold
[d_sae]`` (SAELens also renames lower-case ``w_*`` keys), with an encoder that does *not*
subtract ``b_dec`` (``apply_b_dec_to_input: False``), read here as ``b_enc += b_dec W_enc``.
The file is read with ``numpy.load(allow_pickle=False)``: object arrays are refused.

The site comes from the release's folder names when they follow Gemma Scope's
``layer_<N>/width_<W>/...`` under a ``*-res`` / ``*-mlp`` repository: ``resid_post.N`` /
``mlp_out.N`` (attention SAEs read per-head ``hook_z``, which is no steerlab site: no site).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from steerlab.saes.io.common import as_path, build_filled, fold_b_dec_into_b_enc
from steerlab.saes.sae import Sae, SaeConfig

GEMMA_SCOPE_FILE = "params.npz"
GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def _site(path: Path) -> str | None:
    text = "/".join(path.parts[-5:])
    m = re.search(r"layer_(\d+)", text)
    if not m:
        return None
    if "att" in text:
        return None
    return f"{'mlp_out' if 'mlp' in text else 'resid_post'}.{m.group(1)}"


def load_gemma_scope(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, model_id: str | None = None
) -> Sae:
    """Read a Gemma Scope ``params.npz`` (or the directory holding it) as a JumpReLU SAE.

    Raises:
        FileNotFoundError: no ``params.npz``.
        ValueError: object arrays (pickles), missing arrays, or inconsistent shapes.
    """
    path = as_path(path)
    f = path / GEMMA_SCOPE_FILE if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a Gemma Scope SAE: no {GEMMA_SCOPE_FILE}")
    try:
        with np.load(f, allow_pickle=False) as data:
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.asarray(data[k])
                      for k in data.files}  # fmt: skip
    except ValueError as e:  # numpy refuses object arrays without allow_pickle
        raise ValueError(f"{f}: numpy.load(allow_pickle=False) refused it ({e}); Gemma Scope "
                         "files hold plain float arrays") from None  # fmt: skip
    missing = [k for k in GEMMA_SCOPE_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{f}: missing array(s) {missing} (has {sorted(arrays)})")
    if arrays["W_enc"].ndim != 2:
        raise ValueError(f"{f}: W_enc must be [d_in, d_sae], got shape {arrays['W_enc'].shape}")
    d_in, d_sae = arrays["W_enc"].shape
    cfg = SaeConfig(d_in=int(d_in), d_sae=int(d_sae), architecture="jumprelu",
                    site=_site(f.parent), model_id=model_id, dtype="float32")  # fmt: skip
    t = {k: torch.from_numpy(arrays[k].astype(np.float32)) for k in GEMMA_SCOPE_KEYS}
    if tuple(t["b_dec"].shape) == (d_in,) and tuple(t["W_enc"].shape) == (d_in, d_sae):
        fold_b_dec_into_b_enc(t)
    return build_filled(cfg, t, str(f)).to(device)


def save_gemma_scope(sae: Sae, path: str | os.PathLike) -> Path:
    """Write a JumpReLU ``sae`` as a Gemma Scope ``params.npz`` (``b_enc`` unfolded), for tests
    and for tools that read the release layout. ``path`` is the file or its directory."""
    if sae.cfg.architecture != "jumprelu":
        raise ValueError(f"params.npz holds JumpReLU SAEs; this one is {sae.cfg.architecture!r}")
    path = as_path(path)
    f = path / GEMMA_SCOPE_FILE if path.suffix != ".npz" else path
    f.parent.mkdir(parents=True, exist_ok=True)
    g = {n: getattr(sae, n).detach().cpu().double() for n in GEMMA_SCOPE_KEYS}
    g["b_enc"] = g["b_enc"] - g["b_dec"] @ g["W_enc"]  # the release's encoder adds no b_dec
    tmp = f.with_name(f".{f.name}.tmp.npz")
    np.savez(tmp, **{k: v.float().numpy() for k, v in g.items()})
    os.replace(tmp, f)
    return f
