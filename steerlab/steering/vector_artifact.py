"""The frozen steering-vector artifact: per-layer directions at one site kind, their norms and
provenance; applied as an :class:`~steerlab.interventions.kinds.AddVector`.

Fitted by :mod:`steerlab.steering.vectors` (which re-exports :class:`SteeringVector`); saved
as safetensors + JSON (:mod:`steerlab.artifacts`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.artifacts import FrozenArtifact, check_json, register
from steerlab.interventions.kinds import AddVector
from steerlab.models import ModelHandle
from steerlab.positions import Positions, as_positions
from steerlab.sites import SITE_KINDS, SiteError, parse_site, site_width
from steerlab.steering.pairs import _one_kind, read_examples

logger = logging.getLogger(__name__)

KIND = "steering_vector"


@register(KIND)
@dataclass(frozen=True, eq=False)
class SteeringVector(FrozenArtifact):
    """Per-layer steering directions at one site kind, with everything needed to reuse them.

    Applied as ``h' = h + α s_ℓ v̂_ℓ`` at layer ``ℓ`` (:meth:`intervention`, an
    :class:`~steerlab.interventions.kinds.AddVector`), with ``s_ℓ`` the recorded mean
    activation norm (or 1). See the module docstring for the methods (CAA / ActAdd mean
    difference, repeng PCA of differences).
    """

    directions: Float[Tensor, "layer d"]
    """One direction per layer (raw: a mean difference keeps its length)."""
    layers: tuple[int, ...]
    """The layer of each row, increasing."""
    site_kind: str = "resid_post"
    """Where in each layer (a :mod:`steerlab.sites` kind)."""
    norms: Float[Tensor, " layer"] | None = None
    """Mean ‖h‖ of the read tokens per layer, so α can be relative; None when unknown."""
    method: str = "mean_diff"
    """How the directions were made: mean_diff, pca_diff, direction, gguf."""
    positions: Positions = field(default_factory=lambda: as_positions("last"))
    """The read rule of the fit."""
    model_id: str = ""
    """The model the directions belong to."""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    """``ModelHandle.tokenizer_settings()`` at fit time."""
    fingerprint: str = ""
    """Fingerprint of the contrast data."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable info (counts, chat, model_type, ...)."""

    def __post_init__(self) -> None:
        D = self.directions
        if not isinstance(D, Tensor) or not D.is_floating_point() or D.ndim != 2:
            raise ValueError(
                f"directions must be a float [layer, d] tensor, got {getattr(D, 'shape', D)}"
            )
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if len(self.layers) != D.shape[0] or len(set(self.layers)) != len(self.layers):
            raise ValueError(
                f"layers {list(self.layers)} must be unique, one per row of {tuple(D.shape)}"
            )
        if list(self.layers) != sorted(self.layers) or min(self.layers, default=0) < 0:
            raise ValueError(f"layers must be non-negative and increasing, got {list(self.layers)}")
        if self.site_kind not in SITE_KINDS:
            raise SiteError(f"unknown site kind {self.site_kind!r}; one of {list(SITE_KINDS)}")
        if not torch.isfinite(D).all():
            raise ValueError("steering directions contain NaN or inf")
        zero = (torch.linalg.vector_norm(D.double(), dim=-1) == 0).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"the direction at layer(s) {[self.layers[i] for i in zero]} is zero")
        if self.norms is not None:
            n = self.norms
            if n.shape != (D.shape[0],) or not torch.isfinite(n).all() or not (n > 0).all():
                raise ValueError(f"norms must be {D.shape[0]} positive finite values")
        object.__setattr__(self, "positions", as_positions(self.positions))
        check_json(self.meta, "meta")
        check_json(self.tokenizer, "tokenizer")

    # --- access -----------------------------------------------------------------------------

    @property
    def d_model(self) -> int:
        """Width of the directions."""
        return self.directions.shape[1]

    @property
    def sites(self) -> list[str]:
        """The site of each row, e.g. ``["resid_post.4", "resid_post.8"]``."""
        return [f"{self.site_kind}.{layer}" for layer in self.layers]

    def __repr__(self) -> str:
        return (f"SteeringVector(method={self.method!r}, sites={self.sites}, d={self.d_model}, "
                f"model={self.model_id!r})")  # fmt: skip

    def index(self, layer: int | str) -> int:
        """Row of a layer number or a site name (``12`` or ``"resid_post.12"``)."""
        if isinstance(layer, str):
            site = parse_site(layer)
            if site.kind != self.site_kind:
                raise SiteError(
                    f"this vector lives at {self.site_kind}, not {site.kind} ({layer!r})"
                )
            layer = site.layer
        if layer not in self.layers:
            raise SiteError(f"no direction for layer {layer}; this vector has {self.sites}")
        return self.layers.index(int(layer))

    def direction(self, layer: int | str, unit: bool = True) -> Float[Tensor, " d"]:
        """The direction at ``layer`` (unit length by default)."""
        v = self.directions[self.index(layer)]
        return v / torch.linalg.vector_norm(v) if unit else v

    def __call__(self, h: Float[Tensor, "... d"], layer: int | str) -> Tensor:
        """Projection of activations on the unit direction of ``layer``: ``h · v̂``."""
        if h.shape[-1] != self.d_model:
            raise ValueError(f"activations have width {h.shape[-1]}, the vector {self.d_model}")
        return h @ self.direction(layer).to(h)

    def select(self, layers: Sequence[int | str]) -> SteeringVector:
        """A vector with only these layers."""
        idx = sorted({self.index(x) for x in layers})
        norms = None if self.norms is None else self.norms[idx]
        return replace(self, directions=self.directions[idx],
                       layers=tuple(self.layers[i] for i in idx), norms=norms)  # fmt: skip

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SteeringVector:
        """A copy on ``device`` and/or in ``dtype``."""
        norms = None if self.norms is None else self.norms.to(device=device, dtype=dtype)
        return replace(self, directions=self.directions.to(device=device, dtype=dtype), norms=norms)

    # --- application ------------------------------------------------------------------------

    def intervention(
        self,
        layer: int | str,
        alpha: float,
        positions: str | Positions = "all",
        *,
        relative: bool = True,
        normalize: bool = True,
    ) -> AddVector:
        """An :class:`AddVector` adding this direction at one layer.

        Args:
            layer: a layer number of this vector or its site name.
            alpha: strength; with ``relative`` a fraction of the layer's mean ‖h‖.
            positions: where to add it (default every token, prompt and generation).
            relative: scale by :attr:`norms` (needs recorded norms).
            normalize: add the unit direction (``False``: the raw direction, times α s).
        """
        i = self.index(layer)
        scale = None
        if relative:
            if self.norms is None:
                raise ValueError(
                    "this vector has no recorded activation norms (e.g. imported from a foreign "
                    "GGUF): pass relative=False (alpha in raw units) or add them with "
                    "vector.with_norms(handle, texts)"
                )
            scale = float(self.norms[i])
        iv = AddVector(self.directions[i], alpha, self.sites[i], positions, normalize, scale)
        iv.meta = {"vector": self.fingerprint, "method": self.method, "model_id": self.model_id}
        return iv

    def interventions(
        self, alpha: float, positions: str | Positions = "all", *, relative: bool = True,
        normalize: bool = True,
    ) -> list[AddVector]:  # fmt: skip
        """One :meth:`intervention` per layer (repeng / llama.cpp apply every layer)."""
        return [self.intervention(layer, alpha, positions, relative=relative, normalize=normalize)
                for layer in self.layers]  # fmt: skip

    def check(self, handle: ModelHandle) -> None:
        """Raise if this vector does not fit ``handle``: a layer it lacks or another width."""
        for s in self.sites:
            width = site_width(handle, parse_site(s, handle.n_layers))
            if width != self.d_model:
                raise ValueError(
                    f"steering vector has width {self.d_model}, but {handle.model_id}'s {s} has "
                    f"width {width}: it was fitted on another model ({self.model_id or '?'})"
                )
        if self.model_id and self.model_id != handle.model_id:
            logger.warning("steering vector fitted on %s, applied to %s", self.model_id,
                           handle.model_id)  # fmt: skip

    def with_norms(
        self, handle: ModelHandle, texts: Sequence[str], positions: str = "all"
    ) -> SteeringVector:
        """A copy whose :attr:`norms` are the mean ‖h‖ of ``texts`` at its sites."""
        self.check(handle)
        ex = read_examples(handle, texts, self.sites, positions=positions)
        w = ex.n_tokens.double()[:, None]  # token-weighted mean over texts
        norms = ((ex.norms * w).sum(0) / w.sum()).float()
        return replace(self, norms=norms.to(self.directions.device))

    # --- constructors -----------------------------------------------------------------------

    @classmethod
    def from_direction(
        cls,
        direction: Any,
        sites: str | Sequence[str],
        *,
        norms: Tensor | Sequence[float] | None = None,
        positions: str | Positions = "all",
        model_id: str = "",
        meta: dict[str, Any] | None = None,
    ) -> SteeringVector:
        """Wrap a given direction: a ``[d]`` / ``[layer, d]`` tensor, a rank-1 Subspace, or a
        probe with ``.direction()`` (e.g. :class:`steerlab.probes.linear.LinearProbe`).

        A ``[d]`` direction is used at every site in ``sites``.
        """
        from steerlab.subspace import Subspace

        if isinstance(direction, Subspace):
            if direction.k != 1:
                raise ValueError(f"a steering vector needs a rank-1 subspace, got k={direction.k}; "
                                 "pass Subspace.basis[:, i] for one of its directions")  # fmt: skip
            direction = direction.basis[:, 0]
        elif not isinstance(direction, Tensor) and callable(getattr(direction, "direction", None)):
            direction = direction.direction()
        if not isinstance(direction, Tensor):
            raise TypeError(f"expected a tensor, Subspace or probe, got {type(direction).__name__}")
        site_list = _one_kind(sites, None)
        D = direction.detach().float()
        D = D[None].expand(len(site_list), -1).clone() if D.ndim == 1 else D
        if D.ndim != 2 or D.shape[0] != len(site_list):
            raise ValueError(f"{len(site_list)} sites but directions of shape {tuple(D.shape)}")
        n = None if norms is None else torch.as_tensor(norms, dtype=torch.float32).reshape(-1)
        return cls(D, tuple(s.layer for s in site_list), site_list[0].kind, n, "direction",
                   as_positions(positions), model_id, {}, "", dict(meta or {}))  # fmt: skip

    # --- disk -------------------------------------------------------------------------------

    CODECS = {"layers": (list, tuple), "positions": (Positions.to_config, Positions.from_config)}

    def artifact_header(self) -> dict[str, Any]:
        """Header of ``save(dir)``: the width, the sites, the model (see
        :class:`~steerlab.artifacts.FrozenArtifact`, which writes ``cfg.json`` +
        ``steering_vector.safetensors``)."""
        tok = self.meta.get("tokenizer_hash")
        return {"d_in": self.d_model, "site": ",".join(self.sites), "model_id": self.model_id,
                "tokenizer_hash": tok if isinstance(tok, str) else None}  # fmt: skip

    def to_config(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON (embedded in GGUF exports)."""
        return {
            "d_in": self.d_model,
            "layers": list(self.layers),
            "site_kind": self.site_kind,
            "method": self.method,
            "positions": self.positions.to_config(),
            "model_id": self.model_id,
            "tokenizer": self.tokenizer,
            "fingerprint": self.fingerprint,
            "has_norms": self.norms is not None,
            "meta": self.meta,
        }

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], directions: Tensor, norms: Tensor | None
    ) -> SteeringVector:
        """Inverse of :meth:`to_config` with the tensors (configs written before the width was
        called ``d_in`` spell it ``d_model``)."""
        width = cfg.get("d_in", cfg.get("d_model"))
        if tuple(directions.shape) != (len(cfg["layers"]), width):
            raise ValueError(f"directions {tuple(directions.shape)} disagree with the config "
                             f"({len(cfg['layers'])} layers × {width})")  # fmt: skip
        return cls(directions, tuple(cfg["layers"]), cfg["site_kind"], norms, cfg["method"],
                   Positions.from_config(cfg["positions"]), cfg["model_id"], cfg["tokenizer"],
                   cfg["fingerprint"], cfg["meta"])  # fmt: skip


# --------------------------------------------------------------------------- fitting
