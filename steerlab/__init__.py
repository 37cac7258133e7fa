"""steerlab: a workbench for mechanistic interpretability and activation steering.

The library is side-effect free: importing it loads no model and prints nothing. The main
entry points are re-exported lazily so that ``import steerlab`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from steerlab.capture.store import ActivationStore
    from steerlab.interventions import steer
    from steerlab.models import ModelHandle, load_model
    from steerlab.sites import Site, parse_site
    from steerlab.subspace import Subspace

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

# spelled out (not ``[*_LAZY]``) so that type checkers can read it; tests/test_package.py
# checks that it names exactly the lazy names
__all__ = [
    "ActivationStore",
    "ModelHandle",
    "Site",
    "Subspace",
    "__version__",
    "load_model",
    "parse_site",
    "steer",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steerlab' has no attribute {name!r}")
