"""A sharded on-disk activation store: ``manifest.json`` + ``shard-XXXXX.safetensors``.

Each shard holds, for ``N`` token rows, one float tensor per site (``[N, d_site]``, keyed by the
site name, e.g. ``"resid_post.6"``) plus ``token_ids`` (int32 ``[N]``), ``doc_ids`` (int64
``[N]``, the sequence each row came from), ``positions`` (int32 ``[N]``) and ``sink`` (bool
``[N]``, attention-sink rows, see :func:`sink_rows`). The manifest lists the shards with their
sha256; a shard exists for readers only once the manifest lists it.

Integrity (docs/store_integrity.md): the manifest and every shard's safetensors header are
checked against a schema before use, and a shard's sha256 is checked before its rows are first
served in a process (:meth:`ActivationStore._read_shard`) and on every resume or rerun of a
capture (:class:`StoreWriter`); a damaged shard raises :class:`CorruptShardError` naming it, and
:meth:`StoreWriter.rewrite_shard` replaces exactly that shard.

:class:`StoreWriter` appends batches that end at sequence boundaries and flushes a shard
atomically (temp file, fsync, ``os.replace``, then an atomic manifest rewrite) once its buffer
holds ``shard_tokens`` rows, so a crashed capture resumes exactly after the last listed shard.
:class:`ActivationStore` reads rows by global index and streams shuffled training batches
whose order depends only on ``(seed, epoch)``. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

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
    check_shard_header,
    check_shards_exist,
    damage_error,
    find_damaged,
    read_manifest,
    shard_problem,
)
from steerlab.capture.integrity import (
    CorruptShardError as CorruptShardError,  # re-exported: raised by the readers here
)
from steerlab.checks import check_int, check_real
from steerlab.io import atomic_write_bytes, fsync_dir
from steerlab.validation import open_tensors

logger = logging.getLogger(__name__)

# one-process shards (shard-00000) and the rank-local shards of a distributed capture
# (shard-r00001-00000, see steerlab.capture.ranks)
_SHARD_RE = re.compile(r"^shard-(r\d{5,}-)?\d{5,}\.safetensors$")
_RANK_MANIFEST_RE = re.compile(r"^manifest\.rank-\d{5,}\.json$")
_REWRITE_PREFIX = ".rewrite-"
Index = int | slice | Tensor | Sequence[int]


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
            self.manifest = {
                "format": FORMAT,
                **requested,
                "n_tokens": 0,
                "n_sequences": 0,
                "complete": False,
                "shards": [],
                "sinks": {"norm_ratio": float(sink_norm_ratio)},
                "created": datetime.now(timezone.utc).isoformat(),
                "steerlab_version": __version__,
            }
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


def _mix_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed, well mixed from ``(seed, epoch)``."""
    digest = hashlib.sha256(f"steerlab.store:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ActivationStore:
    """Read a sharded activation store by global row index, or as a stream of batches.

    The manifest is checked against the store's schema on open (:func:`check_manifest`). Each
    shard is verified before its rows are first served in this process: its sha256 against the
    manifest's (once per process while the file stays unchanged, see :data:`RACY_NS`) and its
    safetensors header against the manifest (sites, widths, dtypes, row count). A damaged
    shard raises :class:`CorruptShardError` naming it; no row of it is ever returned.

    Args:
        path: store directory.
        verify: check every shard's sha256 on open, whether verified before or not.
        cache_shards: shards kept in the LRU cache used by indexing.

    Raises:
        MissingFileError: no manifest (also a ``FileNotFoundError``).
        FormatError: a damaged manifest, naming the field.
        CorruptShardError: a listed shard is missing (or, with ``verify``, differs).
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False, cache_shards: int = 4):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        check_shards_exist(self.path, self.manifest)
        self.sites: dict[str, int] = dict(self.manifest["sites"])
        self.dtype: str = self.manifest["dtype"]
        self.model_id: str = self.manifest["model_id"]
        self.n_tokens: int = int(self.manifest["n_tokens"])
        sizes = torch.tensor([s["n_tokens"] for s in self.manifest["shards"]], dtype=torch.long)
        self._ends = torch.cumsum(sizes, 0)
        self._starts = self._ends - sizes
        self._cache: OrderedDict[int, dict[str, Tensor]] = OrderedDict()
        self._cache_shards = max(1, cache_shards)
        self._layout_checked: set[int] = set()
        if not self.manifest["complete"]:
            logger.warning("%s is not complete (%d tokens so far)", self.path, self.n_tokens)
        if verify:
            self.verify()

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> ActivationStore:
        """Same as ``ActivationStore(path, **kwargs)``."""
        return cls(path, **kwargs)

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, model={self.model_id!r}, "
            f"sites={self.sites}, n_tokens={self.n_tokens}, dtype={self.dtype})"
        )

    @property
    def n_shards(self) -> int:
        """Number of shards listed in the manifest."""
        return len(self.manifest["shards"])

    def verify(self) -> None:
        """Hash every shard now (verified before or not) and compare with the manifest.

        Raises:
            CorruptShardError: naming every shard that is missing or differs.
        """
        damaged = find_damaged(self.path, self.manifest, recheck=True)
        if damaged:
            raise damage_error(self.path, damaged)

    def _check_shard(self, i: int) -> None:
        """Verify shard ``i`` before its rows are served: its sha256 (once per process while
        unchanged) and, once per store object, its header against the manifest."""
        entry = self.manifest["shards"][i]
        problem = shard_problem(self.path, entry)
        if problem is not None:
            raise damage_error(self.path, [ShardProblem(i, entry["file"], problem)])
        if i not in self._layout_checked:
            check_shard_header(self.path / entry["file"], entry, self.sites, self.dtype)
            self._layout_checked.add(i)

    def info(self) -> dict[str, Any]:
        """A summary for ``steerlab store info``: model, sites, dtype, sizes, fingerprints."""
        files = [self.path / s["file"] for s in self.manifest["shards"]]
        return {
            "path": str(self.path),
            "model_id": self.model_id,
            "sites": dict(self.sites),
            "dtype": self.dtype,
            "n_tokens": self.n_tokens,
            "n_sequences": self.manifest["n_sequences"],
            "n_shards": self.n_shards,
            "size_bytes": sum(f.stat().st_size for f in files),
            "complete": bool(self.manifest["complete"]),
            "fingerprints": dict(self.manifest["fingerprints"]),
            "config": dict(self.manifest["config"]),
        }

    def _check_names(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.sites and name not in META_DTYPES and name != SINK:
                raise KeyError(
                    f"unknown site {name!r}; this store holds {sorted(self.sites)} "
                    f"(and {sorted([*META_DTYPES, SINK])})"
                )

    def _read_shard(self, i: int, names: Sequence[str]) -> dict[str, Tensor]:
        self._check_shard(i)
        with open_tensors(self.path / self.manifest["shards"][i]["file"]) as (f, infos):
            keys = set(infos)
            out = {name: f.get_tensor(name) for name in names if name in keys}
            if SINK in names and SINK not in keys:
                # Written before sink marking: the same rule, with the shard's median.
                ratio = self.manifest.get("sinks", {}).get("norm_ratio", SINK_NORM_RATIO)
                acts = {s: f.get_tensor(s) for s in self.sites}
                out[SINK] = sink_rows(acts, f.get_tensor("positions"), ratio)
        return out

    def sink_mask(self) -> Tensor:
        """``[n_tokens]`` bool: the attention-sink rows (:func:`sink_rows`) of the whole store.

        SAE statistics, initialisations, training batches and metrics leave these rows out by
        default; stores written before sink marking get the rule applied per shard on read.
        """
        parts = [self._read_shard(i, [SINK])[SINK] for i in range(self.n_shards)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)

    def _cached_shard(self, i: int, names: Sequence[str]) -> dict[str, Tensor]:
        entry = self._cache.pop(i, {})
        missing = [n for n in names if n not in entry]
        if missing:
            entry.update(self._read_shard(i, missing))
        self._cache[i] = entry
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return entry

    def _indices(self, idx: Index) -> tuple[Tensor, bool]:
        """Global row indices as a 1-D LongTensor, and whether ``idx`` was a scalar."""
        n = self.n_tokens
        scalar = False
        if isinstance(idx, slice):
            ids = torch.arange(*idx.indices(n), dtype=torch.long)
        elif isinstance(idx, int):
            ids, scalar = torch.tensor([idx], dtype=torch.long), True
        else:
            t = torch.as_tensor(idx)
            if t.dtype == torch.bool:
                if t.shape != (n,):
                    raise IndexError(f"boolean mask of shape {tuple(t.shape)} for {n} rows")
                t = t.nonzero().squeeze(1)
            if t.is_floating_point() or t.dim() > 1:
                raise IndexError(
                    f"indices must be integers of at most 1 dim, got {t.dtype} {tuple(t.shape)}"
                )
            scalar = t.dim() == 0
            ids = t.reshape(-1).long()
        ids = torch.where(ids < 0, ids + n, ids)
        if ids.numel() and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"index out of range for a store of {n} rows")
        return ids, scalar

    def _empty(self, name: str, n: int) -> Tensor:
        if name in META_DTYPES:
            return torch.empty(n, dtype=META_DTYPES[name])
        if name == SINK:
            return torch.empty(n, dtype=torch.bool)
        return torch.empty(n, self.sites[name], dtype=DTYPES[self.dtype])

    def _gather(self, names: Sequence[str], ids: Tensor) -> dict[str, Tensor]:
        shard = torch.searchsorted(self._ends, ids, right=True)
        order = torch.argsort(shard, stable=True)  # group the rows by shard in one sort
        uniq, counts = torch.unique_consecutive(shard[order], return_counts=True)
        out = {name: self._empty(name, len(ids)) for name in names}
        for s, pos in zip(uniq.tolist(), order.split(counts.tolist())):
            data = self._cached_shard(s, names)
            local = ids[pos] - self._starts[s]
            for name in names:
                out[name][pos] = data[name][local]
        return out

    def __getitem__(self, idx: Index) -> dict[str, Tensor]:
        """Rows ``idx`` (int, slice, index tensor/list or bool mask) of every site and metadata."""
        ids, scalar = self._indices(idx)
        out = self._gather([*self.sites, *META_DTYPES, SINK], ids)
        return {k: v[0] for k, v in out.items()} if scalar else out

    def site(self, name: str) -> SiteView:
        """A view of one site (or metadata key) indexable like the store."""
        self._check_names([name])
        return SiteView(self, name)

    # a site name yields tensors, a list of names dicts: the overloads tell type checkers which
    @overload
    def iter_batches(
        self,
        site: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shards_in_memory: int = 4,
        drop_last: bool = True,
        dtype: torch.dtype | None = torch.float32,
        device: str | torch.device = "cpu",
        epoch: int = 0,
        skip_batches: int = 0,
    ) -> Iterator[Tensor]: ...

    @overload
    def iter_batches(
        self,
        site: list[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shards_in_memory: int = 4,
        drop_last: bool = True,
        dtype: torch.dtype | None = torch.float32,
        device: str | torch.device = "cpu",
        epoch: int = 0,
        skip_batches: int = 0,
    ) -> Iterator[dict[str, Tensor]]: ...

    def iter_batches(
        self,
        site: str | list[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shards_in_memory: int = 4,
        drop_last: bool = True,
        dtype: torch.dtype | None = torch.float32,
        device: str | torch.device = "cpu",
        epoch: int = 0,
        skip_batches: int = 0,
    ) -> Iterator[Tensor | dict[str, Tensor]]:
        """Stream batches of rows, shuffled within groups of shards.

        With ``shuffle``, the shard order is permuted, shards are loaded ``shards_in_memory`` at
        a time, and the group's rows (plus the rows the previous group left over) are permuted
        and cut into batches; everything depends only on ``(seed, epoch)``. Each epoch yields
        every row once, except a final partial batch when ``drop_last``.

        Args:
            site: a site name (yields tensors ``[batch, d]``) or a list of names, which may
                include ``token_ids``/``doc_ids``/``positions``/``sink`` (yields dicts).
            batch_size: rows per batch.
            shuffle: if False, rows come in store order.
            seed: base seed of the permutations.
            shards_in_memory: shards loaded at once; memory is about this many shards.
            drop_last: drop the final partial batch.
            dtype: cast site tensors to this dtype (None keeps the stored dtype).
            device: device of the yielded tensors.
            epoch: mixed into the seed, so each epoch has its own order.
            skip_batches: skip this many batches first, to resume training exactly; groups
                whose batches are all skipped are not even loaded.
        """
        names = [site] if isinstance(site, str) else list(site)
        self._check_names(names)
        check_int(batch_size, "batch_size")
        check_int(shards_in_memory, "shards_in_memory")
        check_int(skip_batches, "skip_batches", low=0)
        check_int(epoch, "epoch", low=0)
        check_int(seed, "seed", low=-(2**63))
        gen = torch.Generator().manual_seed(_mix_seed(seed, epoch))
        order = (
            torch.randperm(self.n_shards, generator=gen) if shuffle else torch.arange(self.n_shards)
        )
        left_ids = torch.empty(0, dtype=torch.long)  # global ids of the carried rows
        left_data: dict[str, Tensor] | None = {n: self._empty(n, 0) for n in names}
        batch_no = 0

        def emit(data: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
            out = {
                k: v.to(device=device, dtype=dtype if k in self.sites and dtype else v.dtype)
                for k, v in data.items()
            }
            return out[site] if isinstance(site, str) else out

        groups = order.split(shards_in_memory)
        for gi, group in enumerate(groups):
            group_ids = torch.cat(
                [left_ids]
                + [torch.arange(int(self._starts[s]), int(self._ends[s])) for s in group.tolist()]
            )
            last = gi == len(groups) - 1
            n_pool = len(group_ids)
            perm = torch.randperm(n_pool, generator=gen) if shuffle else torch.arange(n_pool)
            n_full = n_pool // batch_size
            n_out = n_full + (1 if last and not drop_last and n_pool % batch_size else 0)
            if batch_no + n_out <= skip_batches:  # every batch of this group is skipped
                batch_no += n_out
                left_ids = group_ids[perm[n_full * batch_size :]]
                left_data = None
                continue
            if left_data is None:  # the previous group was skipped unloaded: fetch its rest
                left_data = self._gather(names, left_ids)
            parts = [left_data] + [self._read_shard(s, names) for s in group.tolist()]
            pool = {n: torch.cat([p[n] for p in parts]) for n in names}
            del parts
            for b in range(n_out):
                if batch_no >= skip_batches:
                    sel = perm[b * batch_size : (b + 1) * batch_size]
                    yield emit({n: pool[n][sel] for n in names})
                batch_no += 1
            rest = perm[n_full * batch_size :]
            left_ids = group_ids[rest]
            left_data = {n: pool[n][rest] for n in names}


class SiteView:
    """One site of an :class:`ActivationStore`, indexable like the store.

    Args:
        store: the store.
        name: a site name or ``token_ids``/``doc_ids``/``positions``/``sink``.
    """

    def __init__(self, store: ActivationStore, name: str) -> None:
        self.store = store
        self.name = name

    def __len__(self) -> int:
        return len(self.store)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_tokens, d)`` for a site, ``(n_tokens,)`` for metadata."""
        d = self.store.sites.get(self.name)
        return (len(self.store),) if d is None else (len(self.store), d)

    def __getitem__(self, idx: Index) -> Tensor:
        """Rows ``idx``: ``[d]`` for an int, else ``[len(idx), d]``."""
        ids, scalar = self.store._indices(idx)
        out = self.store._gather([self.name], ids)[self.name]
        return out[0] if scalar else out

    def to_tensor(self, dtype: torch.dtype | None = None) -> Tensor:
        """All rows in one tensor (loads every shard; for small stores)."""
        parts = [
            self.store._read_shard(i, [self.name])[self.name] for i in range(self.store.n_shards)
        ]
        out = torch.cat(parts) if parts else self.store._empty(self.name, 0)
        return out if dtype is None else out.to(dtype)
