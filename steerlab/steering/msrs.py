"""Multi-subspace representation steering (MSRS, arXiv 2508.10599): gated shared + per-attribute
blocks of one orthonormal basis.

    h' = h + s · Rᵀ diag(m(h)) (W h + b − R h),      m(h) = sigmoid(MLP(h)), one gate per block

``R: r × d`` has orthonormal rows (``torch.nn.utils.parametrizations.orthogonal``, so it stays
orthonormal while training), split into ``[shared | attr_1 | … | attr_n]``. In the algebra of
:mod:`steerlab.interventions.algebra` it is one :class:`~steerlab.interventions.algebra.LowRankEdit` term
with ``B = R``, ``f = W h + b`` and the gate ``g = m(h)`` (an
:class:`~steerlab.interventions.components.MLPGate`, each block's gate repeated over its rows) times
an *active* mask: an attribute switched off (:meth:`MSRS.set_active`) has gate exactly 0, and the
shared block is on while any attribute is. ``s`` (``scale``, default 1) is a strength knob.

**Positions.** With the default rule ``scored(n=1)`` (token-level steering, as in the paper) each
attribute block ``i`` is applied at the prompt token with the largest ``‖R_i h_t‖`` and the
shared block at every token chosen by an active attribute; any other rule (``"last"``, ``"all"``,
...) applies all blocks at the tokens it selects. The scored choice is over prompt tokens, so it
is the same with and without the KV cache (see :mod:`steerlab.positions`).

**Initialisation** (:func:`init_bases`): the shared block is the top right-singular vectors of
the stacked per-pair activation differences of all attributes (each attribute's differences
scaled to unit Frobenius norm, so none dominates); attribute ``i``'s block is the top singular
vectors of its differences after the shared span and the earlier attributes' blocks are
projected out (so all blocks are mutually orthogonal). Per-pair differences rather than one
mean vector per attribute: the SVD of a single vector has rank 1. ``W`` starts equal to ``R``
and ``b`` at 0, so ``f(h) = R h`` and an untrained module is the identity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from steerlab.checks import check_finite
from steerlab.interventions.algebra import (
    Intervention,
    LowRankEdit,
    orthonormal_rows,
    positions_from_config,
    register_intervention,
)
from steerlab.interventions.components import Affine, MLPGate
from steerlab.positions import Positions, TokenView, scored
from steerlab.subspace import Subspace

logger = logging.getLogger(__name__)

SHARED = "shared"

__all__ = ["MSRS", "SHARED", "BlockInit", "GateTrace", "MSRSLoss", "init_bases", "read_differences"]


# --- initialisation ---------------------------------------------------------------------------


class BlockInit(NamedTuple):
    """The initial bases of :func:`init_bases`."""

    R: Float[Tensor, "r d"]
    """All rows, ``[shared | attr_1 | …]``, orthonormal (float64)."""
    names: list[str]
    """Block names: ``"shared"`` then the attributes."""
    sizes: list[int]
    """Rows per block."""
    energy: dict[str, dict[str, float]]
    """``energy[block][attr]``: fraction of attribute ``attr``'s (unit-normalised) difference
    energy ``‖D_attr V_blockᵀ‖² / ‖D_attr‖²`` captured by the block; ``energy["residual"]``
    is the part of each attribute's energy left after the shared block that its own block
    keeps (``‖D'_i V_iᵀ‖² / ‖D'_i‖²``)."""


def _numerical_rank(x: Tensor) -> int:
    s = torch.linalg.svdvals(x)
    if len(s) == 0 or s[0] == 0:
        return 0
    return int((s > s[0] * max(x.shape) * torch.finfo(x.dtype).eps).sum())


def init_bases(
    differences: Mapping[str, Float[Tensor, "n d"]],
    shared_rank: int,
    attribute_ranks: int | Mapping[str, int],
) -> BlockInit:
    """Shared and private bases from per-attribute activation differences (see module doc).

    Args:
        differences: attribute name → ``[n_i, d]`` per-pair differences ``x⁺ − x⁻``.
        shared_rank: rows of the shared block (0 for none).
        attribute_ranks: rows per attribute block (one int for all, or per name).

    Raises:
        ValueError: no attributes, an attribute without data, mismatched widths, a NaN, or a
            block larger than the rank its data can supply or than ``d``.
    """
    if not differences:
        raise ValueError("MSRS needs at least one attribute")
    names = list(differences)
    if SHARED in names:
        raise ValueError(f"{SHARED!r} is reserved for the shared block")
    D: dict[str, Tensor] = {}
    for a in names:
        x = differences[a]
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"attribute {a!r} has no data (need [n >= 1, d] differences)")
        D[a] = check_finite(x, f"differences of {a!r}", floating=True).double()
    widths = {a: x.shape[1] for a, x in D.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"attributes have mismatched widths: {widths}")
    d = next(iter(widths.values()))
    ranks = (
        {a: int(attribute_ranks) for a in names}
        if isinstance(attribute_ranks, int)
        else {a: int(attribute_ranks[a]) for a in names}
    )
    if shared_rank < 0 or any(r < 1 for r in ranks.values()):
        raise ValueError("shared_rank must be >= 0 and every attribute rank >= 1")
    total = shared_rank + sum(ranks.values())
    if total > d:
        raise ValueError(f"blocks need {total} rows but d_model is {d}")
    for a in names:
        norm = torch.linalg.matrix_norm(D[a])
        if norm == 0:
            raise ValueError(f"attribute {a!r} has only zero differences")
        D[a] = D[a] / norm  # each attribute contributes unit energy to the shared SVD
    stacked = torch.cat([D[a] for a in names])
    avail = _numerical_rank(stacked)
    if shared_rank > avail:
        raise ValueError(f"shared_rank {shared_rank} exceeds the rank {avail} of the differences")
    rows = [torch.linalg.svd(stacked, full_matrices=False).Vh[:shared_rank]]
    energy: dict[str, dict[str, float]] = {SHARED: {}, "residual": {}}
    for a in names:
        energy[SHARED][a] = float((D[a] @ rows[0].T).square().sum())
    for a in names:
        Q = torch.cat(rows)
        resid = D[a] - (D[a] @ Q.T) @ Q  # project out the shared span and earlier blocks
        avail = _numerical_rank(resid)
        if ranks[a] > avail:
            raise ValueError(
                f"attribute {a!r}: block of {ranks[a]} rows exceeds the rank {avail} of its "
                "differences after the shared block (more pairs, or a smaller block)"
            )
        V = torch.linalg.svd(resid, full_matrices=False).Vh[: ranks[a]]
        V = V - (V @ Q.T) @ Q  # re-orthogonalise against round-off
        V = torch.linalg.qr(V.T).Q.T
        rows.append(V)
        energy["residual"][a] = float((resid @ V.T).square().sum() / resid.square().sum())
        energy[a] = {b: float((D[b] @ V.T).square().sum()) for b in names}
    return BlockInit(torch.cat(rows), [SHARED, *names], [shared_rank, *ranks.values()], energy)


def read_differences(
    handle: Any, pairs: Mapping[str, Any], site: str, *, chat: bool = True, target: Any = None
) -> dict[str, Float[Tensor, "n d"]]:
    """Per-pair activation differences (target side − other side) at ``site``, per attribute.

    Args:
        handle: the model.
        pairs: attribute → contrast pairs (path, PairSet or list) with prompts.
        site: one site name.
        chat: render the prompts with the chat template.
        target: attribute → ``"positive"`` or ``"negative"`` (the side steered towards;
            default positive).
    """
    from steerlab.datasets.pairs import as_pairs
    from steerlab.steering.pairs import read_pairs

    out = {}
    for a, p in pairs.items():
        ps = as_pairs(p)
        if len(ps) == 0:
            raise ValueError(f"attribute {a!r} has no pairs")
        acts = read_pairs(handle, ps, site, chat=chat)
        sign = -1.0 if (target or {}).get(a, "positive") == "negative" else 1.0
        out[a] = sign * (acts.pos[:, 0] - acts.neg[:, 0])
    return out


# --- the module -------------------------------------------------------------------------------


class GateTrace(NamedTuple):
    """Per-token gates and projections of a text (see :meth:`MSRS.trace`)."""

    gates: Float[Tensor, "pos group"]
    """``m(h_t)`` per block (before the active mask)."""
    scores: Float[Tensor, "pos group"]
    """``‖R_i h_t‖`` per block."""
    names: list[str]


@register_intervention("msrs")
class MSRS(LowRankEdit):
    """``h' = h + s · Rᵀ diag(m(h)) (W h + b − R h)`` with block-gated rows (MSRS, Jiang et al.
    2025, arXiv 2508.10599); see the module docstring.

    Args:
        d: activation width.
        block_sizes: rows of ``[shared, attr_1, …]`` (shared may be 0).
        attributes: the attribute names (one per block after the shared one).
        site: where to apply it.
        positions: default ``scored(n=1)``: token-level steering (argmax ``‖R_i h_t‖`` per block).
        hidden: width of the gate MLP.
        init: initial ``[r, d]`` rows (e.g. :func:`init_bases`' ``R``); default random.
    """

    def __init__(
        self,
        d: int,
        block_sizes: Sequence[int],
        attributes: Sequence[str],
        site: str,
        positions: str | Positions | None = None,
        hidden: int = 64,
        init: Tensor | None = None,
    ) -> None:
        sizes = [int(s) for s in block_sizes]
        attributes = list(attributes)
        if len(sizes) != len(attributes) + 1:
            raise ValueError(f"{len(sizes)} block sizes for shared + {len(attributes)} attributes")
        if not attributes or len(set(attributes)) != len(attributes) or SHARED in attributes:
            raise ValueError(f"attributes must be distinct, non-empty, not {SHARED!r}")
        if sizes[0] < 0 or any(s < 1 for s in sizes[1:]):
            raise ValueError(f"block sizes must be shared >= 0, attributes >= 1: {sizes}")
        r = sum(sizes)
        if r > d:
            raise ValueError(f"blocks need {r} rows but d_model is {d}")
        Intervention.__init__(self, site, positions if positions is not None else scored(), d)
        self.sizes, self.attributes = sizes, attributes
        self.R = nn.utils.parametrizations.orthogonal(nn.Linear(d, r, bias=False))
        if init is not None:
            init = orthonormal_rows(init, "init")
            if init.shape != (r, d):
                raise ValueError(f"init has shape {tuple(init.shape)}, expected ({r}, {d})")
            with torch.no_grad():
                self.R.weight = init.to(torch.float32)
        R0 = self.R.weight.detach().clone()
        self.register_buffer("R_init", R0)
        self.f = Affine(d, r)
        with torch.no_grad():  # f(h) = R h, b = 0: the untrained module is the identity
            self.f.weight.copy_(R0)
            self.f.bias.zero_()
        self.gate = MLPGate(d, hidden, sizes)
        self.scale = 1.0
        self.active: list[str] = list(attributes)

    # --- blocks and gates -------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [SHARED, *self.attributes]

    def basis(self) -> Float[Tensor, "r d"]:
        return self.R.weight

    def blocks(self) -> list[slice]:
        """Row slices of ``[shared, attr_1, …]``."""
        out, start = [], 0
        for s in self.sizes:
            out.append(slice(start, start + s))
            start += s
        return out

    def block(self, name: str) -> Float[Tensor, "r_i d"]:
        """The rows of one block."""
        return self.basis()[self.blocks()[self.names.index(name)]]

    def subspace(self, name: str) -> Subspace:
        """A block as a :class:`~steerlab.subspace.Subspace` (for principal angles)."""
        # R is orthonormal to its dtype's round-off; re-orthonormalise in float64 for Subspace
        B = self.block(name).detach().double()
        return Subspace.from_vectors(B, meta={"method": "msrs", "block": name})

    def set_active(self, attributes: Sequence[str]) -> MSRS:
        """Steer only these attributes (others get gate 0; shared is on if any is). In place."""
        unknown = [a for a in attributes if a not in self.attributes]
        if unknown:
            raise ValueError(f"unknown attributes {unknown}; this module has {self.attributes}")
        self.active = [a for a in self.attributes if a in attributes]
        return self

    def group_mask(self, like: Tensor) -> Tensor:
        """``[group]`` 1 for active blocks, 0 otherwise."""
        on = [bool(self.active)] + [a in self.active for a in self.attributes]
        return torch.tensor(on, dtype=like.dtype, device=like.device)

    def group_gates(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... group"]:
        """``m(h)`` per block (one value per group, before the active mask)."""
        return torch.sigmoid(self.gate.net(h))

    def gate_value(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... r"]:
        g = self.group_gates(h) * self.group_mask(h)
        g = g.repeat_interleave(torch.tensor(self.sizes, device=h.device), dim=-1)
        return g * self.scale

    # --- the edit ---------------------------------------------------------------------------

    def edit(self, h: Float[Tensor, "... d"], rows: Tensor | None = None) -> Float[Tensor, "... d"]:
        """``h'`` at every position; ``rows [..., r]`` (bool) restricts which rows act where."""
        B = self.basis()
        x = h.to(torch.promote_types(h.dtype, B.dtype))
        B = B.to(x)
        delta = self.gate_value(x).to(x) * (self.target(x).to(x) - x @ B.T)
        if rows is not None:
            delta = delta * rows.to(x)
        return h + (delta @ B).type_as(h)

    def block_masks(self, view: TokenView, h: Tensor) -> Tensor:
        """``[batch, pos, r]``: where each row acts (see the module docstring)."""
        blocks = self.blocks()
        R = self.basis().detach()
        if self.positions.tokens == "scored" and self.positions.basis is None:
            per = [self.positions.mask(view, h, R[sl]) for sl in blocks[1:]]
            on = [a in self.active for a in self.attributes]
            shared = torch.zeros_like(view.real)
            for m, a_on in zip(per, on):
                if a_on:
                    shared = shared | m
            per = [shared, *per]
        else:
            own = getattr(self, "score_basis", None)
            m = self.positions.mask(view, h, own if own is not None else R)
            per = [m] * len(blocks)
        reps = torch.tensor(self.sizes, device=h.device)
        return torch.stack(per, -1).repeat_interleave(reps, dim=-1)

    def apply_at(self, site: str, h: Tensor, view: TokenView, rows: Tensor | None = None) -> Tensor:
        if site != self.site:
            return h
        masks = self.block_masks(view, h)
        if rows is not None:
            masks = masks & rows[:, None, None]
        any_row = masks.any(-1)
        if self.training:  # the edited tokens' activations, for gate_loss (row-major order)
            self.last_inputs = h[any_row]
        if not bool(any_row.any()):
            return h
        return torch.where(any_row[..., None], self.edit(h, masks), h)

    @torch.no_grad()
    def trace(self, h: Float[Tensor, "pos d"]) -> GateTrace:
        """Gates and block projections of one text's activations (for plots)."""
        x = h.to(self.basis())
        R = self.basis()
        scores = torch.stack([torch.linalg.vector_norm(x @ R[sl].T, dim=-1)
                              for sl in self.blocks()], -1)  # fmt: skip
        return GateTrace(self.group_gates(x).cpu(), scores.cpu(), self.names)

    # --- training terms ---------------------------------------------------------------------

    def gate_prior(self, attribute: str, own: float = 0.9, other: float = 0.1) -> Tensor:
        """The target mean gates for an example of ``attribute``: shared 1, own ``own``,
        others ``other`` (the paper's prior mask)."""
        p = [1.0] + [own if a == attribute else other for a in self.attributes]
        return torch.tensor(p)

    def gate_loss(self, h_sel: Float[Tensor, "n d"], attributes: Sequence[str],
                  own: float = 0.9, other: float = 0.1) -> Tensor:  # fmt: skip
        """MSE between the gates at the intervened tokens and each example's prior."""
        prior = torch.stack([self.gate_prior(a, own, other) for a in attributes]).to(h_sel)
        return (self.group_gates(h_sel) - prior).square().mean()

    def alignment_loss(self) -> Tensor:
        """Mean over blocks of ``1 − ‖R_b R0_bᵀ‖²_F / r_b``: 0 iff every block spans its
        initial subspace (rotation within a block is free)."""
        R, R0 = self.basis(), self.R_init.to(self.basis())
        terms = [1 - (R[sl] @ R0[sl].T).square().sum() / (sl.stop - sl.start)
                 for sl in self.blocks() if sl.stop > sl.start]  # fmt: skip
        return torch.stack(terms).mean()

    # --- artifacts --------------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        return {
            **Intervention.to_config(self),
            "rank": self.rank,
            "block_sizes": self.sizes,
            "attributes": self.attributes,
            "hidden": self.gate.net[0].out_features,
            "active": self.active,
            "scale": self.scale,
        }

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(cfg["d_in"], cfg["block_sizes"], cfg["attributes"], cfg["site"],
                  positions_from_config(cfg, tensors), cfg["hidden"])  # fmt: skip
        obj.set_active(cfg["active"])
        obj.scale = float(cfg["scale"])
        return obj._finish_load(cfg, tensors)

    @classmethod
    def from_init(cls, init: BlockInit, site: str, positions: str | Positions | None = None,
                  hidden: int = 64) -> MSRS:  # fmt: skip
        """Build from :func:`init_bases`; records the energies in ``meta``."""
        obj = cls(init.R.shape[1], init.sizes, init.names[1:], site, positions, hidden,
                  init=init.R)  # fmt: skip
        obj.meta["init_energy"] = init.energy
        return obj


