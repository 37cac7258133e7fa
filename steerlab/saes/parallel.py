"""How :func:`steerlab.saes.train.train` splits its work over the ranks of ``torchrun``.

In one process every SAE trains on every row (:class:`Local`). Under ``torchrun`` (with
:func:`steerlab.distributed.init` called) ``TrainConfig.distribute`` picks one of two modes, the
two of EleutherAI's sparsify:

- ``"data"`` (:class:`DataParallel`): every rank holds every SAE, wrapped in PyTorch's
  ``DistributedDataParallel``. All ranks walk the same shuffled stream of global batches
  (:meth:`ActivationStore.iter_batches`, whose order depends only on the seed) and each keeps
  its contiguous ``1/W`` of every batch's rows: together they train on exactly the batches of a
  one-process run. The losses are made *shares* of the global batch's loss: the FVU
  denominator ``Σ‖x − x̄‖²`` and the row count are the whole batch's (merged with
  :func:`steerlab.distributed.all_reduce_moments_`), so ``Σ_r loss_r`` is the one-process loss
  and, with the loss scaled by ``W`` against DDP's gradient mean, every rank gets the
  one-process gradient. The decoder's gradient projection, the Adam step and the decoder
  renormalisation then run on identical tensors on every rank; dead-latent counters are
  all-reduced, sink and NaN counts too. So a W-rank run equals a one-process run with the same
  global batch up to the float round-off of the gradient all-reduce (tested for W = 2).
- ``"modules"`` (:class:`Modules`): SAE ``i`` (in config order) trains on rank ``i mod W``
  alone, on whole batches; a rank reads only its SAEs' sites. Each SAE sees the batches it
  would in one process, so its weights equal the one-process ones exactly (same ops, same
  data). Every rank initialises every SAE (the initialisations share one random generator, so
  this reproduces the one-process draws) and then drops the ones it does not own.

Checkpoints are written by rank 0 alone (atomically, :func:`steerlab.saes.formats.
write_checkpoint`); in ``modules`` mode the other ranks' SAEs and optimizer states are sent
to it first as safetensors bytes over a tensor broadcast (nothing is pickled). A checkpoint
records the world size and the mode, and resumes only with the same ones.

On CUDA every rank computes on ``cuda:<LOCAL_RANK>``; the forward runs under
``torch.autocast`` (bfloat16) there unless ``TrainConfig.autocast = "off"``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from steerlab import distributed as dist
from steerlab.saes.formats import PARAM_NAMES
from steerlab.saes.sae import Sae, SaeConfig, SaeOutput, build_sae

logger = logging.getLogger(__name__)

__all__ = ["DataParallel", "Local", "Modules", "Parallel", "parallel_for"]

#: architectures whose forward accepts the batch's total variance (data-parallel losses)
DATA_PARALLEL_ARCHITECTURES = ("topk", "relu_l1")


class Parallel:
    """One process: every SAE on every row (the base of the distributed modes).

    Attributes:
        mode: ``"none"``, ``"data"`` or ``"modules"``.
        rank: this process's rank.
        world: number of ranks.
        device: where the SAEs and batches live.
    """

    mode = "none"

    def __init__(self, device: str, autocast: str) -> None:
        self.rank, self.world = dist.rank(), dist.world_size()
        self.device = _rank_device(device)
        on_cuda = torch.device(self.device).type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if autocast == "bfloat16" or (autocast == "auto" and on_cuda) else None
        )

    def header(self) -> dict[str, Any]:
        """What a checkpoint must share with the run that resumes it."""
        return {"world_size": self.world, "distribute": self.mode}

    def owns(self, index: int) -> bool:
        """Whether this rank trains SAE ``index`` (in config order)."""
        del index
        return True

    def prepare(self, members: Sequence[Any]) -> None:
        """Set up the members this rank trains (DDP wrappers in ``data`` mode)."""

    def rows(self, x: Tensor) -> Tensor:
        """This rank's rows of a global batch."""
        return x

    def sum_counts(self, counts: list[int]) -> list[int]:
        """Counts summed over the ranks that see the same batch rows."""
        return counts

    def total_variance(self, x: Tensor) -> tuple[Tensor | None, int | None]:
        """The whole batch's ``Σ‖x − x̄‖²`` and row count (None: ``x`` is the whole batch)."""
        del x
        return None, None

    def forward(self, member: Any, x: Tensor, **kwargs: Any) -> SaeOutput:
        """The SAE's forward (through DDP when wrapped), under autocast when enabled."""
        module = getattr(member, "ddp", None) or member.sae
        ctx = (
            torch.autocast(torch.device(self.device).type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            return module(x, **kwargs)

    @property
    def loss_scale(self) -> float:
        """Factor on the loss before ``backward`` (``W`` against DDP's gradient mean)."""
        return 1.0

    def fired(self, counts: Tensor) -> Tensor:
        """Latent firing counts over the whole batch."""
        return counts

    def reduce_metrics(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """Metric sums over the whole batch (shares summed over ranks in ``data`` mode)."""
        return sums

    @property
    def collective_metrics(self) -> bool:
        """Whether popping the metrics is a collective every rank must join."""
        return False

    def merge_counts(self, state: dict[str, Any]) -> None:
        """Make the per-site sink and NaN counts of ``state`` the whole run's."""

    def gather(
        self, members: Sequence[Any], configs: Sequence[SaeConfig]
    ) -> tuple[dict[str, Sae], dict[str, dict[str, Tensor]]] | None:
        """Every SAE and its optimizer state, on rank 0 (None on other ranks)."""
        del configs
        return {m.name: m.sae for m in members}, {m.name: m.state_tensors() for m in members}

    def sites(self, configs: Sequence[SaeConfig]) -> list[str]:
        """The sites this rank reads."""
        return sorted({c.site for i, c in enumerate(configs) if self.owns(i)})  # type: ignore[type-var]


Local = Parallel


class DataParallel(Parallel):
    """Every SAE on every rank under DDP; each rank takes its ``1/W`` of each batch."""

    mode = "data"

    def prepare(self, members: Sequence[Any]) -> None:
        for m in members:
            arch = m.sae.cfg.architecture
            if arch not in DATA_PARALLEL_ARCHITECTURES:
                raise ValueError(
                    f"{m.name}: data-parallel training supports {DATA_PARALLEL_ARCHITECTURES} "
                    f"SAEs, not {arch!r} (its loss is not a sum over rows); use "
                    "distribute='modules'"
                )
            on_cuda = m.sae.device.type == "cuda"
            m.ddp = DistributedDataParallel(m.sae, device_ids=[m.sae.device] if on_cuda else None)

    def rows(self, x: Tensor) -> Tensor:
        share = dist.split_range(x.shape[0], self.rank, self.world)
        return x[share.start : share.stop]

    def sum_counts(self, counts: list[int]) -> list[int]:
        t = torch.tensor([float(c) for c in counts], dtype=torch.float64)
        return [int(v) for v in dist.all_reduce_(t).tolist()]

    def total_variance(self, x: Tensor) -> tuple[Tensor | None, int | None]:
        X = x.detach().double()
        n = X.shape[0]
        mean = X.mean(0) if n else X.new_zeros(X.shape[1])
        var = (X - mean).pow(2).sum(0)
        total = dist.all_reduce_moments_(n, [mean], [(var, 0, 0)])
        return var.sum(), total

    @property
    def loss_scale(self) -> float:
        return float(self.world)

    def fired(self, counts: Tensor) -> Tensor:
        return dist.all_reduce_(counts)

    def reduce_metrics(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        if not sums:
            return sums
        keys = sorted(sums)
        t = dist.all_reduce_(torch.stack([sums[k].detach().double() for k in keys]))
        return {k: v.float() for k, v in zip(keys, t)}

    @property
    def collective_metrics(self) -> bool:
        return True


class Modules(Parallel):
    """SAE ``i`` on rank ``i mod W``, on whole batches (sparsify's ``distribute_modules``)."""

    mode = "modules"

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def merge_counts(self, state: dict[str, Any]) -> None:
        # every rank that reads a site sees the same batches, so the same counts; the others 0
        for key in ("skipped_rows", "sink_rows"):
            sites = sorted(state[key])
            t = torch.tensor([float(state[key][s]) for s in sites], dtype=torch.float64)
            merged = dist.all_reduce_(t, "max").tolist()
            state[key] = {s: int(v) for s, v in zip(sites, merged)}

    def gather(
        self, members: Sequence[Any], configs: Sequence[SaeConfig]
    ) -> tuple[dict[str, Sae], dict[str, dict[str, Tensor]]] | None:
        own = {m.name: m for m in members}
        saes: dict[str, Sae] = {}
        per_sae: dict[str, dict[str, Tensor]] = {}
        for i, c in enumerate(configs):
            owner = i % self.world
            data = b""
            if owner == self.rank:
                m = own[c.name]
                tensors = {f"param.{n}": getattr(m.sae, n).detach() for n in PARAM_NAMES}
                tensors.update({f"state.{k}": v for k, v in m.state_tensors().items()})
                data = st_save({k: v.cpu().contiguous() for k, v in tensors.items()})
            data = _broadcast_bytes(data, owner)
            if self.rank != 0:
                continue
            if owner == 0:
                m = own[c.name]
                saes[m.name], per_sae[m.name] = m.sae, m.state_tensors()
                continue
            got = st_load(data)
            sae = build_sae(c, device=self.device)
            with torch.no_grad():
                for n in PARAM_NAMES:
                    getattr(sae, n).copy_(got[f"param.{n}"])
            saes[c.name] = sae  # type: ignore[index]
            per_sae[c.name] = {k[6:]: v for k, v in got.items() if k.startswith("state.")}  # type: ignore[index]
        return (saes, per_sae) if self.rank == 0 else None


def parallel_for(distribute: str, device: str, autocast: str) -> Parallel:
    """The strategy of this process: :class:`Local` outside a multi-rank process group."""
    if dist.world_size() == 1:
        return Local(device, autocast)
    if distribute == "data":
        return DataParallel(device, autocast)
    if distribute == "modules":
        return Modules(device, autocast)
    raise ValueError(f"distribute must be 'data' or 'modules', got {distribute!r}")


def _rank_device(device: str) -> str:
    """``cuda`` means this rank's GPU under torchrun (``cuda:<LOCAL_RANK>``)."""
    if device == "cuda" and dist.world_size() > 1:
        return f"cuda:{dist.local_rank() % max(torch.cuda.device_count(), 1)}"
    return device


def _broadcast_bytes(data: bytes, src: int) -> bytes:
    """``data`` of rank ``src`` on every rank (a length, then a uint8 tensor)."""
    n = dist.broadcast_(torch.tensor([len(data)], dtype=torch.long), src)
    buf = torch.zeros(int(n), dtype=torch.uint8)
    if dist.rank() == src and len(data):
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return bytes(dist.broadcast_(buf, src).numpy().tobytes())


def batches_of(it: Iterator[Any], par: Parallel) -> Iterator[Any]:
    """The batches of ``it`` as this rank trains on them (its rows in ``data`` mode)."""
    for batch in it:
        if isinstance(batch, dict):
            yield {k: par.rows(v) for k, v in batch.items()}
        else:
            yield par.rows(batch)
