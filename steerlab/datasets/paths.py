"""Where the curated data sets live: ``data/`` of the checkout, or ``$STEERLAB_DATA``.

The curated files (``data/steering/*.jsonl``, ``data/numeric/*.csv``, ``data/erasure/*.jsonl``)
sit in the repository's top-level ``data/`` folder, beside the package. They are found, in
order, at:

1. ``$STEERLAB_DATA`` (an explicit setting; it must exist);
2. ``data/`` next to the ``steerlab`` package (a checkout or an editable install);
3. ``<sys.prefix>/share/steerlab/data`` (a wheel installs them there as data files).

Anything else is a :class:`FileNotFoundError` that names ``STEERLAB_DATA``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "STEERLAB_DATA"


def _candidates() -> list[Path]:
    here = Path(__file__).resolve().parents[2] / "data"
    return [here, Path(sys.prefix) / "share" / "steerlab" / "data"]


def data_dir(sub: str | None = None) -> Path:
    """The curated data folder (or its sub-folder ``sub``, e.g. ``"steering"``).

    Raises:
        FileNotFoundError: naming ``$STEERLAB_DATA`` when no data folder can be found.
    """
    env = os.environ.get(ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"${ENV}={env} is not a directory; point it at steerlab's data/"
            )
    else:
        root = next((p for p in _candidates() if p.is_dir()), None)
        if root is None:
            tried = ", ".join(str(p) for p in _candidates())
            raise FileNotFoundError(
                f"steerlab's curated data folder was not found (tried {tried}); set ${ENV} to the "
                "data/ folder of a steerlab checkout"
            )
    out = root / sub if sub else root
    if not out.is_dir():
        raise FileNotFoundError(
            f"{out} does not exist; is ${ENV} or the checkout's data/ complete?"
        )
    return out
