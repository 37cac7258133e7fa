"""Integrity of an activation store: its format, the manifest's schema, shard checksums.

What :mod:`steerlab.capture.store` verifies before it serves a row or resumes a capture
(docs/store_integrity.md):

- :func:`read_manifest` parses ``manifest.json`` and checks it against the schema
  (:func:`check_manifest`): required keys, types, ranges, shard entries, counts that add up;
- :func:`check_shard_header` checks a shard's safetensors header against the manifest: every
  site and metadata column present with the manifest's dtype and shape ``[n_tokens, d]``;
- :func:`shard_problem` / :func:`find_damaged` hash shards and compare with the manifest's
  sha256, caching in this process which files were found intact (keyed by device, inode,
  size, mtime and ctime), so each shard is hashed once per process while it stays unchanged.

Every failure is a :class:`~steerlab.errors.FormatError` naming the file and the field; a
damaged shard is a :class:`CorruptShardError` (one too) naming every damaged shard.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from steerlab.errors import FormatError, MissingFileError
from steerlab.validation import (
    check_fields,
    check_tensor,
    read_json,
    read_safetensors_header,
    require,
)

__all__ = [
    "DTYPES",
    "FORMAT",
    "MANIFEST_NAME",
    "META_DTYPES",
    "RACY_NS",
    "SINK",
    "SINK_NORM_RATIO",
    "CorruptShardError",
    "ShardProblem",
    "check_manifest",
    "check_shard_header",
    "damage_error",
    "find_damaged",
    "read_manifest",
    "shard_problem",
]

FORMAT = "steerlab.store/1"
MANIFEST_NAME = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
META_DTYPES = {"token_ids": torch.int32, "doc_ids": torch.int64, "positions": torch.int32}
SINK = "sink"
"""Bool column marking attention-sink rows (:func:`~steerlab.capture.store.sink_rows`), computed when a batch is added."""
SINK_NORM_RATIO = 4.0
"""Default of :func:`~steerlab.capture.store.sink_rows`: a later row is a sink above this multiple of the median norm."""


class CorruptShardError(FormatError):
    """Shards listed in the manifest are missing or their checksums differ.

    Attributes:
        shards: the file names of the damaged shards.
    """

    def __init__(self, path: str | os.PathLike, message: str, shards: Sequence[str]) -> None:
        super().__init__(path, message, field="shards")
        self.shards = list(shards)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}  # fmt: skip
_MANIFEST_FIELDS = {
    "model_id": (str,), "sites": (dict,), "dtype": (str,), "fingerprints": (dict,),
    "config": (dict,), "n_tokens": (int,), "n_sequences": (int,), "complete": (bool,),
    "shards": (list,),
}  # fmt: skip
_SHARD_FIELDS = {"file": (str,), "n_tokens": (int,), "seq_start": (int,), "seq_end": (int,),
                 "sha256": (str,)}  # fmt: skip
RERUN_HINT = (
    "Rerun the capture with the same arguments (capture_to_store, or `steerlab capture`): it "
    "rewrites exactly the damaged shards."
)


def check_manifest(manifest: Any, file: str | os.PathLike) -> None:
    """Check a parsed ``manifest.json`` against the store's schema before any use.

    Required keys and their types, the format, site names and widths (>= 1), the dtype,
    counts >= 0, and per shard: a plain ``.safetensors`` file name (listed once), a row count
    >= 0, a sequence range, a sha256 of 64 hex digits; the shards' rows add up to
    ``n_tokens``. Keys it does not know are allowed.

    Raises:
        FormatError: naming ``file``, the field and what was expected.
    """
    check_fields(manifest, {"format": (str,)}, file)
    require(manifest["format"] == FORMAT, file, "format", repr(FORMAT), manifest["format"])
    check_fields(manifest, _MANIFEST_FIELDS, file)
    for name, d in manifest["sites"].items():
        ok = bool(name) and name not in META_DTYPES and name != SINK
        require(ok, file, "sites", "site names (not empty, not a metadata column)", name)
        require(isinstance(d, int) and not isinstance(d, bool) and d >= 1, file,
                f"sites.{name}", "an integer width >= 1", d)  # fmt: skip
    require(manifest["dtype"] in DTYPES, file, "dtype", f"one of {sorted(DTYPES)}",
            manifest["dtype"])  # fmt: skip
    for key in ("n_tokens", "n_sequences"):
        require(manifest[key] >= 0, file, key, "an integer >= 0", manifest[key])
    sinks = manifest.get("sinks", {})
    check_fields(sinks, {}, file, prefix="sinks.")
    ratio = sinks.get("norm_ratio", SINK_NORM_RATIO)
    ok = isinstance(ratio, int | float) and not isinstance(ratio, bool) and math.isfinite(ratio)
    require(ok and ratio >= 0, file, "sinks.norm_ratio", "a number >= 0", ratio)
    names: set[str] = set()
    for i, entry in enumerate(manifest["shards"]):
        pre = f"shards.{i}."
        check_fields(entry, _SHARD_FIELDS, file, prefix=pre)
        name = entry["file"]
        ok = Path(name).name == name and name.endswith(".safetensors") and not name.startswith(".")
        require(ok and name not in names, file, pre + "file",
                "a shard file name in the store's folder, listed once", name)  # fmt: skip
        names.add(name)
        require(entry["n_tokens"] >= 0, file, pre + "n_tokens", "an integer >= 0",
                entry["n_tokens"])  # fmt: skip
        ok = 0 <= entry["seq_start"] <= entry["seq_end"]
        require(ok, file, pre + "seq_end", f">= seq_start = {entry['seq_start']} >= 0",
                entry["seq_end"])  # fmt: skip
        require(bool(_SHA256_RE.match(entry["sha256"])), file, pre + "sha256",
                "64 lowercase hex digits", entry["sha256"])  # fmt: skip
    total = sum(entry["n_tokens"] for entry in manifest["shards"])
    require(total == manifest["n_tokens"], file, "n_tokens",
            f"the sum of the shards' n_tokens ({total})", manifest["n_tokens"])  # fmt: skip


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse ``path/manifest.json`` and check it (:func:`check_manifest`).

    Raises:
        MissingFileError: no manifest (also a ``FileNotFoundError``).
        FormatError: a damaged manifest, naming the field.
    """
    f = path / MANIFEST_NAME
    if not f.is_file():
        raise MissingFileError(path, f"not an activation store: no {MANIFEST_NAME} inside")
    manifest = read_json(f, "an activation store manifest")
    check_manifest(manifest, f)
    return manifest


