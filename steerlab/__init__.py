"""steerlab: a workbench for mechanistic interpretability and activation steering.

The library is side-effect free: importing it loads no model and prints nothing. The main
entry points are re-exported lazily so that ``import steerlab`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "steerlab.models",
    "ModelHandle": "steerlab.models",
    "Site": "steerlab.sites",
    "parse_site": "steerlab.sites",
    "Subspace": "steerlab.subspace",
    "ActivationStore": "steerlab.capture.store",
    "steer": "steerlab.interventions",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steerlab' has no attribute {name!r}")
