"""A distributed capture: every rank writes its own part of one store; rank 0 commits it.

Under ``torchrun`` each of the ``W`` ranks captures a contiguous run of the corpus's sequences
(:func:`steerlab.distributed.split_range`, cut at batch boundaries, so every batch is exactly a
batch of the one-process capture, attention-sink marks included) into the one store directory:

    manifest.rank-00000.json   shard-r00000-00000.safetensors  shard-r00000-00001...   rank 0
    manifest.rank-00001.json   shard-r00001-00000.safetensors  ...                     rank 1

A rank flushes its shards and rewrites its own manifest atomically, exactly as the one-process
:class:`~steerlab.capture.store.StoreWriter` does, and touches no other rank's files; so a
killed run resumes *per rank*: rerun the same command (with the same number of ranks) and each
rank continues after its own last complete shard. When every rank has finished, a barrier, then
rank 0 alone writes ``manifest.json`` (:func:`commit`): the ranks' shards in rank order, which
is the corpus order, with their global ``seq_start``/``seq_end`` and a ``distributed`` record of
the ranks' sequence ranges. Readers see the store only then, and read the same rows in the same
order as from a one-process capture of the same chunks (tested); only the shard boundaries
differ.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from steerlab import __version__
from steerlab.capture.integrity import FORMAT, MANIFEST_NAME, check_shards_exist, read_manifest
from steerlab.capture.store import _SHARD_RE, StoreMismatchError, StoreWriter
from steerlab.capture.writer import new_manifest
from steerlab.io import TMP_SUFFIX, atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["RankStoreWriter", "commit", "rank_manifest_name", "rank_shard_name"]

_BASE_KEYS = ("model_id", "sites", "dtype", "fingerprints", "config")
_RANK_FILE_RE = re.compile(r"^(manifest\.rank-(\d{5,})\.json|shard-r(\d{5,})-\d{5,}\.safetensors)$")


def rank_manifest_name(rank: int) -> str:
    """The manifest of rank ``rank``'s part: ``manifest.rank-00001.json``."""
    return f"manifest.rank-{rank:05d}.json"


def rank_shard_name(rank: int, i: int) -> str:
    """Shard ``i`` of rank ``rank``: ``shard-r00001-00000.safetensors``."""
    return f"shard-r{rank:05d}-{i:05d}.safetensors"


def _plain(name: str) -> str:
    """The file a temporary sibling (``.<name>.<random>.tmp``, :mod:`steerlab.io`) stands for."""
    if name.startswith(".") and name.endswith(TMP_SUFFIX):
        return name[1:].rsplit(".", 2)[0]
    return name


def _file_rank(name: str) -> int | None:
    """The rank a rank-local file (or its temporary sibling) belongs to, else None."""
    m = _RANK_FILE_RE.match(_plain(name))
    if m is None:
        return None
    return int(m.group(2) or m.group(3))


def _is_store_file(name: str) -> bool:
    plain = _plain(name)
    return plain == MANIFEST_NAME or bool(_SHARD_RE.match(plain) or _RANK_FILE_RE.match(plain))


