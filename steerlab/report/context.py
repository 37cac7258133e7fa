"""What every stage of the report shares: the settings, the model (loaded once, on first use),
the activation store and the results of earlier stages."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab.capture.store import ActivationStore
from steerlab.config import check_nonnegative, check_types, require
from steerlab.models import DEFAULT_MODEL, ModelHandle, load_model, load_tokenizer
from steerlab.report.stages import Progress, StageResult

__all__ = ["STORE_DIR", "Context", "ReportConfig"]

STORE_DIR = "store"
"""The activation store's folder under the report's output folder."""


@dataclass
class ReportConfig:
    """Settings every section of the report shares."""

    model: str = DEFAULT_MODEL
    """Embedded model name, local Hugging Face model directory, or hub id."""
    device: str | None = None
    """cpu, cuda, ... (default: cuda when available, else cpu)."""
    layers: tuple[int, ...] = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29)
    """Layers whose residual stream (resid_post) is captured and probed."""
    atlas_layer: int = 9
    """The one layer where every method's subspace is found and compared (one of --layers):
    the SAE and the steering vector live here too."""
    seed: int = 0
    """Seed of every sample, split and initialisation."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self, "layers", len(self.layers) > 0 and all(L >= 0 for L in self.layers),
                "layer numbers >= 0")  # fmt: skip
        require(self, "layers", len(set(self.layers)) == len(self.layers), "distinct layers")
        require(self, "atlas_layer", self.atlas_layer in self.layers,
                f"one of --layers {list(self.layers)}")  # fmt: skip
        check_nonnegative(self, "seed")

    @property
    def sorted_layers(self) -> list[int]:
        """The layers in increasing order."""
        return sorted(self.layers)


class Context:
    """The shared state of one report run.

    Args:
        out: the output folder.
        config: the shared settings.
        load: how to load the model (default :func:`steerlab.models.load_model`); the CLI
            passes a loader that fails in one line for an unknown model.
        tokenizer_loader: how to load the tokenizer alone (default
            :func:`steerlab.models.load_tokenizer`).
        handle: an already loaded model (tests pass a tiny one).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        config: ReportConfig,
        *,
        load: Callable[[str, str | None], ModelHandle] | None = None,
        tokenizer_loader: Callable[[str], Any] | None = None,
        handle: ModelHandle | None = None,
    ) -> None:
        self.out = Path(out)
        self.config = config
        self._load = load or (lambda name, device: load_model(name, device=device))
        self._load_tokenizer = tokenizer_loader or load_tokenizer
        self._handle = handle
        self._tokenizer: Any = None
        self.results: dict[str, StageResult] = {}
        self.progress: Progress = _no_progress

    @property
    def handle(self) -> ModelHandle:
        """The model, loaded on first use (a rerun whose stages are all saved never loads it)."""
        if self._handle is None:
            self._handle = self._load(self.config.model, self.config.device)
        return self._handle

    @property
    def model_loaded(self) -> bool:
        return self._handle is not None

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (the model's when loaded; else loaded alone, without weights)."""
        if self._handle is not None:
            return self._handle.tokenizer
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer(self.config.model)
        return self._tokenizer

    @property
    def store_path(self) -> Path:
        return self.out / STORE_DIR

    def store(self) -> ActivationStore:
        """The captured activation store (after the capture stage)."""
        return ActivationStore(self.store_path)

    def result(self, name: str) -> StageResult:
        """The result of an earlier stage."""
        if name not in self.results:
            raise KeyError(f"stage {name!r} has not run; the pipeline runs it before its users")
        return self.results[name]

    def counter(self, phase: str, total: int) -> Callable[[int], None]:
        """A library progress callback (``n`` more done) reporting ``phase`` out of ``total``."""
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            self.progress(phase, min(done, total), total)

        self.progress(phase, 0, total)
        return step

    def site(self, layer: int, kind: str = "resid_post") -> str:
        return f"{kind}.{layer}"

    def layer_sites(self, layers: Sequence[int] | None = None) -> list[str]:
        return [self.site(L) for L in (layers if layers is not None else self.config.sorted_layers)]


def _no_progress(phase: str, done: int, total: int) -> None:
    del phase, done, total
