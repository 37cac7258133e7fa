"""Serialisable parts of a :class:`~steerlab.interventions.kinds.LowRankEdit`: ``f`` and ``g``.

In ``h' = h + g(h) · Bᵀ (f(h) − B h)`` the target map ``f`` and the gate ``g`` are small
modules. Each type registered here with :func:`component` can be saved: its ``config()`` goes
to ``cfg.json`` and its weights to the intervention's safetensors file.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from steerlab.checks import check_finite

COMPONENTS: dict[str, type[nn.Module]] = {}


def component(name: str):
    """Register an ``f`` or gate module type so :class:`LowRankEdit` can save it.

    The class needs ``config() -> dict`` (JSON) and ``__init__(**config)``.
    """

    def deco(cls):
        COMPONENTS[name] = cls
        cls.COMPONENT = name
        return cls

    return deco


@component("affine")
class Affine(nn.Linear):
    """``f(h) = W h + b`` (LoReFT's learned target), ``W: r × d``."""

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features}


@component("constant")
class Constant(nn.Module):
    """A constant ``f(h) = c`` (``[r]``) or gate value, broadcast over positions."""

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    value: Tensor

    def __init__(self, value: Tensor | float | list[float]) -> None:
        super().__init__()
        self.register_buffer(
            "value", check_finite(torch.as_tensor(value, dtype=torch.float32), "value")
        )

    def config(self) -> dict[str, Any]:
        return {"value": self.value.tolist()}

    def forward(self, h: Tensor) -> Tensor:
        return self.value.to(h).expand(*h.shape[:-1], *(self.value.shape or (1,)))


@component("mlp_gate")
class MLPGate(nn.Module):
    """``g(h) = sigmoid(MLP(h))``, one gate per group of rows (MSRS, arXiv 2508.10599).

    ``d → hidden → ReLU → n_groups``; each group's gate is repeated over its ``group_sizes[i]``
    rows of ``B``.
    """

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    repeats: Tensor

    def __init__(self, d_in: int, hidden: int, group_sizes: list[int]) -> None:
        super().__init__()
        self.group_sizes = [int(s) for s in group_sizes]
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, len(group_sizes))
        )
        self.register_buffer("repeats", torch.tensor(self.group_sizes), persistent=False)

    def config(self) -> dict[str, Any]:
        lin = self.net[0]
        return {
            "d_in": lin.in_features,
            "hidden": lin.out_features,
            "group_sizes": self.group_sizes,
        }

    def forward(self, h: Tensor) -> Tensor:
        return torch.sigmoid(self.net(h)).repeat_interleave(self.repeats, dim=-1)


class _Component(Protocol):
    """What :func:`component` requires of a registered class."""

    def config(self) -> dict[str, Any]: ...


def component_config(m: nn.Module | None, what: str) -> dict[str, Any] | None:
    if m is None:
        return None
    name = getattr(type(m), "COMPONENT", None)
    if name is None:
        raise TypeError(
            f"{what} of type {type(m).__name__} cannot be saved; register it with "
            "@steerlab.interventions.component(name)"
        )
    # a registered class (it has COMPONENT), so it has config(); nn.Module does not say so
    return {"type": name, **cast(_Component, m).config()}


def from_component_config(cfg: dict[str, Any] | None) -> nn.Module | None:
    if cfg is None:
        return None
    cfg = dict(cfg)
    return COMPONENTS[cfg.pop("type")](**cfg)
