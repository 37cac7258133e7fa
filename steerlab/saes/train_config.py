"""Settings of an SAE training run (:class:`TrainConfig`) and its learning-rate schedule.

Split from :mod:`steerlab.saes.train`, which re-exports both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

from steerlab.config import (
    ConfigError,
    check_fraction,
    check_nonnegative,
    check_positive,
    check_types,
    require,
)
from steerlab.saes.sae import DEFAULT_BASE_LR


@dataclass
class TrainConfig:
    """Settings shared by all SAEs of one training run."""

    batch_size: int = 4096
    """Tokens per step (one batch feeds every SAE)."""
    max_tokens: int | None = None
    """Tokens to train on; None: one epoch. Beyond the store's size, further epochs follow,
    each in its own shuffled order."""
    lr: float | None = None
    """Adam learning rate for every SAE; None: ``base_lr / sqrt(d_sae / 2**14)`` per SAE."""
    base_lr: float = DEFAULT_BASE_LR
    """Learning rate at width 2**14 for the width scaling (Gao et al. 2024): 1.6e-3, i.e. 3e-3
    at width 4608 (see :data:`steerlab.saes.sae.DEFAULT_BASE_LR`); Gao et al.'s 2e-4 suits
    billion-token runs."""
    warmup_steps: int | None = None
    """Linear learning-rate warm-up from 0 over this many steps; None: ``warmup_frac`` of the
    run's steps."""
    warmup_frac: float = 0.05
    """Warm-up as a fraction of the run's steps (used when ``warmup_steps`` is None)."""
    decay_frac: float = 0.2
    """The learning rate falls linearly to 0 over this final fraction of the run's steps
    (0: constant after the warm-up)."""
    sinks: Literal["drop", "keep"] = "drop"
    """Attention-sink rows of a store (its ``sink`` column): ``drop`` leaves them out of the
    training batches (the initialisation statistics always leave them out); a tensor source has
    no marks and is used as given."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 6.25e-10
    """Adam epsilon (Gao et al. 2024)."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss of TopK SAEs (Gao et al. 2024); 0 disables it."""
    dead_tokens: int = 10_000_000
    """A latent that has not fired for this many tokens is dead (Gao et al.: 10M)."""
    k_anneal_steps: int = 0
    """Steps over which k falls linearly from ``k_anneal_start`` to k; 0 disables."""
    k_anneal_start: int | None = None
    """Starting k of the annealing; None: ``min(4·k, d_sae // 2)`` (at least k)."""
    init_tokens: int = 65536
    """Tokens whose mean/covariance initialise ``tied`` and ``active_subspace`` SAEs."""
    nan_policy: Literal["skip", "error"] = "skip"
    """Rows with NaN/inf: ``skip`` drops and counts them (logged); ``error`` raises."""
    seed: int = 0
    """Seed of the batch order and of the initialisations."""
    shards_in_memory: int = 4
    """Store shards shuffled together (part of the batch order)."""
    checkpoint_dir: str | None = None
    """Directory for checkpoints (None: no checkpoints, no resume)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (a final one is always written); 0: only the final one."""
    log_every: int = 10
    """Steps between progress callbacks (metrics are averaged over them)."""
    device: str = "cpu"
    """Device of the SAEs and batches (``cuda`` under torchrun: each rank's own GPU)."""
    distribute: Literal["data", "modules"] = "data"
    """Under torchrun with several ranks: ``data`` (DDP; every SAE on every rank, each rank
    trains on its share of every batch) or ``modules`` (each SAE on one rank, on whole batches;
    sparsify's distribute_modules). Both give the one-process weights. Ignored in one process."""
    autocast: Literal["auto", "bfloat16", "off"] = "auto"
    """Mixed precision of the SAE forward: ``auto`` is bfloat16 autocast on CUDA and none
    elsewhere; ``bfloat16`` forces it (on the CPU too); ``off`` never. Parameters, Adam state
    and gradients stay in the SAE's dtype."""

    def __post_init__(self) -> None:
        check_types(self)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check_positive(self, "batch_size", "max_tokens", "lr", "base_lr", "eps", "dead_tokens")
        check_positive(self, "k_anneal_start", "init_tokens", "shards_in_memory", "log_every")
        check_nonnegative(self, "warmup_steps", "auxk_alpha", "k_anneal_steps", "seed")
        check_nonnegative(self, "checkpoint_every")
        check_fraction(self, "warmup_frac", low=True, high=True)
        check_fraction(self, "decay_frac", low=True, high=True)
        if self.max_tokens is not None and self.max_tokens < self.batch_size:
            raise ConfigError("TrainConfig", "max_tokens",
                              f"max_tokens={self.max_tokens} < batch_size={self.batch_size}")  # fmt: skip
        require(self, "betas", all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")


class LrSchedule(NamedTuple):
    """Learning-rate multiplier: linear warm-up, constant, linear decay to 0 ("WSD").

    ``m(s) = min(1, (s + 1) / warmup) · min(1, (total − s) / decay)`` for step ``s`` in
    ``[0, total)``. Tied to the run's length, so a short run gets a short warm-up (the old
    fixed 1,000-step warm-up left a 44-step run at 4% of its lr) and every run ends annealed.

    Attributes:
        warmup: warm-up steps (0: none).
        decay: final steps of the linear decay (0: none).
        total: steps of the run.
    """

    warmup: int
    decay: int
    total: int

    @classmethod
    def of(cls, cfg: TrainConfig, total_steps: int) -> LrSchedule:
        """The schedule of ``cfg`` for a run of ``total_steps``."""
        warm = cfg.warmup_steps
        if warm is None:
            warm = math.ceil(cfg.warmup_frac * total_steps)
        return cls(warm, math.ceil(cfg.decay_frac * total_steps), total_steps)

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        decay = min(1.0, max(self.total - step, 0) / self.decay) if self.decay else 1.0
        return warm * decay
