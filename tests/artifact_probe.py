"""Load an artifact in a fresh process and record what it holds and computes.

Used by tests/test_artifacts.py in two ways: imported (by path) to compute the outputs of the
original object, and run as a script in a subprocess to load the saved copy there through
``steerlab.artifacts.load`` alone:

    python tests/artifact_probe.py <artifact dir> <input.safetensors> <out dir> <threads>

The script writes ``<out dir>/state.safetensors`` (every tensor the object holds),
``<out dir>/outputs.safetensors`` (what it computes on the input) and ``<out dir>/info.json``
(its class, its ``meta``, and whether its kind's module was imported before ``load``). Only
torch, safetensors and ``steerlab.artifacts`` are imported up front, so the kind's module is imported by the lazy kind table or not at
all.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import steerlab.artifacts as artifacts


def state(obj: Any) -> dict[str, Tensor]:
    """Every tensor an artifact object holds, by name."""
    if isinstance(obj, nn.Module):
        return {k: v.detach() for k, v in obj.state_dict().items()}
    out: dict[str, Tensor] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            out[f.name] = value
        elif (
            isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values())
        ):
            out.update({f"{f.name}/{k}": v for k, v in value.items()})
    return out


def outputs(kind: str, obj: Any, x: Tensor) -> dict[str, Tensor]:
    """What the artifact computes on ``x`` (``[2, 5, d]``), dispatched on its kind."""
    flat = x.reshape(-1, x.shape[-1])
    if kind == "subspace":
        return {"project": obj.project(flat), "erase": obj.erase(flat)}
    if kind in ("leace", "rlace", "inlp"):
        return {"erase": obj(flat)}
    if kind == "pls":
        return {"predict": obj(flat), "scores": obj.transform(flat)}
    if kind == "linear_probe":
        return {"logits": obj(flat)}
    if kind == "ast_probe":
        out = obj(x[0])
        return {"d": out.d, "c": out.c_scores, "u": out.u_scores}
    if kind == "ast_features":
        return {
            f"snippet{i}/{s}": obj.snippet(i, s) for i in range(obj.n_snippets) for s in obj.sites
        }
    if kind == "steering_vector":
        return {f"proj/{layer}": obj(flat, layer) for layer in obj.layers}
    if kind == "sae":
        return {"reconstruct": obj.reconstruct(flat)}
    # interventions: the edit each site's hook makes, with padding on both sides. Imported
    # here, after load: steerlab.positions imports steerlab.subspace, a kind's module, and the
    # probe must not import any kind's module before the lazy table does
    from steerlab.positions import TokenView

    view = TokenView.from_mask(torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]), x.shape[1])
    with torch.no_grad():
        return {f"apply/{site}": obj.apply_at(site, x, view) for site in obj.sites()}


def main(argv: list[str]) -> None:
    path, inputs, out_dir, threads = Path(argv[0]), Path(argv[1]), Path(argv[2]), int(argv[3])
    torch.set_num_threads(threads)  # the parent's: the same kernels, the same sums
    kind = artifacts.read_cfg(path)["kind"]
    module = artifacts.KIND_TABLE[kind].partition(":")[0]
    imported_before = module in sys.modules
    obj = artifacts.load(path)
    x = load_file(str(inputs))["x"]
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state(obj).items()}, str(out_dir / "state.safetensors")
    )
    res = {k: v.contiguous() for k, v in outputs(kind, obj, x).items()}
    save_file(res, str(out_dir / "outputs.safetensors"))
    info = {
        "class": f"{type(obj).__module__}:{type(obj).__qualname__}",
        "meta": getattr(obj, "meta", None),
        "imported_before": imported_before,
    }
    (out_dir / "info.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1:])