class MSRSLoss:
    """MSRS's extra training terms for :func:`steerlab.steering.train.train_intervention`:
    ``λ_gate · MSE(m(h), prior) + λ_align · alignment``.

    The prior is shared 1, own attribute ``own``, others ``other`` (the paper's code: 0.9 / 0.1;
    its weights λ₁ = 0.5, λ₂ = 0.8). Each example's ``group`` names its attribute.

    Args:
        gate_weight: λ_gate.
        align_weight: λ_align.
        own: prior gate of the example's attribute.
        other: prior gate of the other attributes.
    """

    def __init__(self, gate_weight: float = 0.5, align_weight: float = 0.8, own: float = 0.9,
                 other: float = 0.1) -> None:  # fmt: skip
        self.gate_weight, self.align_weight, self.own, self.other = (
            gate_weight, align_weight, own, other)  # fmt: skip

    def __call__(self, iv: Intervention, batch: Any) -> dict[str, Tensor]:
        if not isinstance(iv, MSRS):
            raise TypeError(f"MSRSLoss needs an MSRS module, got {iv.KIND}")
        h = iv.last_inputs
        if h.shape[0] != len(batch.groups):
            raise ValueError(f"{h.shape[0]} intervened tokens for {len(batch.groups)} examples; "
                             "train MSRS with one position per example (e.g. 'last')")  # fmt: skip
        return {"gate": self.gate_weight * iv.gate_loss(h, batch.groups, self.own, self.other),
                "align": self.align_weight * iv.alignment_loss()}  # fmt: skip
