"""The intervention algebra: every steering and editing method as one module form.

    h' = h + Σ_k g_k(h) · B_kᵀ (f_k(h) − B_k h)        B_k: r_k × d, orthonormal rows

- :class:`AddVector` — ``B = v̂ᵀ``, ``f = B h + α``: ActAdd (Turner et al. 2023), CAA
  (Rimsky et al. 2024);
- :class:`Ablate` — ``f = 0`` or ``B μ``: directional / mean ablation (Arditi et al. 2024);
- :class:`SetCoords` — ``f = c``: the "knob" (Minder et al. 2025), PLS edits;
- :class:`LoReFT` — ``f = W h + b``, R trainable: ReFT (Wu et al. 2024);
- :class:`LowRankEdit` — any ``f`` and gate ``g`` (MSRS's gated blocks build on it).

Each intervention is an ``nn.Module`` bound to a *site* (``"resid_post.6"``) and a position rule
(:mod:`steerlab.positions`). ``forward(h, mask)`` edits the masked positions of
``h [batch, pos, d]`` and leaves every other position bit-for-bit unchanged. The base class,
:class:`LowRankEdit` and :class:`Compose` (the Σ: every term sees the same ``h``) are defined
in :mod:`steerlab.interventions.algebra` and re-exported here. (Interventions listed separately in
:func:`steerlab.steering.steer` apply one after another instead.)

Artifacts: ``save(dir)`` writes ``cfg.json`` (the :mod:`steerlab.artifacts` header, positions,
config) and ``<kind>.safetensors`` (the module's state dict); :func:`load_intervention` reads
any kind, and other packages add kinds with :func:`register_intervention`.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerlab.checks import check_finite, check_real
from steerlab.interventions.algebra import (
    KINDS,
    Compose,
    Intervention,
    LowRankEdit,
    from_saved,
    orthonormal_rows,
    positions_from_config,
    register_intervention,
)
from steerlab.interventions.components import Affine
from steerlab.positions import Positions
from steerlab.subspace import Subspace

__all__ = [
    "KINDS",
    "Ablate",
    "AddVector",
    "Compose",
    "Intervention",
    "LoReFT",
    "LowRankEdit",
    "SetCoords",
    "from_saved",
    "load_intervention",
    "orthonormal_rows",
    "positions_from_config",
    "register_intervention",
]


@register_intervention("add_vector")
class AddVector(LowRankEdit):
    """Add a steering vector: ``h' = h + α s v̂`` (ActAdd, Turner et al. 2023; CAA, Rimsky 2024).

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

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    vector: Tensor

    def __init__(
        self,
        v: Float[Tensor, " d"],
        alpha: float,
        site: str,
        positions: str | Positions = "all",
        normalize: bool = True,
        relative_to: float | None = None,
    ) -> None:
        v = check_finite(v, "steering vector", floating=True)
        if v.ndim != 1:
            raise ValueError(f"steering vector must be 1-D [d], got shape {tuple(v.shape)}")
        norm = torch.linalg.vector_norm(v.double()).item()
        if norm == 0:
            raise ValueError("steering vector is zero")
        check_real(alpha, "alpha")
        check_real(relative_to, "relative_to (a norm)", low=0, low_open=True, optional=True)
        super().__init__((v / norm)[None], None, None, site=site, positions=positions)
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
            tensors["vector"], cfg["alpha"], cfg["site"], positions_from_config(cfg, tensors),
            cfg["normalize"], cfg["relative_to"],
        )  # fmt: skip
        return obj._finish_load(cfg, tensors)


