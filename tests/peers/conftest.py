"""Cross-checks against the peer libraries themselves, in the side environment of
``scripts/peers.sh`` (``make test-peers``). Every test here carries the ``peer`` marker, and
the peers are imported inside the tests, so the default run collects and deselects them."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def repeng():
    """repeng 0.4.0 (the newest release) annotates with ``np.float_``, which NumPy 2 removed;
    restore the alias (``np.float64``, what it always was) so repeng imports."""
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    import repeng

    return repeng


def randomize_(module, scale: float = 0.3, seed: int = 0) -> None:
    """Add Gaussian noise to every floating parameter and buffer (random weights, real layout)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()):
            t.add_(scale * torch.randn(t.shape, generator=g, dtype=t.dtype))
