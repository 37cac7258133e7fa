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
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import torch
from torch import Tensor

from steerlab.capture.integrity import (
    DTYPES,
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
from steerlab.capture.integrity import (  # re-exported: the store's format constants
    FORMAT as FORMAT,
)
from steerlab.capture.integrity import (
    MANIFEST_NAME as MANIFEST_NAME,
)
from steerlab.capture.integrity import (
    CorruptShardError as CorruptShardError,  # re-exported: raised by the readers here
)
from steerlab.capture.writer import (  # re-exported: the store's writing side
    _SHARD_RE as _SHARD_RE,
)
from steerlab.capture.writer import (
    StoreMismatchError as StoreMismatchError,
)
from steerlab.capture.writer import (
    StoreWriter as StoreWriter,
)
from steerlab.capture.writer import (
    shard_name as shard_name,
)
from steerlab.capture.writer import (
    sink_rows as sink_rows,
)
from steerlab.checks import check_int
from steerlab.validation import open_tensors

logger = logging.getLogger(__name__)

Index = int | slice | Tensor | Sequence[int]


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
