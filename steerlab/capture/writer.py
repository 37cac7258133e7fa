"""Writing an activation store: :class:`StoreWriter` (sharded, atomic, resumable, checksummed).

The format, the integrity checks and the reader are described in :mod:`steerlab.capture.store`;
this module holds the writing side and the helpers both sides share (shard names, sink rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import Tensor

from steerlab import __version__
from steerlab.capture.integrity import (
    DTYPES,
    FORMAT,
    MANIFEST_NAME,
    META_DTYPES,
    SINK,
    SINK_NORM_RATIO,
    ShardProblem,
    damage_error,
    find_damaged,
    read_manifest,
)
from steerlab.capture.integrity import (
    CorruptShardError as CorruptShardError,  # re-exported: raised by the readers here
)
from steerlab.checks import check_int, check_real
from steerlab.io import atomic_write_bytes, fsync_dir

logger = logging.getLogger(__name__)

# one-process shards (shard-00000) and the rank-local shards of a distributed capture
# (shard-r00001-00000, see steerlab.capture.ranks)
_SHARD_RE = re.compile(r"^shard-(r\d{5,}-)?\d{5,}\.safetensors$")
_RANK_MANIFEST_RE = re.compile(r"^manifest\.rank-\d{5,}\.json$")
_REWRITE_PREFIX = ".rewrite-"


class StoreMismatchError(ValueError):
    """An existing store was written with other settings than the ones requested."""


def shard_name(i: int) -> str:
    """File name of shard ``i``: ``shard-00000.safetensors``."""
    return f"shard-{i:05d}.safetensors"


def sink_rows(
    acts: dict[str, Tensor], positions: Tensor, norm_ratio: float = SINK_NORM_RATIO
) -> Tensor:
    """Attention-sink rows of one batch: ``[n]`` bool.

    A row is a sink if it is the first token of its window (``positions == 0``), or if at any
    site its norm exceeds ``norm_ratio`` times the median norm of the batch's later rows. The
    first token of every window, and a few later tokens (often " the" or a newline), carry the
    "massive activations" of an attention sink (Sun et al. 2024, Xiao et al. 2024): on the
    embedded model at ``resid_post.6`` their norm is 6-9x the median, and the 0.8% of rows at
    position 0 hold ~26% of the variance, enough to dominate PCA, SAE statistics and FVU. The
    median is robust to the sinks themselves, so the rule does not depend on how many there
    are; 4x separates the two populations there (98% of later rows stay below 2x).
    """
    pos = torch.as_tensor(positions).reshape(-1)
    sink = pos == 0
    later = ~sink
    if norm_ratio > 0 and bool(later.any()):
        for x in acts.values():
            norm = x.float().norm(dim=1)
            sink |= norm > norm_ratio * norm[later].median()
    return sink


def _json_norm(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists, keys become strings)."""
    return json.loads(json.dumps(obj))


def new_manifest(requested: dict, sink_norm_ratio: float, **extra: Any) -> dict:
    """The manifest of an empty store (or of one rank's part): the requested sites and config,
    no shards yet, not complete. ``extra`` keys (a rank's ``part``) follow the request."""
    return {
        "format": FORMAT,
        **requested,
        **extra,
        "n_tokens": 0,
        "n_sequences": 0,
        "complete": False,
        "shards": [],
        "sinks": {"norm_ratio": float(sink_norm_ratio)},
        "created": datetime.now(timezone.utc).isoformat(),
        "steerlab_version": __version__,
    }