@register_intervention("set_coords")
class SetCoords(LowRankEdit):
    """Set the coordinates in a subspace: ``h' = h + Bᵀ (c_abs − B h)`` (the "knob").

    Minder et al. 2025 ("Controllable context sensitivity and the knob behind it") switch a
    behaviour by setting one coordinate; PLS edits set a predicted quantity. With a
    :class:`~steerlab.subspace.Subspace` of origin ``o``, ``coords`` are relative to it, as
    :meth:`Subspace.project` reports them: afterwards ``subspace.project(h') == coords``.

    Args:
        subspace: a Subspace, ``[r, d]`` orthonormal rows, or one ``[d]`` direction.
        coords: ``[r]`` target coordinates (a float for r = 1).
        site: where to apply it.
        positions: the position rule.
    """

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    target_coords: Tensor

    def __init__(
        self,
        subspace: Any,
        coords: Tensor | float | list[float],
        site: str,
        positions: str | Positions = "all",
    ) -> None:
        B = orthonormal_rows(subspace, "subspace")
        c = torch.as_tensor(coords, dtype=B.dtype, device=B.device).reshape(-1)
        c = check_finite(c, "coords", floating=True)
        if c.shape != (B.shape[0],):
            raise ValueError(f"coords has {c.numel()} entries for a rank-{B.shape[0]} subspace")
        if isinstance(subspace, Subspace):
            assert subspace.origin is not None  # Subspace.__post_init__ fills in zeros
            c = c + B @ subspace.origin.to(B)  # coordinates relative to the origin
        super().__init__(B, None, None, site=site, positions=positions)
        self.register_buffer("target_coords", c.detach().clone())

    def target(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... r"]:
        return self.target_coords.to(h).expand(*h.shape[:-1], self.rank)

    def to_config(self) -> dict[str, Any]:
        return {**Intervention.to_config(self), "rank": self.rank}

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(
            tensors["B"], tensors["target_coords"], cfg["site"], positions_from_config(cfg, tensors)
        )
        return obj._finish_load(cfg, tensors)


@register_intervention("ablate")
class Ablate(SetCoords):
    """Erase a subspace: ``h' = h − Bᵀ (B h − B μ)`` with ``μ = 0`` or a mean.

    Directional ablation (Arditi et al. 2024, "Refusal is mediated by a single direction") with
    ``to="zero"``; mean ablation with ``to="mean"`` (the Subspace's origin) or ``to=μ``.
    Idempotent: ablating twice equals ablating once.

    Args:
        subspace: a Subspace, ``[r, d]`` orthonormal rows, or one ``[d]`` direction.
        to: ``"zero"``, ``"mean"`` (needs a Subspace; uses its origin) or a ``[d]`` mean.
        site: where to apply it.
        positions: the position rule.
    """

    def __init__(
        self,
        subspace: Any,
        to: Literal["zero", "mean"] | Tensor = "zero",
        *,
        site: str,
        positions: str | Positions = "all",
    ) -> None:
        B = orthonormal_rows(subspace, "subspace")
        if isinstance(to, Tensor):
            mode, mu = "tensor", check_finite(to, "mean", floating=True).to(B)
            if mu.shape != (B.shape[1],):
                raise ValueError(f"mean has shape {tuple(mu.shape)}, expected ({B.shape[1]},)")
        elif to == "zero":
            mode, mu = "zero", torch.zeros_like(B[0])
        elif to == "mean":
            if not isinstance(subspace, Subspace):
                raise ValueError('to="mean" needs a Subspace (its origin is the mean); or pass μ')
            assert subspace.origin is not None  # Subspace.__post_init__ fills in zeros
            mode, mu = "mean", subspace.origin.to(B)
        else:
            raise ValueError(f"to must be 'zero', 'mean' or a tensor, got {to!r}")
        super().__init__(B, B @ mu, site, positions)
        self.to_mode = mode

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "to": self.to_mode}

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(
            tensors["B"], "zero", site=cfg["site"], positions=positions_from_config(cfg, tensors)
        )
        obj.to_mode = cfg["to"]
        return obj._finish_load(cfg, tensors)  # restores target_coords = B μ


@register_intervention("loreft")
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

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    R: nn.Linear

    def __init__(self, d: int, rank: int, site: str, positions: str | Positions = "all") -> None:
        if not 1 <= rank <= d:
            raise ValueError(f"rank must be in [1, d={d}], got {rank}")
        Intervention.__init__(self, site, positions, d)
        # orthogonal() parametrizes the Linear in place (its return value is that same module)
        self.R = nn.Linear(d, rank, bias=False)
        nn.utils.parametrizations.orthogonal(self.R)
        self.f = Affine(d, rank)
        self.gate = None

    def basis(self) -> Float[Tensor, "r d"]:
        return self.R.weight

    def to_config(self) -> dict[str, Any]:
        return {**Intervention.to_config(self), "rank": self.rank}

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(cfg["d_in"], cfg["rank"], cfg["site"], positions_from_config(cfg, tensors))
        return obj._finish_load(cfg, tensors)


def load_intervention(path: str | os.PathLike, device: str | torch.device = "cpu") -> Intervention:
    """Load any intervention artifact directory (kinds from other packages, such as
    ``eraser_edit`` or ``msrs``, are resolved through :data:`steerlab.artifacts.KIND_TABLE`)."""
    return Intervention.load(path, device)
