"""The module form shared by every intervention, and its composition.

    h' = h + Σ_k g_k(h) · B_kᵀ (f_k(h) − B_k h)        B_k: r_k × d, orthonormal rows

:class:`Intervention` is the base ``nn.Module``: bound to a *site* (``"resid_post.6"``) and a
position rule (:mod:`steerlab.positions`), its ``forward(h, mask)`` edits the masked
positions of ``h [batch, pos, d]`` and leaves every other position bit-for-bit unchanged.
:class:`LowRankEdit` is one term of the sum with any ``f`` and gate ``g``;
:class:`Compose` is the sum (every term sees the same ``h``). The ready-made terms (add a vector,
ablate, set coordinates, LoReFT) live in :mod:`steerlab.interventions.kinds`.

Artifacts: ``save(dir)`` writes ``cfg.json`` (the :mod:`steerlab.artifacts` header, positions,
config) and ``<kind>.safetensors`` (the module's state dict). New kinds register with
:func:`register_intervention`, which puts them in the shared kind registry; their
``_from_saved`` rebuilds the position rule with :func:`positions_from_config`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from steerlab.artifacts import kind_class, load_artifact, register, save_artifact
from steerlab.checks import check_finite
from steerlab.interventions.components import Constant, component_config, from_component_config
from steerlab.models import ModelHandle
from steerlab.positions import Positions, TokenView, _rows, as_positions
from steerlab.sites import parse_site, site_width
from steerlab.subspace import ORTHO_CAP, ORTHO_FACTOR
from steerlab.validation import reading

logger = logging.getLogger(__name__)

#: kind (as in cfg.json) -> class, for the intervention kinds imported so far (filled by
#: :func:`register_intervention`; :func:`from_saved` resolves the others lazily).
KINDS: dict[str, type[Intervention]] = {}

IvClass = TypeVar("IvClass", bound="type[Intervention]")


def register_intervention(name: str) -> Callable[[IvClass], IvClass]:
    """Class decorator: register an :class:`Intervention` subclass as artifact kind ``name``.

    The class implements :meth:`Intervention.edit`, :meth:`Intervention.to_config` and
    ``classmethod _from_saved(cfg, tensors)``; then ``iv.save(dir)``,
    :func:`~steerlab.interventions.kinds.load_intervention` and :func:`steerlab.artifacts.load`
    work for it, also inside a saved :class:`Compose`. A kind shipped with steerlab must also
    be listed in :data:`steerlab.artifacts.KIND_TABLE` (so it loads in a fresh process).

        >>> @register_intervention("my_edit")
        ... class MyEdit(Intervention): ...
    """

    def deco(cls: IvClass) -> IvClass:
        if not (isinstance(cls, type) and issubclass(cls, Intervention)):
            raise TypeError(f"register_intervention needs an Intervention subclass, got {cls!r}")
        register(name)(cls)
        KINDS[name] = cls
        return cls

    return deco


def orthonormal_rows(B: Any, what: str = "basis") -> Float[Tensor, "r d"]:
    """Check (and return) ``B`` as ``[r, d]`` rows with ``B Bᵀ = I``.

    Accepts a Subspace, ``[r, d]`` orthonormal rows, or one ``[d]`` direction (normalised here).
    """
    if isinstance(B, Tensor) and B.ndim == 1:
        norm = torch.linalg.vector_norm(check_finite(B, what, floating=True))
        if norm == 0:
            raise ValueError(f"{what} is a zero vector")
        B = B / norm
    B = check_finite(_rows(B), what, floating=True)
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

    def check(self, handle: ModelHandle) -> None:
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
        """Write ``cfg.json`` + ``<kind>.safetensors`` into directory ``path`` (atomically).

        The header's ``model_id`` and ``tokenizer_hash`` come from :attr:`meta` when it
        records them.
        """
        cfg = self.to_config()
        cfg.pop("kind")
        model_id, tok = self.meta.get("model_id"), self.meta.get("tokenizer_hash")
        return save_artifact(
            path, self.KIND, cfg, dict(self.state_dict()),
            d_in=self.d_in, site=self.site,
            model_id=model_id if isinstance(model_id, str) else None,
            tokenizer_hash=tok if isinstance(tok, str) else None,
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Intervention:
        """Read an intervention saved by :meth:`save` (of this class or, from the base, any)."""
        cfg, tensors = load_artifact(path, None if cls is Intervention else cls.KIND, device)
        with reading(path, "intervention"):  # what the constructors refuse names the file
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


def positions_from_config(
    cfg: dict[str, Any], tensors: Mapping[str, Tensor] | None = None
) -> Positions:
    """The position rule of a saved intervention: its ``cfg["positions"]`` and, for a
    ``scored`` rule with its own basis, the ``score_basis`` buffer of its state dict.

    For ``_from_saved`` of new kinds (see :func:`register_intervention`).
    """
    if "positions" not in cfg:
        raise ValueError(f"the {cfg.get('kind', 'intervention')} config has no 'positions'")
    return Positions.from_config(cfg["positions"], (tensors or {}).get("score_basis"))


def from_saved(cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
    """Rebuild an intervention from its config and state dict (the registry lookup; the
    kind's module is imported if this process has not imported it yet)."""
    kind = cfg.get("kind")
    if not isinstance(kind, str):
        raise ValueError(f"an intervention config needs a 'kind' string, got {kind!r}")
    cls = kind_class(kind)
    if not (isinstance(cls, type) and issubclass(cls, Intervention)):
        raise ValueError(f"artifact kind {kind!r} is a {cls.__name__}, not an intervention")
    return cls._from_saved(cfg, tensors)


@register_intervention("low_rank_edit")
class LowRankEdit(Intervention):
    """The general term ``h' = h + g(h) · Bᵀ (f(h) − B h)``, ``B: r × d`` orthonormal rows.

    Args:
        B: ``[r, d]`` rows (or a Subspace, or one ``[d]`` direction).
        f: target coordinates ``[..., d] → [..., r]``; None means ``f = 0`` (erase ``B``).
        gate: ``[..., d] → [..., r]`` or ``[..., 1]``, a float, or None (``g = 1``).
        site: where to apply it.
        positions: the position rule.
    """

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    B: Tensor

    def __init__(
        self,
        B: Any,
        f: nn.Module | None = None,
        gate: nn.Module | float | None = None,
        *,
        site: str,
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
        pos = positions_from_config(cfg, tensors)
        obj = cls(
            tensors["B"],
            from_component_config(cfg["f"]),
            from_component_config(cfg["gate"]),
            site=cfg["site"],
            positions=pos,
        )
        return obj._finish_load(cfg, tensors)


@register_intervention("compose")
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

    def _parts(self) -> list[Intervention]:
        # the members as interventions: nn.ModuleList is typed to yield nn.Module, and
        # __init__ admits Intervention members only
        return cast("list[Intervention]", list(self.members))

    def sites(self) -> list[str]:
        out: list[str] = []
        for m in self._parts():
            out += [s for s in m.sites() if s not in out]
        return out

    def leaves(self) -> list[Intervention]:
        return [leaf for m in self._parts() for leaf in m.leaves()]

    def edit(self, h: Tensor) -> Tensor:
        del h
        raise TypeError("Compose has no single edit; apply it through steer() or apply_at()")

    def apply_at(self, site: str, h: Tensor, view: TokenView, rows: Tensor | None = None) -> Tensor:
        here = [m for m in self._parts() if site in m.sites()]
        if len(here) == 1:  # no sum needed: keep the member's result bit for bit
            return here[0].apply_at(site, h, view, rows)
        out = h
        for m in here:
            out = out + (m.apply_at(site, h, view, rows) - h)
        return out

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "members": [m.to_config() for m in self._parts()],
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
