"""Steering: the intervention algebra, position rules, and hooks that apply them.

    >>> from steerlab import load_model
    >>> from steerlab.steering import AddVector, steer
    >>> handle = load_model()
    >>> iv = AddVector(v, alpha=4.0, site="resid_post.12", positions="generation")
    >>> with steer(handle, iv):
    ...     out = handle.model.generate(**enc, max_new_tokens=32)

See :mod:`steerlab.steering.interventions` (``h' = h + Σ_k g_k(h)·B_kᵀ(f_k(h) − B_k h)``),
:mod:`steerlab.steering.positions` (which tokens) and :mod:`steerlab.steering.hooks` (how the
position of every token is tracked across cached and uncached generation).
"""

from steerlab.steering.components import Affine, Constant, MLPGate, component
from steerlab.steering.hooks import PositionTracker, Steering, apply_nnsight, steer
from steerlab.steering.interventions import (
    KINDS,
    Ablate,
    AddVector,
    Compose,
    Intervention,
    LoReFT,
    LowRankEdit,
    SetCoords,
    load_intervention,
)
from steerlab.steering.msrs import MSRS, MSRSLoss, init_bases
from steerlab.steering.positions import (
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
    "LoReFT",
    "LowRankEdit",
    "MLPGate",
    "MSRS",
    "MSRSLoss",
    "PositionTracker",
    "Positions",
    "SetCoords",
    "Steering",
    "TokenView",
    "apply_nnsight",
    "as_positions",
    "component",
    "first_n",
    "init_bases",
    "last_n",
    "load_intervention",
    "scored",
    "select",
    "spans",
    "steer",
    "token_ids",
]
