"""dictionary_learning directories: ``ae.pt`` (a state dict) + ``config.json``.

Read from dictionary-learning 0.1.0's source (``dictionary.py``, ``trainers/top_k.py``,
``trainers/batch_top_k.py``, ``trainers/matryoshka_batch_top_k.py``, ``training.py``).
``config.json`` is ``{"trainer": {...}, "buffer": {...}}``; steerlab reads the trainer's
``dict_class``, ``activation_dim`` (``d_in``), ``dict_size`` (``d_sae``), ``k``, ``layer``,
``lm_name`` and ``submodule_name``. ``ae.pt`` is ``torch.save`` of the module's state dict,
read with ``torch.load(weights_only=True)`` **only**: a file that needs arbitrary unpickling
is refused, never executed. The state-dict keys per class, and what they become:

=======================  ==================================================  ================
``dict_class``           keys                                                steerlab
=======================  ==================================================  ================
``AutoEncoder``          ``encoder.weight/.bias``, ``decoder.weight``,       ``relu_l1``
                         ``bias`` (= b_dec)
``AutoEncoderTopK``      ``encoder.*``, ``decoder.weight``, ``b_dec``,       ``topk``
                         ``k``, ``threshold`` (unused by its ``encode``)
``BatchTopKSAE``         as TopK; ``threshold`` is the inference threshold   ``batchtopk``
``MatryoshkaBatch...``   ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``k``,  ``batchtopk``
                         ``threshold``, ``group_sizes``
``JumpReluAutoEncoder``  ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``,         ``jumprelu``
                         ``threshold``; its encoder does not subtract b_dec
``GatedAutoEncoder``     ``encoder.weight``, ``gate_bias``, ``mag_bias``,    ``gated``
                         ``r_mag``, ``decoder.weight``, ``decoder_bias``
=======================  ==================================================  ================

``nn.Linear`` weights are stored ``[out, in]``: ``W_enc = encoder.weightᵀ``,
``W_dec = decoder.weightᵀ``. Activations normalised during training need nothing: the trainer
scales the biases back before writing ``ae.pt``. :func:`save_dictionary_learning` writes the
same layout (a state dict of tensors only, which ``weights_only`` loads) for every steerlab
architecture, so dictionary_learning's ``from_pretrained`` reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from steerlab.io import atomic_dir
from steerlab.saes.io.common import as_path, build_filled, fold_b_dec_into_b_enc, need, read_json
from steerlab.saes.sae import Sae, SaeConfig
from steerlab.validation import safe_torch_load as safe_torch_load  # re-exported

DL_WEIGHTS = "ae.pt"
DL_CONFIG = "config.json"
DL_CLASSES = {"AutoEncoder": "relu_l1", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
              "MatryoshkaBatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu",
              "GatedAutoEncoder": "gated"}  # fmt: skip
"""dictionary_learning ``dict_class`` -> steerlab architecture."""
TO_DL = {"relu_l1": "AutoEncoder", "topk": "AutoEncoderTopK", "batchtopk": "BatchTopKSAE",
         "jumprelu": "JumpReluAutoEncoder", "gated": "GatedAutoEncoder"}  # fmt: skip
_SUBMODULE_KIND = (("mlp", "mlp_out"), ("attn", "attn_out"), ("resid", "resid_post"))


def _site(tr: dict[str, Any]) -> str | None:
    layer, sub = tr.get("layer"), str(tr.get("submodule_name") or "resid")
    if layer is None:
        return None
    kind = next((k for key, k in _SUBMODULE_KIND if key in sub), "resid_post")
    return f"{kind}.{int(layer)}"


def _tensors(arch: str, cls: str, sd: dict[str, Tensor], where: Path) -> dict[str, Tensor]:
    def get(*names: str) -> Tensor:
        for n in names:
            if n in sd:
                return sd[n]
        raise ValueError(f"{where}: a {cls} state dict needs {names[0]!r} (has {sorted(sd)})")

    if "W_enc" in sd:  # JumpReluAutoEncoder, MatryoshkaBatchTopKSAE
        t = {n: get(n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    else:
        t = {"W_enc": get("encoder.weight").T, "W_dec": get("decoder.weight").T,
             "b_dec": get("b_dec", "bias", "decoder_bias")}  # fmt: skip
        t["b_enc"] = get("gate_bias") if arch == "gated" else get("encoder.bias")
    if arch == "gated":
        t["r_mag"], t["b_mag"] = get("r_mag"), get("mag_bias")
    elif arch == "jumprelu":
        t["threshold"] = get("threshold")
        if cls == "JumpReluAutoEncoder":  # its encode does not subtract b_dec
            fold_b_dec_into_b_enc(t)
    elif arch == "batchtopk":
        t["threshold"] = get("threshold").reshape(-1)[0].clone()
    return t


def load_dictionary_learning(path: str | os.PathLike, device: str | torch.device = "cpu") -> Sae:
    """Read a dictionary_learning directory (``ae.pt`` + ``config.json``) or its ``ae.pt``."""
    path = as_path(path)
    root = path.parent if path.is_file() else path
    weights, config = (path if path.is_file() else root / DL_WEIGHTS), root / DL_CONFIG
    for f in (weights, config):
        if not f.is_file():
            raise FileNotFoundError(f"{root} is not a dictionary_learning directory: no {f.name}")
    raw = read_json(config, "a dictionary_learning config ({'trainer': ...})")
    tr = raw.get("trainer")
    if not isinstance(tr, dict):
        raise ValueError(f"{config}: no 'trainer' object (keys: {sorted(raw)})")
    cls = str(need(tr, "dict_class", config))
    if cls not in DL_CLASSES:
        raise ValueError(f"{config}: dict_class {cls!r} is not supported; steerlab reads "
                         f"{sorted(DL_CLASSES)}")  # fmt: skip
    arch = DL_CLASSES[cls]
    sd = safe_torch_load(weights)
    k = tr.get("k", int(sd["k"]) if "k" in sd else None)
    if arch in ("topk", "batchtopk") and k is None:
        raise ValueError(f"{config}: a {cls} needs 'k' (in the trainer config or the state dict)")
    d_in = int(need(tr, "activation_dim", config))
    d_sae = int(need(tr, "dict_size", config))
    lm = tr.get("lm_name")
    cfg = SaeConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=int(k) if k else 32,  # type: ignore[arg-type]
                    site=_site(tr), model_id=lm, dtype="float32")  # fmt: skip
    t = {n: v.float() for n, v in _tensors(arch, cls, sd, weights).items()}
    return build_filled(cfg, t, str(weights)).to(device)


def save_dictionary_learning(sae: Sae, path: str | os.PathLike) -> Path:
    """Write ``sae`` as a dictionary_learning directory (``ae.pt`` + ``config.json``), atomically.

    ``ae.pt`` is ``torch.save`` of a dict of tensors in the state-dict layout of the matching
    class (see the module), which ``torch.load(weights_only=True)`` and dictionary_learning's
    ``from_pretrained`` read.
    """
    c = sae.cfg
    cls = TO_DL[c.architecture]
    t = {n: v.detach().cpu() for n, v in sae.state_dict().items()}
    W_enc, b_enc, W_dec, b_dec = (t[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    sd: dict[str, Tensor]
    if c.architecture == "jumprelu":  # its encoder does not subtract b_dec: unfold
        sd = {"W_enc": W_enc, "b_enc": b_enc - b_dec @ W_enc, "W_dec": W_dec, "b_dec": b_dec,
              "threshold": t["threshold"]}  # fmt: skip
    elif c.architecture == "gated":
        sd = {"decoder_bias": b_dec, "encoder.weight": W_enc.T, "r_mag": t["r_mag"],
              "gate_bias": b_enc, "mag_bias": t["b_mag"], "decoder.weight": W_dec.T}  # fmt: skip
    elif c.architecture == "relu_l1":
        sd = {"bias": b_dec, "encoder.weight": W_enc.T, "encoder.bias": b_enc,
              "decoder.weight": W_dec.T}  # fmt: skip
    else:
        th = t["threshold"].reshape(()) if c.architecture == "batchtopk" else None
        sd = {"k": torch.tensor(c.k, dtype=torch.int), "threshold": torch.tensor(-1.0) if th is None
              else th.float(), "decoder.weight": W_dec.T, "encoder.weight": W_enc.T,
              "encoder.bias": b_enc, "b_dec": b_dec}  # fmt: skip
    layer = None
    if c.site and c.site.rsplit(".", 1)[-1].isdigit():
        layer = int(c.site.rsplit(".", 1)[-1])
    trainer = {"dict_class": cls, "activation_dim": c.d_in, "dict_size": c.d_sae, "layer": layer,
               "lm_name": c.model_id, "submodule_name": c.site, "steerlab_config": c.to_dict()}  # fmt: skip
    if sae.uses_k:
        trainer["k"] = c.k
    path = as_path(path)
    with atomic_dir(path) as tmp:
        torch.save({k: v.contiguous().float() if v.is_floating_point() else v
                    for k, v in sd.items()}, tmp / DL_WEIGHTS)  # fmt: skip
        (tmp / DL_CONFIG).write_text(json.dumps({"trainer": trainer}, indent=2))
    return path
