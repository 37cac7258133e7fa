"""Artifacts on disk: a directory with ``cfg.json`` and ``<kind>.safetensors``.

Every saved object in steerlab (subspaces, erasers, steering vectors, SAEs, ...) uses this
layout. Nothing is ever pickled: tensors go to safetensors, everything else to JSON. A small
registry maps the ``kind`` string in ``cfg.json`` to the class that loads it, so
:func:`load` can open any artifact directory.

Writes are atomic: files are written into a temporary sibling directory which is then renamed
into place, so a crash never leaves a half-written artifact under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CFG_NAME = "cfg.json"

_REGISTRY: dict[str, type] = {}

#: Modules whose import registers artifact kinds (imported by :func:`load` on demand).
_KIND_MODULES = (
    "steerlab.subspace",
    "steerlab.saes.formats",
    "steerlab.erasure.leace",
    "steerlab.erasure.rlace",
    "steerlab.erasure.inlp",
    "steerlab.interventions.kinds",
    "steerlab.steering.vectors",
    "steerlab.erasure.scrub",
    "steerlab.saes.splice",
)


def register(kind: str) -> Callable[[type], type]:
    """Class decorator: register ``cls`` as the loader for artifacts of ``kind``.

    The class must provide ``classmethod load(path)``.
    """

    def deco(cls: type) -> type:
        _REGISTRY[kind] = cls
        cls.KIND = kind  # type: ignore[attr-defined]
        return cls

    return deco


def check_json(value: Any, what: str = "meta") -> None:
    """Raise a ValueError naming ``what`` unless ``value`` is JSON-serialisable (it goes into
    ``cfg.json``, never into a pickle)."""
    try:
        json.dumps(value)
    except TypeError as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from None


def tensors_name(kind: str) -> str:
    """File name of the tensors of an artifact of ``kind``."""
    return f"{kind}.safetensors"


def save_artifact(
    path: str | os.PathLike,
    kind: str,
    cfg: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    overwrite: bool = True,
) -> Path:
    """Write ``cfg.json`` + ``<kind>.safetensors`` into directory ``path`` atomically.

    Args:
        path: target directory (created; its parent must be writable).
        kind: artifact kind, recorded in ``cfg.json``.
        cfg: JSON-serialisable configuration (``kind`` and ``steerlab_version`` are added).
        tensors: named tensors; they are made contiguous and moved to CPU.
        overwrite: if False and ``path`` already holds files, raise instead of replacing them.
    """
    from steerlab import __version__

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} is not empty; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    full_cfg = {"kind": kind, "steerlab_version": __version__, **cfg}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / CFG_NAME).write_text(json.dumps(full_cfg, indent=2, sort_keys=True, default=str))
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            str(tmp / tensors_name(kind)),
        )
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``cfg.json`` of an artifact directory, with a clear error if it is missing."""
    path = Path(path)
    f = path / CFG_NAME
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a steerlab artifact: no {CFG_NAME} inside")
    return json.loads(f.read_text())


def load_artifact(
    path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an artifact directory; check its kind if ``kind`` is given.

    Returns:
        ``(cfg, tensors)``.
    """
    path = Path(path)
    cfg = read_cfg(path)
    if kind is not None and cfg.get("kind") != kind:
        raise ValueError(f"{path} holds a {cfg.get('kind')!r} artifact, expected {kind!r}")
    tfile = path / tensors_name(cfg["kind"])
    if not tfile.is_file():
        raise FileNotFoundError(f"{path}: missing {tfile.name}")
    return cfg, load_file(str(tfile), device=str(device))


def load(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Load any registered artifact by the ``kind`` in its ``cfg.json``."""
    cfg = read_cfg(path)
    kind = cfg.get("kind")
    # import the modules that register kinds so the registry is complete
    import importlib

    for module in _KIND_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # a module of a later feature may not exist in this version
            continue

    if kind not in _REGISTRY:
        raise ValueError(f"unknown artifact kind {kind!r} in {path}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[kind].load(path, **kwargs)