def _diffs(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    return [
        f"  {k}: stored {stored.get(k)!r}, requested {v!r}"
        for k, v in requested.items()
        if stored.get(k) != v
    ]


class RankStoreWriter(StoreWriter):
    """The :class:`~steerlab.capture.store.StoreWriter` of one rank's part of a store.

    Same arguments and behaviour as ``StoreWriter`` (buffering, atomic shards, resume after the
    last complete shard, settings checked on resume), on the rank's own files only. If the
    directory already holds a committed store with the same settings, the writer is complete
    from the start (there is nothing to add); a committed one-process capture still in
    progress is refused (resume it with one process, or overwrite).

    Args:
        path: the store directory shared by all ranks.
        rank: this rank.
        world_size: number of ranks; a part written with another world size is refused.
        sequences: the global sequence indices this rank captures (recorded for :func:`commit`).
        **kwargs: the other :class:`StoreWriter` arguments. ``overwrite=True`` removes this
            rank's files (rank 0 also the committed manifest, one-process shards and the parts
            of ranks beyond ``world_size``).
    """

    def __init__(
        self, path: str | os.PathLike, *, rank: int, world_size: int, sequences: range,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.part = {
            "rank": self.rank,
            "world_size": self.world_size,
            "seq_start": sequences.start,
            "seq_end": sequences.stop,
        }
        self.committed = False
        super().__init__(path, **kwargs)

    @property
    def _manifest_name(self) -> str:
        return rank_manifest_name(self.rank)

    def _shard_name(self, i: int) -> str:
        return rank_shard_name(self.rank, i)

    def _owns(self, name: str) -> bool:
        owner = _file_rank(name)
        if owner == self.rank:
            return True
        if self.rank != 0:
            return False
        # rank 0 also clears what no live rank owns: the committed store's own files and the
        # parts of ranks beyond this run's world
        plain = _plain(name)
        return (owner is not None and owner >= self.world_size) or (
            owner is None and (plain == MANIFEST_NAME or bool(_SHARD_RE.match(plain)))
        )

    def _remove_store_files(self, listed: set[str], manifest_too: bool = False) -> None:
        """Delete this rank's temporary files and its shards not in ``listed``."""
        for f in self.path.iterdir():
            if not f.is_file() or not self._owns(f.name):
                continue
            is_tmp = f.name.endswith(TMP_SUFFIX)
            manifest = f.name in (self._manifest_name, MANIFEST_NAME)
            stray = not is_tmp and not manifest and f.name not in listed
            if is_tmp or stray or (manifest_too and manifest):
                logger.info("removing %s", f)
                f.unlink()

    def _open_part(
        self, requested: dict[str, Any], overwrite: bool, sink_norm_ratio: float
    ) -> bool:
        path = self.path
        path.mkdir(parents=True, exist_ok=True)
        main = path / MANIFEST_NAME
        unknown = sorted(f.name for f in path.iterdir() if not _is_store_file(f.name))
        if unknown and not main.is_file():
            raise FileExistsError(
                f"{path} holds files that are not part of an activation store ({unknown[:3]}); "
                "refusing to touch unknown files. Choose an empty or new directory."
            )
        if overwrite:
            self._remove_store_files(listed=set(), manifest_too=True)
        elif main.is_file():
            self._open_committed(requested)
            return True
        if self.rank == 0 and not overwrite:
            beyond = sorted(
                f.name for f in path.iterdir()
                if (r := _file_rank(f.name)) is not None and r >= self.world_size
            )  # fmt: skip
            if beyond:
                raise StoreMismatchError(
                    f"{path} holds the parts of a capture with more ranks ({beyond[:2]}); rerun "
                    "with that many ranks to resume it, or overwrite."
                )
        own = path / self._manifest_name
        if own.is_file() and not overwrite:
            self.manifest = json.loads(own.read_text())
            diffs = _diffs(self.manifest, {**requested, "part": self.part})
            if self.manifest.get("format") != FORMAT or diffs:
                raise StoreMismatchError(
                    f"{own} belongs to a capture with other settings:\n" + "\n".join(diffs)
                    + "\nRerun with the same settings and number of ranks, or overwrite."
                )  # fmt: skip
            check_shards_exist(path, self.manifest)
            self._remove_store_files(listed={s["file"] for s in self.manifest["shards"]})
            logger.info("rank %d resuming %s: %d of its %d sequences done", self.rank, path,
                        self.manifest["n_sequences"], len(range(self.part["seq_start"],
                                                                self.part["seq_end"])))  # fmt: skip
        else:
            self.manifest = new_manifest(requested, sink_norm_ratio, part=self.part)
            self._write_manifest()
        return True

    def _open_committed(self, requested: dict[str, Any]) -> None:
        manifest = read_manifest(self.path)
        diffs = _diffs(manifest, requested)
        if diffs:
            raise StoreMismatchError(
                f"{self.path} holds a store written with other settings:\n" + "\n".join(diffs)
                + "\nChoose another directory or pass overwrite=True to replace it."
            )  # fmt: skip
        if not manifest["complete"]:
            raise StoreMismatchError(
                f"{self.path} holds a one-process capture in progress; resume it with one "
                "process, or pass overwrite=True to capture it again with several ranks."
            )
        self.manifest, self.committed = manifest, True


def commit(path: str | os.PathLike, world_size: int) -> dict[str, Any]:
    """Merge the ranks' parts into ``manifest.json`` (rank 0, after every rank has finished).

    Checks that every part exists, is complete, was written with the same settings, and that
    the parts' sequence ranges follow one another; then writes the manifest atomically (shards
    in rank order with global ``seq_start``/``seq_end``, the ranks' ranges under
    ``distributed``) and removes the rank manifests it supersedes.

    Returns:
        The committed manifest.

    Raises:
        RuntimeError: a part is missing or incomplete (some rank did not finish).
        StoreMismatchError: parts written with different settings or non-adjacent ranges.
    """
    path = Path(path)
    parts = []
    for r in range(world_size):
        f = path / rank_manifest_name(r)
        if not f.is_file():
            raise RuntimeError(f"{path}: rank {r} left no {f.name}; did every rank run?")
        part = json.loads(f.read_text())
        if not part.get("complete"):
            raise RuntimeError(f"{path}: rank {r}'s part is not complete; rerun to resume it")
        parts.append(part)
    base = {k: parts[0][k] for k in _BASE_KEYS}
    shards, ranks, seq = [], [], parts[0]["part"]["seq_start"]
    for r, part in enumerate(parts):
        info = part["part"]
        diffs = _diffs(part, base)
        if diffs or info["rank"] != r or info["world_size"] != world_size:
            raise StoreMismatchError(f"{path}: rank {r}'s part differs from rank 0's:\n"
                                     + "\n".join(diffs))  # fmt: skip
        if info["seq_start"] != seq or part["n_sequences"] != info["seq_end"] - info["seq_start"]:
            raise StoreMismatchError(
                f"{path}: rank {r} holds sequences [{info['seq_start']}, {info['seq_end']}) with "
                f"{part['n_sequences']} done; expected a complete run starting at {seq}"
            )
        seq = info["seq_end"]
        for s in part["shards"]:
            off = info["seq_start"]
            shards.append({**s, "seq_start": s["seq_start"] + off, "seq_end": s["seq_end"] + off,
                           "rank": r})  # fmt: skip
        ranks.append({**info, "n_tokens": part["n_tokens"], "n_shards": len(part["shards"])})
    manifest = {
        "format": FORMAT,
        **base,
        "n_tokens": sum(p["n_tokens"] for p in parts),
        "n_sequences": sum(p["n_sequences"] for p in parts),
        "complete": True,
        "shards": shards,
        "sinks": parts[0]["sinks"],
        "created": min(p["created"] for p in parts),
        "steerlab_version": __version__,
        "distributed": {"world_size": world_size, "ranks": ranks},
    }
    atomic_write_bytes(path / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
    for r in range(world_size):
        (path / rank_manifest_name(r)).unlink(missing_ok=True)
    logger.info("committed %s: %d shards from %d ranks, %d tokens", path, len(shards),
                world_size, manifest["n_tokens"])  # fmt: skip
    return manifest