class StoreWriter:
    """Append activations to a sharded store, resuming an interrupted one with the same settings.

    Args:
        path: store directory; created if missing. An existing store with equal ``model_id``,
            ``sites``, ``dtype``, ``fingerprints`` and ``config`` is resumed.
        model_id: the model the activations come from.
        sites: site name -> width ``d``, e.g. ``{"resid_post.6": 576}``.
        dtype: storage dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        shard_tokens: a shard is flushed once the buffer holds at least this many rows; shards end
            at batch boundaries, so they hold ``shard_tokens`` rows plus at most one batch.
        fingerprints: hashes identifying the tokenizer, corpus, ... (must match to resume).
        config: JSON-serialisable capture settings (must match to resume).
        overwrite: remove an existing store's manifest, shards and temp files first.
        sink_norm_ratio: the norm multiple of :func:`sink_rows` that marks a later row as an
            attention sink (recorded in the manifest's ``sinks``; 0: only position 0).

    On resume (and on a complete store) every listed shard is verified first (its sha256,
    unless this process verified it unchanged before): the damaged ones are in
    :attr:`damaged`, stay as they are until :meth:`rewrite_shard` replaces them, and keep
    :meth:`finish` from marking the store complete.

    Raises:
        StoreMismatchError: ``path`` holds a store written with other settings.
        FileExistsError: ``path`` is a non-empty directory without a manifest (never deleted).
        FormatError: the existing manifest is damaged (pass ``overwrite=True`` to replace it).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model_id: str,
        sites: dict[str, int],
        dtype: str = "float32",
        shard_tokens: int = 65536,
        fingerprints: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        overwrite: bool = False,
        sink_norm_ratio: float = SINK_NORM_RATIO,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported; choose one of {sorted(DTYPES)}")
        check_int(shard_tokens, "shard_tokens")
        check_real(sink_norm_ratio, "sink_norm_ratio", low=0)
        for name, d in sites.items():
            if name in META_DTYPES or name == SINK or not name:
                raise ValueError(f"invalid site name {name!r}")
            check_int(d, f"site {name!r}: width")
        self.path = Path(path)
        self.sites = {name: int(d) for name, d in sites.items()}
        self.dtype = dtype
        self.shard_tokens = int(shard_tokens)
        self._torch_dtype = DTYPES[dtype]
        self._buffer: list[dict[str, Tensor]] = []
        self.buffered_tokens = 0
        self._buffered_seqs = 0
        self._closed = False
        self.damaged: list[ShardProblem] = []
        """Listed shards found missing or damaged on resume, not rewritten yet."""
        requested = {
            "model_id": model_id,
            "sites": self.sites,
            "dtype": dtype,
            "fingerprints": _json_norm(dict(fingerprints or {})),
            "config": _json_norm(dict(config or {})),
        }
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path} exists and is not a directory")
        if self._open_part(requested, overwrite, sink_norm_ratio):
            return  # a rank of a distributed capture (steerlab.capture.ranks) opened its part
        has_manifest = (self.path / MANIFEST_NAME).is_file()
        if not has_manifest and self.path.is_dir() and any(self.path.iterdir()):
            raise FileExistsError(
                f"{self.path} is not empty and holds no {MANIFEST_NAME}; refusing to touch "
                "unknown files. Choose an empty or new directory."
            )
        if has_manifest and overwrite:  # only the store's own files; others stay
            self._remove_store_files(listed=set(), manifest_too=True)
        if has_manifest and not overwrite:
            self.manifest = read_manifest(self.path)
            diffs = [
                f"  {k}: stored {self.manifest.get(k)!r}, requested {v!r}"
                for k, v in requested.items()
                if self.manifest.get(k) != v
            ]
            if diffs:
                raise StoreMismatchError(
                    f"{self.path} holds a store written with other settings:\n"
                    + "\n".join(diffs)
                    + "\nChoose another directory or pass overwrite=True to replace it."
                )
            self._remove_store_files(listed={s["file"] for s in self.manifest["shards"]})
            _remove_stale_rewrites(self.path)
            self.damaged = find_damaged(self.path, self.manifest)
            if self.damaged:
                logger.warning("%s", damage_error(self.path, self.damaged))
            logger.info(
                "resuming %s: %d sequences, %d tokens done",
                self.path,
                self.manifest["n_sequences"],
                self.manifest["n_tokens"],
            )
        else:
            created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest = new_manifest(requested, sink_norm_ratio)
            try:
                self._write_manifest()
            except BaseException:
                if created:  # leave no empty store folder behind (a full disk, no permission)
                    shutil.rmtree(self.path, ignore_errors=True)
                raise

    def _open_part(
        self, requested: dict[str, Any], overwrite: bool, sink_norm_ratio: float
    ) -> bool:
        """Open the part of a store one rank writes (see :mod:`steerlab.capture.ranks`); the
        one-process writer owns the whole store, so here: nothing to do."""
        del requested, overwrite, sink_norm_ratio
        return False

    @property
    def _manifest_name(self) -> str:
        return MANIFEST_NAME

    def _shard_name(self, i: int) -> str:
        return shard_name(i)

    def _remove_store_files(self, listed: set[str], manifest_too: bool = False) -> None:
        """Delete temp files and shard files not in ``listed`` (incomplete writes)."""
        for f in self.path.iterdir():
            stray_shard = _SHARD_RE.match(f.name) and f.name not in listed
            manifest = f.name == MANIFEST_NAME or _RANK_MANIFEST_RE.match(f.name)
            ours = f.name.endswith(".tmp") or stray_shard or (manifest_too and manifest)
            if f.is_file() and ours:
                logger.info("removing %s", f)
                f.unlink()

    def _write_manifest(self) -> None:
        data = json.dumps(self.manifest, indent=2).encode()
        atomic_write_bytes(self.path / self._manifest_name, data)

    @property
    def n_sequences(self) -> int:
        """Sequences accepted so far (on disk plus buffered); on resume, the ones to skip."""
        return self.manifest["n_sequences"] + self._buffered_seqs

    @property
    def n_tokens(self) -> int:
        """Token rows accepted so far (on disk plus buffered)."""
        return self.manifest["n_tokens"] + self.buffered_tokens

    @property
    def complete(self) -> bool:
        """Whether the store was marked complete by :meth:`finish`."""
        return bool(self.manifest["complete"])

    def add(
        self,
        acts: dict[str, Tensor],
        token_ids: Tensor,
        doc_ids: Tensor,
        positions: Tensor,
        n_sequences: int,
    ) -> None:
        """Append the rows of a batch that completes ``n_sequences`` more sequences.

        Args:
            acts: site name -> ``[n, d_site]`` activations; exactly the declared sites.
            token_ids: ``[n]`` token id of each row.
            doc_ids: ``[n]`` index of the sequence each row came from.
            positions: ``[n]`` position of each row in its sequence.
            n_sequences: sequences this batch completes (call ``add`` only at sequence ends).

        Raises:
            ValueError: wrong site set, widths or row counts, or NaN/inf values (also values
                that overflow the storage dtype). Nothing is buffered when this is raised.
        """
        if self._closed or self.complete:
            raise RuntimeError(f"writer for {self.path} is closed or the store is complete")
        if set(acts) != set(self.sites):
            raise ValueError(f"sites {sorted(acts)} differ from the declared {sorted(self.sites)}")
        meta = {"token_ids": token_ids, "doc_ids": doc_ids, "positions": positions}
        n = int(torch.as_tensor(token_ids).reshape(-1).shape[0])
        if n_sequences < 0:
            raise ValueError(f"n_sequences must be >= 0, got {n_sequences}")
        rows: dict[str, Tensor] = {}
        for name, x in meta.items():
            t = torch.as_tensor(x).detach()
            if t.dim() != 1 or t.shape[0] != n or t.is_floating_point():
                raise ValueError(
                    f"{name}: expected an integer tensor of shape [{n}], got "
                    f"{t.dtype} {tuple(t.shape)}"
                )
            rows[name] = t.to("cpu", META_DTYPES[name], copy=True)
        for name, x in acts.items():
            if x.dim() != 2 or x.shape[0] != n or x.shape[1] != self.sites[name]:
                raise ValueError(
                    f"site {name!r}: expected shape [{n}, {self.sites[name]}], got {tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise ValueError(f"site {name!r}: expected a float tensor, got {x.dtype}")
            y = x.detach().to(self._torch_dtype)  # cast on x's device: less to transfer
            bad = int((~torch.isfinite(y)).any(dim=1).sum())
            if bad:
                n_in = int((~torch.isfinite(x)).any(dim=1).sum())
                why = "contain NaN or inf" if n_in else f"overflow to inf in {self.dtype}"
                raise ValueError(f"site {name!r}: {bad} of {n} rows {why}")
            y = y.cpu()
            # Own the rows: a view of the caller's tensor would keep all of it alive (breaking
            # the memory bound) and would see the caller's later in-place edits.
            same = y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
            rows[name] = y.clone() if same else y
        ratio = self.manifest.get("sinks", {}).get("norm_ratio", SINK_NORM_RATIO)
        rows[SINK] = sink_rows({k: rows[k] for k in self.sites}, rows["positions"], ratio)
        self._buffer.append(rows)
        self.buffered_tokens += n
        self._buffered_seqs += int(n_sequences)
        if self.buffered_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Write the buffer as one shard (if it holds rows) and update the manifest.

        All or nothing: if a write fails (disk full, permission denied, an interrupt), the
        store on disk is left as it was before the flush (a shard written before the manifest
        update failed is removed again) and the writer is closed; its buffered rows are lost,
        and a rerun of the capture resumes after the last listed shard.
        """
        before = json.loads(json.dumps(self.manifest))
        try:
            self._write_buffer()
        except BaseException:
            listed = {s["file"] for s in before["shards"]}
            for entry in self.manifest["shards"]:
                if entry["file"] not in listed:
                    (self.path / entry["file"]).unlink(missing_ok=True)
            self.manifest = before
            self._buffer.clear()
            self.buffered_tokens = self._buffered_seqs = 0
            self._closed = True
            raise

    def _write_buffer(self) -> None:
        if not self._buffer and not self._buffered_seqs:
            return
        m = self.manifest
        seq_start = m["n_sequences"]
        if self.buffered_tokens:
            keys = [*self.sites, *META_DTYPES, SINK]
            tensors = {k: torch.cat([b[k] for b in self._buffer]).contiguous() for k in keys}
            self._buffer.clear()  # drop the pieces before serialising: peak = 2 x one shard
            data = st_save(tensors, metadata={"format": "pt"})
            del tensors
            name = self._shard_name(len(m["shards"]))
            atomic_write_bytes(self.path / name, data)  # via .<name>.*.tmp, removed on resume
            m["shards"].append(
                {
                    "file": name,
                    "n_tokens": self.buffered_tokens,
                    "seq_start": seq_start,
                    "seq_end": seq_start + self._buffered_seqs,
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
            logger.debug("wrote %s (%d rows)", name, self.buffered_tokens)
        m["n_tokens"] += self.buffered_tokens
        m["n_sequences"] += self._buffered_seqs
        self._buffer.clear()
        self.buffered_tokens = self._buffered_seqs = 0
        self._write_manifest()

    def close(self, complete: bool = False) -> None:
        """Flush the buffer; with ``complete=True`` also mark the store complete."""
        if self._closed:
            return
        self.flush()
        if complete and not self.complete:
            if self.damaged:
                raise damage_error(self.path, self.damaged)
            self.manifest["complete"] = True
            try:
                self._write_manifest()
            except BaseException:
                self.manifest["complete"] = False  # the file on disk still says so
                raise
        self._closed = True

    def finish(self) -> None:
        """Flush and mark the store complete: the capture consumed its whole corpus.

        Raises:
            CorruptShardError: shards found damaged on resume were not rewritten.
        """
        self.close(complete=True)

    def shard_sequences(self, index: int) -> range:
        """The sequences (global indices) whose rows shard ``index`` holds."""
        entry = self.manifest["shards"][index]
        return range(entry["seq_start"], entry["seq_end"])

    @contextmanager
    def rewrite_shard(self, index: int) -> Iterator[StoreWriter]:
        """Rewrite listed shard ``index`` (a damaged one) from its sequences, captured again.

        Yields a writer with this store's settings in a temporary folder inside the store;
        ``add`` to it the rows of exactly the sequences :meth:`shard_sequences` names, in
        order. On leaving the block the new shard must hold the listed number of rows and
        sequences; it then replaces the old file (``os.replace``) and, if its sha256 differs
        (another thread count may round differently), the manifest entry's sha256 is updated.
        No other file is touched. On an exception (disk full, a wrong row count) the
        temporary folder is removed and the store is left as it was.

        Raises:
            IndexError: no shard ``index``.
            ValueError: the rows added do not match the listed shard's row or sequence count.
        """
        if not 0 <= index < len(self.manifest["shards"]):
            raise IndexError(f"{self.path} lists {len(self.manifest['shards'])} shards, no {index}")
        entry = self.manifest["shards"][index]
        m = self.manifest
        tmp = self.path / f"{_REWRITE_PREFIX}{entry['file']}.{secrets.token_hex(4)}.tmp"
        try:
            sub = StoreWriter(
                tmp, model_id=m["model_id"], sites=self.sites, dtype=self.dtype,
                shard_tokens=max(1, entry["n_tokens"]) + 1, fingerprints=m["fingerprints"],
                config=m["config"],
                sink_norm_ratio=m.get("sinks", {}).get("norm_ratio", SINK_NORM_RATIO),
            )  # fmt: skip
            yield sub
            sub.close()
            got = (sub.manifest["n_tokens"], sub.manifest["n_sequences"])
            want = (entry["n_tokens"], entry["seq_end"] - entry["seq_start"])
            if got != want:
                raise ValueError(f"rewriting {entry['file']} of {self.path}: got {got[0]} rows "
                                 f"of {got[1]} sequences, the manifest lists {want[0]} rows of "
                                 f"{want[1]} (sequences {entry['seq_start']}..{entry['seq_end']})")  # fmt: skip
            new = sub.manifest["shards"][0] if sub.manifest["shards"] else None
            if new is None:  # a shard of zero rows: write the same empty layout
                raise ValueError(f"{entry['file']}: a shard without rows cannot be rewritten")
            os.replace(tmp / new["file"], self.path / entry["file"])
            fsync_dir(self.path)
            if new["sha256"] != entry["sha256"]:
                logger.info("%s: rewritten with sha256 %s (was %s)", entry["file"],
                            new["sha256"], entry["sha256"])  # fmt: skip
                old_sha = entry["sha256"]
                entry["sha256"] = new["sha256"]
                try:
                    self._write_manifest()
                except BaseException:
                    entry["sha256"] = old_sha
                    raise
            self.damaged = [d for d in self.damaged if d.index != index]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        # The buffer always ends at a sequence boundary (``add`` is all-or-nothing), so it is
        # safe to keep on an exception too; only ``finish`` marks the store complete.
        if exc_type is not None:
            logger.warning(
                "exception while writing %s; flushing %d buffered rows",
                self.path,
                self.buffered_tokens,
            )
        self.close()


def _remove_stale_rewrites(path: Path) -> None:
    """Delete the temporary folders of :meth:`StoreWriter.rewrite_shard` runs that crashed."""
    for d in path.glob(f"{_REWRITE_PREFIX}*.tmp"):
        if d.is_dir():
            logger.info("removing %s", d)
            shutil.rmtree(d, ignore_errors=True)
