"""torch.distributed helpers: rank and world, init from ``torchrun``, exact merges of statistics.

steerlab scales out on PyTorch's own engine. Under ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) :func:`init` opens the
default process group (``nccl`` on CUDA, ``gloo`` on CPU); in a plain process every helper here
is a no-op, so the same code runs on one process and on many:

    >>> from steerlab import distributed as dist
    >>> info = dist.init()                        # no-op outside torchrun
    >>> fitter = LeaceFitter(d, k)
    >>> for x, z in my_share_of_the_rows():       # each rank streams disjoint rows
    ...     fitter.update(x, z)
    >>> fitter.all_reduce_()                      # now every rank holds the global statistics
    >>> eraser = fitter.eraser                    # = the one-process fit, to float round-off

**Exact merges.** Every streaming fitter in steerlab keeps a count ``n``, means ``ā_i`` and
centred co-moments ``M_ij = Σ (a_i − ā_i)(a_j − ā_j)ᵀ`` (Welford / Chan et al. 1979).
:func:`all_reduce_moments_` merges them across ranks with Chan's rule, written as two
all-reduces: with ``N = Σ_r n_r`` and the global mean ``ā = Σ_r n_r ā_r / N``,

    ``M = Σ_r [ M_r + n_r (ā_r − ā)(ā_r − ā)ᵀ ]``,

which is the one-process co-moment of the union exactly (in exact arithmetic; in float64 it
differs by round-off, ~1e-15 relative). Accumulators stay in their own dtype (float64) on any
device; an ``nccl`` group gets them moved to the rank's CUDA device for the collective and back.

Nothing here pickles: only tensor collectives (``all_reduce``, ``all_gather``, ``broadcast``)
are used, never the ``*_object`` ones, which unpickle what other processes send.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as tdist
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "all_gather_rows",
    "all_reduce_",
    "all_reduce_moments_",
    "barrier",
    "broadcast_",
    "describe",
    "init",
    "is_distributed",
    "is_main",
    "launched_by_torchrun",
    "local_rank",
    "rank",
    "shutdown",
    "split_range",
    "world_size",
]

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""Environment variables that ``torchrun`` sets for every worker."""


class DistInfo(NamedTuple):
    """Where this process stands in the run (``rank 0 of 1`` in a plain process).

    Attributes:
        rank: global rank, ``0..world_size-1``.
        world_size: number of processes.
        local_rank: rank on this node (selects the CUDA device).
        backend: ``"gloo"``, ``"nccl"``, ... or ``""`` without a process group.
        device: the device this rank should compute on (``cuda:<local_rank>`` with CUDA).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (or another launcher setting the same
    variables) is present."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """Global rank (0 without a process group)."""
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return tdist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank on this node: ``$LOCAL_RANK`` (set by torchrun), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this is rank 0 (always true in one process)."""
    return rank() == 0


def _backend() -> str:
    return str(tdist.get_backend()) if is_distributed() else ""


def _info() -> DistInfo:
    lr = local_rank()
    cuda = torch.cuda.is_available() and _backend() in ("nccl", "")
    device = torch.device("cuda", lr % torch.cuda.device_count()) if cuda else torch.device("cpu")
    return DistInfo(rank(), world_size(), lr, _backend(), device)


