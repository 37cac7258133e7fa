"""Sparse autoencoders: TopK and ReLU-L1 SAEs, initialisation, training, metrics, file formats.

    >>> from steerlab.saes import SaeConfig, TrainConfig, train
    >>> result = train(store, [SaeConfig(d_in=576, d_sae=4608, k=32, site="resid_post.6")])

Modules: :mod:`~steerlab.saes.sae` (models), :mod:`~steerlab.saes.init` (tied and
active-subspace init), :mod:`~steerlab.saes.train` (trainer with exact resume),
:mod:`~steerlab.saes.evals` (FVU, L0, densities, loss recovered), :mod:`~steerlab.saes.formats`
(steerlab and SAELens directories).
"""

from __future__ import annotations

from steerlab.saes.evals import (
    LossRecovered,
    MetricsFitter,
    SaeMetrics,
    ce_loss_recovered,
    density_histogram,
    evaluate,
    loss_recovered,
)
from steerlab.saes.formats import load_sae, load_saelens, save_sae, save_saelens
from steerlab.saes.init import (
    ActivationStats,
    InitReport,
    StatsFitter,
    activation_stats,
    effective_rank,
    init_active_subspace_,
    init_random_,
    init_tied_,
    initialize_,
)
from steerlab.saes.sae import (
    SAE_CLASSES,
    ReluSae,
    Sae,
    SaeConfig,
    SaeOutput,
    TopKSae,
    build_sae,
    lr_for_width,
    sae_class,
)
from steerlab.saes.train import (
    CheckpointMismatchError,
    LrSchedule,
    TrainConfig,
    TrainProgress,
    TrainResult,
    train,
)

__all__ = [
    "SAE_CLASSES",
    "ActivationStats",
    "CheckpointMismatchError",
    "InitReport",
    "LossRecovered",
    "LrSchedule",
    "MetricsFitter",
    "ReluSae",
    "Sae",
    "SaeConfig",
    "SaeMetrics",
    "SaeOutput",
    "StatsFitter",
    "TopKSae",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "activation_stats",
    "build_sae",
    "ce_loss_recovered",
    "density_histogram",
    "effective_rank",
    "evaluate",
    "init_active_subspace_",
    "init_random_",
    "init_tied_",
    "initialize_",
    "load_sae",
    "load_saelens",
    "loss_recovered",
    "lr_for_width",
    "sae_class",
    "save_sae",
    "save_saelens",
    "train",
]
