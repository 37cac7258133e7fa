"""The intervention algebra: every steering and editing method as one module form.

    h' = h + Σ_k g_k(h) · B_kᵀ (f_k(h) − B_k h)        B_k: r_k × d, orthonormal rows

=================  ===============================  =====================================
intervention       f(h)                             paper
=================  ===============================  =====================================
:class:`AddVector`  ``B h + α``  (B = v̂ᵀ)           ActAdd (Turner et al. 2023), CAA
                                                    (Rimsky et al. 2024)
:class:`Ablate`     ``0`` or ``B μ``                 directional ablation (Arditi et al. 2024)
:class:`SetCoords`  ``c``                            the "knob" (Minder et al. 2025), PLS edits
:class:`LoReFT`     ``W h + b``                      ReFT (Wu et al. 2024)
:class:`LowRankEdit` any ``f``, gate ``g``            MSRS gated blocks build on it
=================  ===============================  =====================================

Each intervention is an ``nn.Module`` bound to a *site* (``"resid_post.6"``) and a position rule
(:mod:`steerlab.steering.positions`). ``forward(h, mask)`` edits the masked positions of
``h [batch, pos, d]`` and leaves every other position bit-for-bit unchanged. :class:`Compose`
sums several interventions, possibly at several sites, exactly as the Σ above: every term sees
the same ``h``. (Interventions listed separately in :func:`steerlab.steering.steer` apply one
after another instead.)

Artifacts: ``save(dir)`` writes ``cfg.json`` (kind, d_in, site, positions, config) and
``<kind>.safetensors`` (the module's state dict); :func:`load_intervention` reads any kind.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from steerlab.artifacts import load_artifact, register, save_artifact
from steerlab.sites import parse_site, site_width
from steerlab.steering.components import Affine, Constant, component_config, from_component_config
from steerlab.steering.positions import Positions, TokenView, _rows, as_positions
from steerlab.subspace import ORTHO_CAP, ORTHO_FACTOR, Subspace

logger = logging.getLogger(__name__)

KINDS: dict[str, type[Intervention]] = {}


def _kind(name: str):
    """Register an intervention class under ``name`` here and in :mod:`steerlab.artifacts`."""

    def deco(cls):
        KINDS[name] = cls
        return register(name)(cls)

    return deco


def _finite(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got {type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf")
    return x


def orthonormal_rows(B: Any, what: str = "basis") -> Float[Tensor, "r d"]:
    """Check (and return) ``B`` as ``[r, d]`` rows with ``B Bᵀ = I``; accepts a Subspace."""
    B = _finite(_rows(B), what)
    if B.ndim != 2 or not 1 <= B.shape[0] <= B.shape[1]:
        raise ValueError(f"{what} must be [r, d] rows with 1 <= r <= d, got {tuple(B.shape)}")
    r, d = B.shape
    err = (B.double() @ B.double().T - torch.eye(r, dtype=torch.float64, device=B.device)).abs()
    tol = min(ORTHO_FACTOR * torch.finfo(B.dtype).eps * d, ORTHO_CAP)
    if err.max().item() > tol:
        raise ValueError(
            f"{what} rows are not orthonormal: max|B Bᵀ − I| = {err.max().item():.3g} > {tol:.3g}; "
            "build it with Subspace.from_vectors(...)"
        )
    return B


class Intervention(nn.Module):
    """Base class: an edit of the activations at one site, at the positions of a rule.

    Subclasses implement :meth:`edit` (the edit at every position) and :meth:`to_config`.
    """

    KIND: ClassVar[str] = ""

    def __init__(self, site: str, positions: str | Positions, d_in: int) -> None:
        super().__init__()
        self.site = parse_site(site).name  # syntax check; the layer range is checked per model
        self.positions = as_positions(positions)
        self.d_in = int(d_in)
        if self.positions.basis is not None:
            pb = self.positions.basis
            if pb.shape[-1] != self.d_in:
                raise ValueError(f"scoring basis has width {pb.shape[-1]}, expected {self.d_in}")
            self.register_buffer("score_basis", pb.detach().clone())
        self.meta: dict[str, Any] = {}

    # --- the edit -------------------------------------------------------------------------

    def edit(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The edited activations ``h'`` at every position."""
        raise NotImplementedError

    def forward(
        self, h: Float[Tensor, "batch pos d"], mask: Bool[Tensor, "batch pos"] | None = None
    ) -> Float[Tensor, "batch pos d"]:
        """Edit ``h`` at the positions where ``mask`` is True (all if None)."""
        if h.shape[-1] != self.d_in:
            raise ValueError(f"{self.site}: activations have width {h.shape[-1]}, not {self.d_in}")
        if mask is None:
            return self.edit(h)
        if not bool(mask.any()):
            return h
        return torch.where(mask[..., None], self.edit(h), h)

    def scoring_basis(self) -> Tensor | None:
        """Rows used by a ``scored`` rule that carries no basis of its own."""
        return None

    def apply_at(
        self,
        site: str,
        h: Float[Tensor, "batch pos d"],
        view: TokenView,
        rows: Bool[Tensor, " batch"] | None = None,
    ) -> Float[Tensor, "batch pos d"]:
        """What a hook at ``site`` does: select positions with the rule, then edit them.

        Args:
            site: the site being run (interventions at other sites return ``h``).
            h: the site's activations for this call.
            view: the call's tokens (ranks, prompt lengths).
            rows: restrict the edit to these examples (per-example steering).
        """
        if site != self.site:
            return h
        own = getattr(self, "score_basis", None)
        mask = self.positions.mask(view, h, own if own is not None else self.scoring_basis())
        if rows is not None:
            mask = mask & rows[:, None]
        return self(h, mask)

    def sites(self) -> list[str]:
        """Site names this intervention edits."""
        return [self.site]

    def leaves(self) -> list[Intervention]:
        """The non-composite interventions inside (itself for a leaf)."""
        return [self]

    def check(self, handle: Any) -> None:
        """Raise SiteError / ValueError if this intervention does not fit ``handle``'s model."""
        for leaf in self.leaves():
            site = parse_site(leaf.site, handle.n_layers)
            width = site_width(handle, site)
            if leaf.d_in != width:
                raise ValueError(
                    f"{leaf.KIND} at {site.name} has width {leaf.d_in}, but {handle.model_id}'s "
                    f"{site.name} has width {width}"
                )

    # --- artifacts --------------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """JSON config: with the state dict this rebuilds the intervention."""
        return {
            "kind": self.KIND,
            "d_in": self.d_in,
            "site": self.site,
            "positions": self.positions.to_config(),
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``cfg.json`` + ``<kind>.safetensors`` into directory ``path``."""
        cfg = self.to_config()
        cfg.pop("kind")
        return save_artifact(path, self.KIND, cfg, dict(self.state_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Intervention:
        """Read an intervention saved by :meth:`save` (of this class or, from the base, any)."""
        cfg, tensors = load_artifact(path, None if cls is Intervention else cls.KIND, device)
        return from_saved(cfg, tensors)

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        raise NotImplementedError

    def _finish_load(self, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        self.meta = dict(cfg.get("meta", {}))
        self.load_state_dict(tensors, strict=True)
        return self

    def extra_repr(self) -> str:
        return f"site={self.site!r}, positions={str(self.positions)!r}, d_in={self.d_in}"


def _positions_from(cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Positions:
    return Positions.from_config(cfg["positions"], tensors.get("score_basis"))


def from_saved(cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
    """Rebuild an intervention from its config and state dict (the registry lookup)."""
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown intervention kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind]._from_saved(cfg, tensors)


def load_intervention(path: str | os.PathLike, device: str | torch.device = "cpu") -> Intervention:
    """Load any intervention artifact directory."""
    return Intervention.load(path, device)


@_kind("low_rank_edit")
class LowRankEdit(Intervention):
    """The general term ``h' = h + g(h) · Bᵀ (f(h) − B h)``, ``B: r × d`` orthonormal rows.

    Args:
        B: ``[r, d]`` rows (or a Subspace, or one ``[d]`` direction).
        f: target coordinates ``[..., d] → [..., r]``; None means ``f = 0`` (erase ``B``).
        gate: ``[..., d] → [..., r]`` or ``[..., 1]``, a float, or None (``g = 1``).
        site: where to apply it.
        positions: the position rule.
    """

    def __init__(
        self,
        B: Any,
        f: nn.Module | None = None,
        gate: nn.Module | float | None = None,
        site: str = "resid_post.0",
        positions: str | Positions = "all",
    ) -> None:
        B = orthonormal_rows(B, "B")
        super().__init__(site, positions, B.shape[1])
        self.register_buffer("B", B.detach().clone())
        self.f = f
        self.gate = Constant([float(gate)]) if isinstance(gate, (int, float)) else gate

    @property
    def rank(self) -> int:
        return self.basis().shape[0]

    def basis(self) -> Float[Tensor, "r d"]:
        """The rows ``B``."""
        return self.B

    def scoring_basis(self) -> Tensor:
        return self.basis()

    def target(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... r"]:
        """``f(h)``."""
        if self.f is None:
            return h.new_zeros(*h.shape[:-1], self.rank)
        return self.f(h)

    def gate_value(self, h: Float[Tensor, "... d"]) -> Tensor | None:
        """``g(h)``, or None for ``g = 1``."""
        return None if self.gate is None else self.gate(h)

    def edit(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        B = self.basis()
        x = h.to(torch.promote_types(h.dtype, B.dtype))  # compute in the finer of the dtypes
        B = B.to(x)
        delta = self.target(x).to(x) - x @ B.T
        g = self.gate_value(x)
        if g is not None:
            delta = g.to(x) * delta
        return h + (delta @ B).type_as(h)

    def to_config(self) -> dict[str, Any]:
        return {
            **super().to_config(),
            "rank": self.rank,
            "f": component_config(self.f, "f"),
            "gate": component_config(self.gate, "gate"),
        }

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        pos = _positions_from(cfg, tensors)
        obj = cls(
            tensors["B"],
            from_component_config(cfg["f"]),
            from_component_config(cfg["gate"]),
            cfg["site"],
            pos,
        )
        return obj._finish_load(cfg, tensors)


@_kind("add_vector")
class AddVector(LowRankEdit):
    """Add a steering vector: ``h' = h + α s v̂`` (ActAdd, Turner et al. 2023; CAA, Rimsky et al. 2024).

    In the algebra: ``B = v̂ᵀ``, ``f(h) = B h + α s``, ``g = 1``; computed directly as the sum.
    ``s`` is ``relative_to`` (e.g. the mean ‖h‖ at the site, so ``α`` is a fraction of the
    typical activation norm) or 1. With ``normalize=False`` the raw ``v`` is added: ``h + α s v``.

    Args:
        v: ``[d]`` direction.
        alpha: strength; a plain attribute, so a sweep can set ``iv.alpha``.
        site: where to add it.
        positions: the position rule (default every token, prompt and generation).
        normalize: use ``v / ‖v‖``.
        relative_to: scale ``s``; must be positive and finite.
    """

    def __init__(
        self,
        v: Float[Tensor, " d"],
        alpha: float = 1.0,
        site: str = "resid_post.0",
        positions: str | Positions = "all",
        normalize: bool = True,
        relative_to: float | None = None,
    ) -> None:
        v = _finite(v, "steering vector")
        if v.ndim != 1:
            raise ValueError(f"steering vector must be 1-D [d], got shape {tuple(v.shape)}")
        norm = torch.linalg.vector_norm(v.double()).item()
        if norm == 0:
            raise ValueError("steering vector is zero")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        if relative_to is not None and not (math.isfinite(relative_to) and relative_to > 0):
            raise ValueError(f"relative_to must be a positive norm, got {relative_to}")
        super().__init__((v / norm)[None], None, None, site, positions)
        self.register_buffer("vector", v.detach().clone())
        self.alpha = float(alpha)
        self.normalize = normalize
        self.relative_to = relative_to
        self._norm = norm

    def effective(self) -> Float[Tensor, " d"]:
        """The vector actually added: ``α s v̂`` (or ``α s v``)."""
        scale = self.alpha * (self.relative_to or 1.0)
        return scale * (self.B[0] if self.normalize else self.vector)

    def target(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... 1"]:
        # the algebra's f(h) = B h + α s ‖v‖^[not normalize]; edit() takes the direct path
        step = self.alpha * (self.relative_to or 1.0) * (1.0 if self.normalize else self._norm)
        return h @ self.B.to(h).T + step

    def edit(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return h + self.effective().to(h)

    def to_config(self) -> dict[str, Any]:
        cfg = Intervention.to_config(self)
        return {
            **cfg,
            "alpha": self.alpha,
            "normalize": self.normalize,
            "relative_to": self.relative_to,
        }

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(
            tensors["vector"], cfg["alpha"], cfg["site"], _positions_from(cfg, tensors),
            cfg["normalize"], cfg["relative_to"],
        )  # fmt: skip
        return obj._finish_load(cfg, tensors)


@_kind("set_coords")
class SetCoords(LowRankEdit):
    """Set the coordinates in a subspace: ``h' = h + Bᵀ (c_abs − B h)`` (the "knob").

    Minder et al. 2025 ("Controllable context sensitivity and the knob behind it") switch a
    behaviour by setting one coordinate; PLS edits set a predicted quantity. With a
    :class:`~steerlab.subspace.Subspace` of origin ``o``, ``coords`` are relative to it, as
    :meth:`Subspace.project` reports them: afterwards ``subspace.project(h') == coords``.

    Args:
        subspace: a Subspace, ``[r, d]`` orthonormal rows, or one ``[d]`` unit direction.
        coords: ``[r]`` target coordinates (a float for r = 1).
        site: where to apply it.
        positions: the position rule.
    """

    def __init__(
        self,
        subspace: Any,
        coords: Tensor | float | list[float],
        site: str = "resid_post.0",
        positions: str | Positions = "all",
    ) -> None:
        B = orthonormal_rows(subspace, "subspace")
        c = _finite(torch.as_tensor(coords, dtype=B.dtype, device=B.device).reshape(-1), "coords")
        if c.shape != (B.shape[0],):
            raise ValueError(f"coords has {c.numel()} entries for a rank-{B.shape[0]} subspace")
        if isinstance(subspace, Subspace):
            c = c + B @ subspace.origin.to(B)  # coordinates relative to the origin
        super().__init__(B, None, None, site, positions)
        self.register_buffer("target_coords", c.detach().clone())

    def target(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... r"]:
        return self.target_coords.to(h).expand(*h.shape[:-1], self.rank)

    def to_config(self) -> dict[str, Any]:
        return {**Intervention.to_config(self), "rank": self.rank}

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(
            tensors["B"], tensors["target_coords"], cfg["site"], _positions_from(cfg, tensors)
        )
        return obj._finish_load(cfg, tensors)


@_kind("ablate")
class Ablate(SetCoords):
    """Erase a subspace: ``h' = h − Bᵀ (B h − B μ)`` with ``μ = 0`` or a mean.

    Directional ablation (Arditi et al. 2024, "Refusal is mediated by a single direction") with
    ``to="zero"``; mean ablation with ``to="mean"`` (the Subspace's origin) or ``to=μ``.
    Idempotent: ablating twice equals ablating once.

    Args:
        subspace: a Subspace, ``[r, d]`` orthonormal rows, or one ``[d]`` unit direction.
        to: ``"zero"``, ``"mean"`` (needs a Subspace; uses its origin) or a ``[d]`` mean.
        site: where to apply it.
        positions: the position rule.
    """

    def __init__(
        self,
        subspace: Any,
        to: Literal["zero", "mean"] | Tensor = "zero",
        site: str = "resid_post.0",
        positions: str | Positions = "all",
    ) -> None:
        B = orthonormal_rows(subspace, "subspace")
        if isinstance(to, Tensor):
            mode, mu = "tensor", _finite(to, "mean").to(B)
            if mu.shape != (B.shape[1],):
                raise ValueError(f"mean has shape {tuple(mu.shape)}, expected ({B.shape[1]},)")
        elif to == "zero":
            mode, mu = "zero", torch.zeros_like(B[0])
        elif to == "mean":
            if not isinstance(subspace, Subspace):
                raise ValueError('to="mean" needs a Subspace (its origin is the mean); or pass μ')
            mode, mu = "mean", subspace.origin.to(B)
        else:
            raise ValueError(f"to must be 'zero', 'mean' or a tensor, got {to!r}")
        super().__init__(B, B @ mu, site, positions)
        self.to_mode = mode

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "to": self.to_mode}

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(tensors["B"], "zero", cfg["site"], _positions_from(cfg, tensors))
        obj.to_mode = cfg["to"]
        return obj._finish_load(cfg, tensors)  # restores target_coords = B μ


@_kind("loreft")
class LoReFT(LowRankEdit):
    """Low-rank representation finetuning: ``h' = h + Rᵀ (W h + b − R h)`` (Wu et al. 2024, ReFT).

    ``R: rank × d`` has orthonormal rows through ``torch.nn.utils.parametrizations.orthogonal``
    (so it stays orthonormal while training); ``W, b`` are an ordinary linear layer. As in
    pyreft, ``R`` starts random-orthonormal and ``W`` at PyTorch's default init, so a fresh
    LoReFT is *not* the identity: train it (or zero it) before use.

    Args:
        d: activation width at the site.
        rank: r, the number of rows of R.
        site: where to apply it.
        positions: the position rule.
    """

    def __init__(
        self, d: int, rank: int, site: str = "resid_post.0", positions: str | Positions = "all"
    ) -> None:
        if not 1 <= rank <= d:
            raise ValueError(f"rank must be in [1, d={d}], got {rank}")
        Intervention.__init__(self, site, positions, d)
        self.R = nn.utils.parametrizations.orthogonal(nn.Linear(d, rank, bias=False))
        self.f = Affine(d, rank)
        self.gate = None

    def basis(self) -> Float[Tensor, "r d"]:
        return self.R.weight

    def to_config(self) -> dict[str, Any]:
        return {**Intervention.to_config(self), "rank": self.rank}

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(cfg["d_in"], cfg["rank"], cfg["site"], _positions_from(cfg, tensors))
        return obj._finish_load(cfg, tensors)


@_kind("compose")
class Compose(Intervention):
    """Several interventions summed as in the algebra: ``h' = h + Σ_k m_k ⊙ (edit_k(h) − h)``.

    ``m_k`` is member k's position mask; members may sit at different sites (each site's hook
    sums the members there). For orthogonal subspaces the sum equals applying them in turn.

    Args:
        members: the interventions (a Compose may nest).
    """

    def __init__(self, members: list[Intervention]) -> None:
        members = list(members)
        if not members or not all(isinstance(m, Intervention) for m in members):
            raise ValueError("Compose needs a non-empty list of Intervention modules")
        nn.Module.__init__(self)
        self.members = nn.ModuleList(members)
        self.meta = {}
        self.site = ",".join(self.sites())
        self.positions = Positions()
        self.d_in = members[0].d_in

    def sites(self) -> list[str]:
        out: list[str] = []
        for m in self.members:
            out += [s for s in m.sites() if s not in out]
        return out

    def leaves(self) -> list[Intervention]:
        return [leaf for m in self.members for leaf in m.leaves()]

    def edit(self, h: Tensor) -> Tensor:
        del h
        raise TypeError("Compose has no single edit; apply it through steer() or apply_at()")

    def apply_at(self, site: str, h: Tensor, view: TokenView, rows: Tensor | None = None) -> Tensor:
        out = h
        for m in self.members:
            if site in m.sites():
                out = out + (m.apply_at(site, h, view, rows) - h)
        return out

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "members": [m.to_config() for m in self.members],
            "meta": self.meta,
        }

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        members = []
        for i, mcfg in enumerate(cfg["members"]):
            pre = f"members.{i}."
            sub = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
            members.append(from_saved(mcfg, sub))
        obj = cls(members)
        obj.meta = dict(cfg.get("meta", {}))
        return obj
