"""Interventions: one algebra for every edit of a model's activations, and ``steer()``.

    h' = h + Σ_k g_k(h) · B_kᵀ (f_k(h) − B_k h)        B_k: r_k × d, orthonormal rows

    >>> from steerlab import load_model
    >>> from steerlab.interventions import AddVector, steer
    >>> handle = load_model()
    >>> iv = AddVector(v, alpha=4.0, site="resid_post.12", positions="generation")
    >>> with steer(handle, iv):
    ...     out = handle.model.generate(**enc, max_new_tokens=32)

Modules: :mod:`~steerlab.interventions.algebra` (the base class, :class:`LowRankEdit`,
:class:`Compose`, the kind registry), :mod:`~steerlab.interventions.kinds` (AddVector, Ablate,
SetCoords, LoReFT), :mod:`~steerlab.interventions.components` (the saveable ``f`` and gate
parts), :mod:`~steerlab.interventions.hooks` (``steer()`` and position tracking across cached
and uncached generation), :mod:`~steerlab.interventions.loss` (:func:`lm_loss`: the language-
model loss with and without an edit). Position rules live in :mod:`steerlab.positions`, shared
with capture.

Every method package (probes, erasure, SAEs, steering) edits activations through this layer;
new kinds register themselves with :func:`register_intervention` and rebuild their saved position
rule with :func:`positions_from_config`.
"""

from steerlab.interventions.components import Affine, Constant, MLPGate, component
from steerlab.interventions.hooks import PositionTracker, Steering, apply_nnsight, steer
from steerlab.interventions.kinds import (
    KINDS,
    Ablate,
    AddVector,
    Compose,
    Intervention,
    LoReFT,
    LowRankEdit,
    SetCoords,
    load_intervention,
    positions_from_config,
    register_intervention,
)
from steerlab.interventions.loss import LMLoss, lm_loss, lm_losses
from steerlab.positions import (
    Positions,
    TokenView,
    as_positions,
    first_n,
    last_n,
    scored,
    select,
    spans,
    token_ids,
)

__all__ = [
    "KINDS",
    "Ablate",
    "AddVector",
    "Affine",
    "Compose",
    "Constant",
    "Intervention",
    "LMLoss",
    "LoReFT",
    "LowRankEdit",
    "MLPGate",
    "PositionTracker",
    "Positions",
    "SetCoords",
    "Steering",
    "TokenView",
    "apply_nnsight",
    "as_positions",
    "component",
    "first_n",
    "last_n",
    "lm_loss",
    "lm_losses",
    "load_intervention",
    "positions_from_config",
    "register_intervention",
    "scored",
    "select",
    "spans",
    "steer",
    "token_ids",
]
