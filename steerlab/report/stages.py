"""The report's stages on disk: each result saved with the config that produced it, reused when
the same config asks again.

A stage's *key* is the SHA-256 of its name, its config (as JSON) and the keys of the stages it
reads, so a changed config recomputes that stage and, through the keys, every stage downstream
of it. A finished stage is a directory ``DIR/stages/<name>/`` holding

- ``stage.json`` — name, key, config, the keys of its inputs, seconds taken, steerlab version;
- ``result.json`` — the stage's numbers and texts (plain JSON);
- ``tensors.safetensors`` — its tensors (directions, coordinates, masks).

The directory is written atomically (:func:`steerlab.io.atomic_dir`), so an interrupted run
leaves either the previous result or none, never half of one. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from steerlab import __version__
from steerlab.io import atomic_dir

logger = logging.getLogger(__name__)

__all__ = [
    "STAGE_FILE",
    "Progress",
    "StageCache",
    "StageRecord",
    "StageResult",
    "config_dict",
    "stage_key",
]

STAGE_FILE = "stage.json"
RESULT_FILE = "result.json"
TENSORS_FILE = "tensors.safetensors"
FORMAT = "steerlab.report_stage/1"

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: a stage reports what it is doing and how far it got."""


class StageResult(NamedTuple):
    """What a stage computed: JSON data and tensors (both saved, both reloaded)."""

    data: dict[str, Any]
    """Numbers, texts and small tables (plain JSON types)."""
    tensors: dict[str, Tensor]
    """Named tensors (saved as safetensors)."""


class StageRecord(NamedTuple):
    """How a stage went in this run."""

    name: str
    key: str
    seconds: float
    """Wall time the result took to compute (its original run, when reused)."""
    reused: bool
    """True when the result was loaded from an earlier run with the same config."""
    config: dict[str, Any]
    cpu_seconds: float = float("nan")
    """CPU time of the computation, all threads of the process (the machine's load does not
    change it, so it tells what the stage costs where the wall time says what it took)."""


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass (or mapping) as plain JSON types (tuples become lists)."""
    if is_dataclass(config) and not isinstance(config, type):
        d = asdict(config)
    else:  # a mapping (dict() refuses anything else, a dataclass class among them)
        d = dict(cast("Mapping[str, Any]", config))
    return json.loads(json.dumps(d, default=str))


def stage_key(name: str, config: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """SHA-256 of the stage name, its config and its inputs' keys (sorted JSON)."""
    blob = json.dumps({"stage": name, "config": config, "inputs": dict(sorted(inputs.items()))},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


class StageCache:
    """Finished stages under ``root`` (``DIR/stages``).

    Args:
        root: the folder holding one directory per stage.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """The directory of stage ``name``."""
        return self.root / name

    def meta(self, name: str) -> dict[str, Any] | None:
        """The ``stage.json`` of a finished stage, or None (missing or unreadable)."""
        f = self.path(name) / STAGE_FILE
        try:
            meta = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None

    def load(self, name: str, key: str) -> tuple[StageResult, dict[str, Any]] | None:
        """The saved result of ``name`` if it was computed under ``key``, else None."""
        meta = self.meta(name)
        if meta is None or meta.get("key") != key:
            return None
        d = self.path(name)
        try:
            data = json.loads((d / RESULT_FILE).read_text())
            tensors = load_file(d / TENSORS_FILE) if (d / TENSORS_FILE).is_file() else {}
        except (OSError, json.JSONDecodeError, Exception) as e:  # a damaged stage recomputes
            logger.warning("stage %s: cannot read its saved result (%s); recomputing", name, e)
            return None
        return StageResult(data, tensors), meta

    def save(
        self,
        name: str,
        key: str,
        config: Mapping[str, Any],
        inputs: Mapping[str, str],
        result: StageResult,
        seconds: float,
        cpu_seconds: float = float("nan"),
    ) -> dict[str, Any]:
        """Write a finished stage atomically; returns its ``stage.json`` content."""
        meta = {"format": FORMAT, "stage": name, "key": key, "config": dict(config),
                "inputs": dict(inputs), "seconds": seconds, "cpu_seconds": cpu_seconds,
                "steerlab_version": __version__}  # fmt: skip
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.path(name)) as tmp:
            (tmp / RESULT_FILE).write_text(json.dumps(result.data, indent=1, allow_nan=True))
            if result.tensors:
                # safetensors wants contiguous tensors it owns (no views into larger storage)
                save_file({k: v.detach().cpu().contiguous().clone()
                           for k, v in result.tensors.items()}, tmp / TENSORS_FILE)  # fmt: skip
            (tmp / STAGE_FILE).write_text(json.dumps(meta, indent=1))
        return meta


def as_bool(t: Tensor) -> Tensor:
    """A saved mask back as ``torch.bool`` (it is stored as uint8 for portability)."""
    return t.to(torch.bool)