def check_shards_exist(path: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`CorruptShardError` naming every listed shard whose file is missing."""
    missing = [s["file"] for s in manifest["shards"] if not (path / s["file"]).is_file()]
    if missing:
        raise CorruptShardError(
            path,
            f"shard(s) {', '.join(missing)} listed in the manifest but missing. " + RERUN_HINT,
            missing,
        )


# --- verification --------------------------------------------------------------------------

_VERIFIED: dict[tuple[int, int], tuple[int, int, int, str]] = {}
"""(st_dev, st_ino) of a shard file -> (size, mtime_ns, ctime_ns, sha256) when this process
last hashed it and found the sha256 the manifest lists: the per-process cache of verified
shards. A file whose size or timestamps changed since is hashed again."""

RACY_NS = 2_000_000_000
"""A shard modified less than this long (2 s) before it was hashed is not cached: a later
change within the file system's timestamp granularity (up to 2 s on FAT, a clock tick on ext4)
could leave size and timestamps as they were (git's "racily clean" entries)."""


class ShardProblem(NamedTuple):
    """A damaged shard of a store."""

    index: int
    """Its position in the manifest's ``shards``."""
    file: str
    """Its file name."""
    problem: str
    """What is wrong: ``"missing"`` or the two checksums."""


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def shard_problem(path: Path, entry: dict[str, Any], *, recheck: bool = False) -> str | None:
    """What is wrong with one listed shard (None: intact): hashes the file unless this process
    verified it before and it is unchanged since (``recheck``: hash it anyway)."""
    f = path / entry["file"]
    try:
        st = f.stat()
        cached = _VERIFIED.get((st.st_dev, st.st_ino))
        if not recheck and cached == (*_stat_key(st), entry["sha256"]):
            return None
        started = time.time_ns()
        digest = sha256_file(f)
        after = f.stat()
    except FileNotFoundError:
        return "missing"
    if digest != entry["sha256"]:
        return f"sha256 {digest}, the manifest lists {entry['sha256']}"
    if (
        _stat_key(after) == _stat_key(st)
        and max(st.st_mtime_ns, st.st_ctime_ns) < started - RACY_NS
    ):
        _VERIFIED[(st.st_dev, st.st_ino)] = (*_stat_key(st), entry["sha256"])
    return None


def find_damaged(
    path: str | os.PathLike, manifest: dict[str, Any], *, recheck: bool = False
) -> list[ShardProblem]:
    """Every listed shard of the store at ``path`` that is missing or whose sha256 differs
    from the manifest's (hashing each one this process has not verified unchanged before;
    ``recheck``: every one)."""
    path = Path(path)
    out = []
    for i, entry in enumerate(manifest["shards"]):
        problem = shard_problem(path, entry, recheck=recheck)
        if problem is not None:
            out.append(ShardProblem(i, entry["file"], problem))
    return out


def damage_error(path: Path, damaged: Sequence[ShardProblem]) -> CorruptShardError:
    """The error that names every damaged shard and says how to rewrite them."""
    listing = "; ".join(f"{d.file}: {d.problem}" for d in damaged)
    return CorruptShardError(
        path,
        f"{len(damaged)} damaged shard(s): {listing}. {RERUN_HINT}",
        [d.file for d in damaged],
    )


def check_shard_header(
    file: Path, entry: Mapping[str, Any], sites: Mapping[str, int], dtype: str
) -> None:
    """Check a shard's safetensors header against its manifest entry: every site
    (``[n_tokens, d]`` in the store dtype) and metadata column (``[n_tokens]``) is present with
    the manifest's dtype and shape; a ``sink`` column, if present (stores written before sink
    marking lack it), is bool ``[n_tokens]``; no other two-dimensional tensor is present (a
    site column that the manifest does not list means the manifest lost it). Other
    one-dimensional columns are allowed (a newer writer may add metadata).

    The sha256 proves a shard holds the bytes the writer wrote; this proves the manifest
    describes them (a hand-edited manifest could list the right hash with another width).

    Raises:
        FormatError: naming the shard file and the tensor.
    """
    infos = read_safetensors_header(file)
    n = entry["n_tokens"]
    want: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
        name: (DTYPES[dtype], (n, d)) for name, d in sites.items()
    }
    want.update({name: (dt, (n,)) for name, dt in META_DTYPES.items()})
    if SINK in infos:
        want[SINK] = (torch.bool, (n,))
    for name, (dt, shape) in want.items():
        if name not in infos:
            raise FormatError(file, f"missing tensor {name!r}, which the manifest lists "
                                    f"(has {sorted(infos)})", field=name)  # fmt: skip
        require(infos[name].dtype == _ST_DTYPES[dt], file, name, f"of dtype {_ST_DTYPES[dt]}",
                infos[name].dtype, label="tensor")  # fmt: skip
        check_tensor(infos[name], file, name, shape)
    unlisted = sorted(name for name, info in infos.items()
                      if name not in want and len(info.shape) == 2)  # fmt: skip
    if unlisted:
        raise FormatError(file, f"holds site column(s) {unlisted} that the manifest's 'sites' "
                                f"does not list (it lists {sorted(sites)})", field="sites")  # fmt: skip
