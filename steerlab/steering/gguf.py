"""llama.cpp control vectors: export a :class:`SteeringVector` to GGUF and import one back.

The file format is the one llama.cpp reads (``--control-vector``, ``--control-vector-scaled``)
and repeng writes (``ControlVector.export_gguf``):

- ``general.architecture = "controlvector"``;
- ``controlvector.model_hint``: the model family, the HF ``config.model_type`` (``"llama"``);
- ``controlvector.layer_count``: the number of direction tensors (as repeng and llama.cpp's
  ``cvector-generator`` write it);
- one 1-D F32 tensor ``direction.<N>`` of width ``n_embd`` per steered layer.

**Layer numbering.** ``direction.N`` is added to the output of llama.cpp's 0-based block ``N``,
which is steerlab's ``resid_post.N``; ``N = 0`` cannot be expressed. Verified by reading
llama.cpp: ``common_control_vector_load_one`` (common/common.cpp) rejects index 0 and stores
``direction.N`` at buffer offset ``n_embd·(N−1)``; ``llama_adapter_cvec::apply``
(src/llama-adapter.cpp) fills ``tensors[il]`` from offset ``n_embd·(il−1)`` for
``il = 1 … n_layer−1``, so the two shifts cancel and ``tensors[N]`` holds ``direction.N``; and
the Llama graph (src/models/llama.cpp) calls ``build_cvec(cur, il)`` right after the FFN
residual add of block ``il``, before ``l_out``: the block's output. repeng agrees: it reads
``hidden_states[layer + 1]`` (the output of block ``layer``; ``hidden_states[0]`` is the
embeddings) and writes ``direction.{layer}`` for layers ``n_layers−1 … 1``. (Older write-ups
describe repeng's layer ``i`` as ``hidden_states[i]``, the output of block ``i−1``; the current
code reads ``layer + 1``.) llama.cpp adds ``strength · direction.N`` at every token, prompt and
generation, and ignores every metadata key.

steerlab also stores its own config (method, read rule, norms, model id, data fingerprint) as
the JSON string ``steerlab.vector``, which llama.cpp ignores, so an export imported back is
the same vector. Files from repeng or llama.cpp import as method ``"gguf"`` without norms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np
import torch
from torch import Tensor

from steerlab.io import atomic_file
from steerlab.models import ModelHandle
from steerlab.positions import as_positions
from steerlab.steering.vectors import SteeringVector

logger = logging.getLogger(__name__)

ARCH = "controlvector"
MODEL_HINT_KEY = f"{ARCH}.model_hint"
LAYER_COUNT_KEY = f"{ARCH}.layer_count"
STEERLAB_KEY = "steerlab.vector"
TENSOR_PREFIX = "direction."

__all__ = ["ControlVectorFile", "export_gguf", "import_gguf", "read_gguf"]


class ControlVectorFile(NamedTuple):
    """The contents of a control-vector GGUF file.

    Attributes:
        model_hint: ``controlvector.model_hint``.
        layer_count: ``controlvector.layer_count`` (None if absent).
        directions: llama.cpp layer ``N`` -> ``[n_embd]`` float32 tensor, ``N`` increasing.
        config: steerlab's embedded config (``steerlab.vector``), or None for foreign files.
        sha256: hash of the file's bytes.
    """

    model_hint: str
    layer_count: int | None
    directions: dict[int, Tensor]
    config: dict[str, Any] | None
    sha256: str


def export_gguf(
    vector: SteeringVector,
    path: str | os.PathLike,
    *,
    alpha: float | None = None,
    relative: bool = True,
    model_hint: str | None = None,
) -> Path:
    """Write ``vector`` as a llama.cpp control vector (``direction.N`` = ``resid_post.N``).

    Args:
        vector: a vector at ``resid_post`` layers ``>= 1``.
        path: the ``.gguf`` file to write (atomically).
        alpha: None writes the raw directions (``import_gguf`` then returns the same vector);
            a number bakes in steerlab's strength: ``direction.N = alpha · s_N · v̂_N`` with
            ``s_N`` the recorded norm (``relative``) or 1, so llama.cpp at strength 1 adds what
            ``vector.intervention(N, alpha)`` adds (at every token).
        relative: with ``alpha``, scale by the recorded norms.
        model_hint: default ``vector.meta["model_type"]`` (set by :func:`fit_vector`).
    """
    if vector.site_kind != "resid_post":
        raise ValueError(
            f"llama.cpp adds control vectors to block outputs (resid_post); this vector lives at "
            f"{vector.site_kind}"
        )
    if 0 in vector.layers:
        raise ValueError(
            "llama.cpp cannot steer block 0 (it rejects direction.0); drop it with "
            "vector.select([...]) before exporting"
        )
    hint = model_hint or vector.meta.get("model_type")
    if not hint:
        raise ValueError("no model hint: pass model_hint='llama' (the HF config.model_type)")
    rows = vector.directions.detach().float().cpu()
    if alpha is not None:
        if relative and vector.norms is None:
            raise ValueError("relative=True needs recorded norms; pass relative=False")
        s = vector.norms.float().cpu() if relative and vector.norms is not None else 1.0
        unit = rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
        rows = float(alpha) * (s[:, None] if isinstance(s, Tensor) else s) * unit
    if vector.positions != as_positions("all"):
        logger.info("llama.cpp adds the vector at every token; the read rule %s is kept only "
                    "as metadata", vector.positions)  # fmt: skip
    cfg = vector.to_config()
    if vector.norms is not None:
        cfg["norms"] = [float(x) for x in vector.norms.float().cpu()]  # float32 -> exact in JSON
    cfg["gguf_alpha"] = alpha
    cfg["gguf_relative"] = relative if alpha is not None else None

    path = Path(path)
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(MODEL_HINT_KEY, str(hint))
        writer.add_uint32(LAYER_COUNT_KEY, len(vector.layers))
        writer.add_string(STEERLAB_KEY, json.dumps(cfg, sort_keys=True))
        for layer, row in zip(vector.layers, rows):
            writer.add_tensor(f"{TENSOR_PREFIX}{layer}", row.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None or not len(f.parts):
        return None
    if hasattr(f, "contents"):
        return f.contents()
    return bytes(f.parts[f.data[0]]).decode("utf-8")  # older gguf releases


def read_gguf(path: str | os.PathLike) -> ControlVectorFile:
    """Read and check a control-vector file as llama.cpp would accept it.

    Raises:
        ValueError: not a control vector, no model hint, a tensor not named ``direction.N``
            with ``N >= 1``, a non-F32 or non-1-D tensor, or tensors of different widths.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the gguf package raises ValueError / struct errors on bad files
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"{path}: general.architecture is {arch!r}, not {ARCH!r}: not a "
                         "control vector (a model file?)")  # fmt: skip
    hint = _field(reader, MODEL_HINT_KEY)
    if not hint:
        raise ValueError(f"{path}: missing {MODEL_HINT_KEY}")
    count = _field(reader, LAYER_COUNT_KEY)
    raw_cfg = _field(reader, STEERLAB_KEY)
    directions: dict[int, Tensor] = {}
    for t in reader.tensors:
        name = t.name
        idx = name[len(TENSOR_PREFIX) :] if name.startswith(TENSOR_PREFIX) else ""
        if not idx.isdigit():
            raise ValueError(f"{path}: tensor {name!r} is not direction.<layer> (llama.cpp "
                             "rejects the whole file)")  # fmt: skip
        layer = int(idx)
        if layer == 0:
            raise ValueError(
                f"{path}: direction.0 is invalid in llama.cpp (block 0 is never steered)"
            )
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path}: {name} is {t.tensor_type.name}; llama.cpp needs F32")
        data = np.asarray(t.data, dtype=np.float32)
        if data.ndim != 1 and not (data.ndim == 2 and data.shape[0] == 1):
            raise ValueError(f"{path}: {name} has shape {data.shape}; directions are 1-D")
        directions[layer] = torch.from_numpy(data.reshape(-1).copy())
    del reader
    if not directions:
        raise ValueError(f"{path}: no direction tensors")
    widths = {v.numel() for v in directions.values()}
    if len(widths) != 1:
        raise ValueError(f"{path}: direction tensors have different widths {sorted(widths)}")
    if count is not None and int(count) != len(directions):
        logger.warning("%s: %s = %s but the file has %d direction tensors", path,
                       LAYER_COUNT_KEY, count, len(directions))  # fmt: skip
    cfg = json.loads(raw_cfg) if raw_cfg else None
    ordered = dict(sorted(directions.items()))
    return ControlVectorFile(str(hint), None if count is None else int(count), ordered, cfg, sha)


