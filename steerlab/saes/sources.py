"""What :func:`steerlab.saes.train.train` reads: an activation store or in-memory tensors.

Both serve shuffled batches whose order depends only on ``(seed, epoch)``, and both have a
fingerprint that a checkpoint records, so that a run never resumes on other data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from steerlab.capture.store import SINK, ActivationStore
from steerlab.saes.train_config import TrainConfig


class TensorSource:
    """Tensors ``{site: [n, d]}`` served like :meth:`ActivationStore.iter_batches`."""

    def __init__(self, data: Mapping[str, Tensor]) -> None:
        ns = {int(t.shape[0]) for t in data.values()}
        if len(ns) != 1:
            raise ValueError(f"all tensors need the same number of rows, got {sorted(ns)}")
        self.data = {s: t.reshape(t.shape[0], -1) for s, t in data.items()}
        self.sites = {s: int(t.shape[1]) for s, t in self.data.items()}
        self.n_tokens = ns.pop()

    def iter_batches(
        self, names: list[str], batch_size: int, *, seed: int, epoch: int, skip_batches: int
    ) -> Iterator[dict[str, Tensor]]:
        digest = hashlib.sha256(f"steerlab.saes:{seed}:{epoch}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        perm = torch.randperm(self.n_tokens, generator=gen)
        for b in range(skip_batches, self.n_tokens // batch_size):
            sel = perm[b * batch_size : (b + 1) * batch_size]
            yield {s: self.data[s][sel].float() for s in names}

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "tensors", "n_tokens": self.n_tokens, "sites": self.sites}


def store_fingerprint(store: ActivationStore) -> dict[str, Any]:
    shas = "".join(s["sha256"] for s in store.manifest["shards"])
    return {
        "kind": "store",
        "n_tokens": store.n_tokens,
        "sites": dict(store.sites),
        "shards_sha256": hashlib.sha256(shas.encode()).hexdigest(),
    }


def iter_batches(
    src: Any, sites: list[str], cfg: TrainConfig, epoch: int, skip: int
) -> Iterator[dict[str, Tensor]]:
    """Batches of ``sites`` (plus the sink column when sinks are dropped) for ``epoch``, after
    the first ``skip``: the order depends only on ``(cfg.seed, epoch)``."""
    if isinstance(src, TensorSource):
        return src.iter_batches(
            sites, cfg.batch_size, seed=cfg.seed, epoch=epoch, skip_batches=skip
        )
    # The sink column rides along (the batch order does not depend on which names are read).
    names = [*sites, SINK] if cfg.sinks == "drop" else list(sites)
    return src.iter_batches(
        names, cfg.batch_size, seed=cfg.seed, epoch=epoch, skip_batches=skip,
        shards_in_memory=cfg.shards_in_memory, dtype=torch.float32,
    )  # fmt: skip
