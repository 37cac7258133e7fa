"""Sparse autoencoders: TopK, ReLU-L1, JumpReLU, BatchTopK and gated SAEs, initialisation,
training, metrics, and the file layouts of the other SAE libraries.

    >>> from steerlab.saes import SaeConfig, TrainConfig, train, load_sae
    >>> result = train(store, [SaeConfig(d_in=576, d_sae=4608, k=32, site="resid_post.6")])
    >>> sae = load_sae("path/to/saelens_or_sparsify_or_dictionary_learning_dir")

Modules: :mod:`~steerlab.saes.sae` (TopK, ReLU-L1 and the architecture registry),
:mod:`~steerlab.saes.jumprelu`, :mod:`~steerlab.saes.batchtopk`, :mod:`~steerlab.saes.gated`
(one architecture each), :mod:`~steerlab.saes.normalize` (per-token input normalisation),
:mod:`~steerlab.saes.init` (tied and active-subspace init), :mod:`~steerlab.saes.train`
(trainer with exact resume), :mod:`~steerlab.saes.evals` (FVU, L0, densities, loss
recovered), :mod:`~steerlab.saes.formats` (steerlab's directory, checkpoints),
:mod:`~steerlab.saes.io` (every layout: :func:`load_sae` recognises them all).
"""

from __future__ import annotations

from steerlab.saes.batchtopk import BatchTopKSae
from steerlab.saes.evals import (
    LossRecovered,
    MetricsFitter,
    SaeMetrics,
    ce_loss_recovered,
    density_histogram,
    evaluate,
    loss_recovered,
)
from steerlab.saes.formats import save_sae
from steerlab.saes.gated import GatedSae
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
from steerlab.saes.io import (
    LAYOUTS,
    check_fits,
    detect_layout,
    load_dictionary_learning,
    load_gemma_scope,
    load_sae,
    load_saelens,
    load_saes,
    load_sparsify,
    load_sparsify_run,
    save_dictionary_learning,
    save_gemma_scope,
    save_saelens,
    save_sparsify,
    save_sparsify_run,
)
from steerlab.saes.jumprelu import JumpReluSae
from steerlab.saes.normalize import NormalizedSae
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
    "LAYOUTS",
    "SAE_CLASSES",
    "ActivationStats",
    "BatchTopKSae",
    "GatedSae",
    "JumpReluSae",
    "NormalizedSae",
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
    "check_fits",
    "detect_layout",
    "density_histogram",
    "effective_rank",
    "evaluate",
    "init_active_subspace_",
    "init_random_",
    "init_tied_",
    "initialize_",
    "load_dictionary_learning",
    "load_gemma_scope",
    "load_sae",
    "load_saelens",
    "load_saes",
    "load_sparsify",
    "load_sparsify_run",
    "loss_recovered",
    "lr_for_width",
    "sae_class",
    "save_dictionary_learning",
    "save_gemma_scope",
    "save_sae",
    "save_saelens",
    "save_sparsify",
    "save_sparsify_run",
    "train",
]