def import_gguf(path: str | os.PathLike, handle: ModelHandle | None = None) -> SteeringVector:
    """Read a control-vector GGUF as a :class:`SteeringVector` at ``resid_post.N``.

    Args:
        path: the file.
        handle: if given, the file must fit this model: same model hint (HF
            ``config.model_type``), same width, layers inside the model, and, for steerlab
            exports, the same model id. Otherwise a clear ``ValueError``.
    """
    f = read_gguf(path)
    layers = tuple(f.directions)
    D = torch.stack([f.directions[n] for n in layers])
    if handle is not None:
        _check_fits(f, D.shape[1], layers, handle, path)
    cfg = f.config
    if cfg is not None:
        width = cfg.get("d_in", cfg.get("d_model"))  # d_model: exports from before d_in
        if list(cfg.get("layers", [])) != list(layers) or width != D.shape[1]:
            raise ValueError(f"{path}: the embedded steerlab config ({cfg.get('layers')}, "
                             f"d={width}) disagrees with the tensors")  # fmt: skip
        norms = (
            None if cfg.get("norms") is None else torch.tensor(cfg["norms"], dtype=torch.float32)
        )
        if cfg.get("gguf_alpha") is not None:
            cfg = {**cfg, "meta": {**cfg["meta"], "gguf_alpha": cfg["gguf_alpha"],
                                   "gguf_relative": cfg["gguf_relative"]}}  # fmt: skip
        return SteeringVector.from_config(cfg, D, norms)
    meta = {"model_type": f.model_hint, "source": str(path)}
    return SteeringVector(D, layers, "resid_post", None, "gguf", as_positions("all"),
                          "" if handle is None else handle.model_id, {},
                          f"gguf:{f.sha256[:16]}", meta)  # fmt: skip


def _check_fits(f: ControlVectorFile, width: int, layers: tuple[int, ...], handle: ModelHandle,
                path: Any) -> None:  # fmt: skip
    model_type = str(getattr(handle.model.config, "model_type", ""))
    if f.model_hint != model_type:
        raise ValueError(f"{path} is a control vector for model type {f.model_hint!r}, but "
                         f"{handle.model_id} is {model_type!r}")  # fmt: skip
    if width != handle.d_model:
        raise ValueError(f"{path} has width {width}, but {handle.model_id} has d_model "
                         f"{handle.d_model}: a control vector for another model")  # fmt: skip
    if layers[-1] >= handle.n_layers:
        raise ValueError(f"{path} steers layer {layers[-1]}, but {handle.model_id} has only "
                         f"{handle.n_layers} layers (0..{handle.n_layers - 1})")  # fmt: skip
    mid = (f.config or {}).get("model_id")
    if mid and mid != handle.model_id:
        raise ValueError(f"{path} was fitted on {mid!r}, not {handle.model_id!r}")