def init(backend: str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Open the default process group from torchrun's environment; a no-op otherwise.

    Args:
        backend: ``"nccl"`` (CUDA), ``"gloo"`` (CPU) or None: nccl when CUDA is available,
            else gloo. A group that is already open is kept as it is.
        timeout_s: how long a collective waits for the other ranks before failing.

    Returns:
        This process's :class:`DistInfo`. Under nccl the CUDA device ``cuda:<local_rank>`` is
        made current.
    """
    if is_distributed():
        return _info()
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 and backend is None:
        # one process: nothing to open (a 1-process torchrun run needs no group either)
        return _info()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA; use backend='gloo' on CPU")
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    info = _info()
    logger.info("rank %d of %d (%s) on %s", info.rank, info.world_size, backend, info.device)
    return info


def shutdown() -> None:
    """Close the default process group if one is open (call it at the end of a script)."""
    if is_distributed():
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank reaches this point (no-op in one process)."""
    if is_distributed():
        tdist.barrier()


def _comm_device(t: Tensor) -> torch.device:
    """Where a collective on ``t`` must run: the rank's CUDA device for nccl, CPU for gloo."""
    if _backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if _backend() == "gloo" else t.device


def all_reduce_(t: Tensor, op: str = "sum") -> Tensor:
    """Reduce ``t`` over ranks in place (``"sum"``, ``"max"``, ``"min"``); returns ``t``.

    The tensor keeps its dtype (float64 statistics stay float64) and its device: it is copied
    to the collective's device only when the backend needs it (nccl: CUDA, gloo: CPU).
    """
    if not is_distributed():
        return t
    ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    dev = _comm_device(t)
    buf = t if t.device == dev and t.is_contiguous() else t.to(dev).contiguous()
    tdist.all_reduce(buf, ops[op])
    if buf is not t:
        t.copy_(buf)
    return t


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s values (in place); returns ``t``."""
    if not is_distributed():
        return t
    dev = _comm_device(t)
    buf = t if t.device == dev and t.is_contiguous() else t.to(dev).contiguous()
    tdist.broadcast(buf, src)
    if buf is not t:
        t.copy_(buf)
    return t


def all_gather_rows(t: Tensor) -> list[Tensor]:
    """Every rank's ``t`` (``[n_r, ...]``, ``n_r`` may differ), in rank order, on ``t``'s device.

    Ranks agree on the trailing shape and dtype; rows are padded to the largest ``n_r`` for
    the collective and cut back afterwards.
    """
    if not is_distributed():
        return [t]
    dev = _comm_device(t)
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    tdist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    top = max(counts)
    buf = t.new_zeros((top, *t.shape[1:]), device=dev)
    buf[: t.shape[0]] = t.to(dev)
    parts = [torch.zeros_like(buf) for _ in counts]
    tdist.all_gather(parts, buf)
    return [p[:c].to(t.device) for p, c in zip(parts, counts)]


def all_reduce_moments_(
    n: int,
    means: Sequence[Tensor],
    comoments: Sequence[tuple[Tensor, int, int]] = (),
) -> int:
    """Merge streamed means and centred co-moments over ranks, in place (Chan et al. 1979).

    On entry every rank holds the statistics of its own ``n`` rows: ``means[i]`` (``[..., d_i]``,
    the mean of variable ``a_i``) and, for each ``(M, i, j)`` of ``comoments``, the centred
    co-moment ``M = Σ (a_i − ā_i) ⊗ (a_j − ā_j)``: an outer product over the last dimension when
    ``M`` has one more dimension than ``means[i]`` (a covariance ``[..., d_i, d_j]``), else an
    elementwise (broadcast) product (a variance ``[..., d]``, or ``Σ dx·dy`` with a scalar
    ``y``). On return every rank holds the statistics of all ``N = Σ_r n_r`` rows:

        ``ā = Σ_r n_r ā_r / N``,   ``M = Σ_r [M_r + n_r (ā_i,r − ā_i) ⊗ (ā_j,r − ā_j)]``.

    A rank with ``n = 0`` contributes nothing (its means are ignored). In one process this
    returns ``n`` and changes nothing.

    Args:
        n: rows seen by this rank.
        means: this rank's means (updated in place to the global means).
        comoments: ``(M, i, j)`` triples (``M`` updated in place to the global co-moment).

    Returns:
        The global count ``N``.
    """
    if not is_distributed():
        return n
    ref = means[0] if means else (comoments[0][0] if comoments else torch.zeros(()))
    # float64 holds every count below 2**53 exactly
    count = torch.tensor([float(n)], dtype=torch.float64, device=ref.device)
    total = int(all_reduce_(count).item())
    if total == 0:
        return 0
    glob = [all_reduce_(m * n) / total for m in means]
    deltas = [m - g for m, g in zip(means, glob)]
    for M, i, j in comoments:
        di, dj = deltas[i], deltas[j]
        if M.ndim == means[i].ndim + 1:
            M += n * (di[..., :, None] * dj[..., None, :])
        else:
            M += n * (di * dj)
        all_reduce_(M)
    for m, g in zip(means, glob):
        m.copy_(g)
    return total


def split_range(
    n: int, rank_: int | None = None, world: int | None = None, *, unit: int = 1
) -> range:
    """Rank ``rank_``'s contiguous share of ``range(n)``, cut at multiples of ``unit``.

    The ``ceil(n / unit)`` blocks of ``unit`` items are dealt out in contiguous runs whose
    lengths differ by at most one block, lower ranks first; so the shares, in rank order,
    are ``range(n)`` in order. Capture uses ``unit = batch_size`` so that every rank's batches
    are exactly the batches a one-process run forms.

    Args:
        n: number of items.
        rank_: the rank (default: this process's).
        world: number of ranks (default: this run's).
        unit: block size.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} is not in a world of {world}")
    if unit < 1:
        raise ValueError(f"unit must be >= 1, got {unit}")
    blocks = -(-n // unit)
    per, extra = divmod(blocks, world)
    first = rank_ * per + min(rank_, extra)
    last = first + per + (1 if rank_ < extra else 0)
    return range(min(first * unit, n), min(last * unit, n))


def describe() -> dict[str, Any]:
    """``{"rank", "world_size", "backend"}`` of this process, for logs and manifests."""
    return {"rank": rank(), "world_size": world_size(), "backend": _backend()}
