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
attribute block ``i`` is applied at the token ``p_i = argmax_t s_{i,t}`` and the shared block at
every token chosen by an active attribute; any other rule (``"last"``, ``"all"``, ...) applies
all blocks at the tokens it selects. ``token_rule`` says which tokens compete and how:

- ``"user"`` (default): the user message's own tokens (:mod:`steerlab.steering.user_tokens`:
  never the system prompt, never a template marker), scored centred,
  ``s_{i,t} = ‖R_i (h_t − μ)‖`` with ``μ`` the mean activation over user tokens
  (:meth:`MSRS.set_center`). Uncentred, the norm is dominated by ``⟨h_t, μ⟩``-like terms and
  picks the tokens with the largest activations, whatever their content.
- ``"paper"``: the paper's literal rule, every prompt token, ``s_{i,t} = ‖R_i h_t‖``.

The scored choice is over prompt tokens, so it is the same with and without the KV cache (see
:mod:`steerlab.positions`).

**Gates at inference.** The paper's code trains with the gates (they shape which block learns
what, through the prior below) and applies the *ungated* edit at inference. With
``gates_at_inference=False`` the module does the same: outside training every active block has
gate 1 (times ``scale``); ``set_active`` still chooses the blocks.

**Initialisation** (:func:`~steerlab.steering.msrs_init.init_bases`, re-exported here): shared
and private blocks from the SVD of per-pair activation differences, mutually orthogonal. ``W``
starts equal to ``R`` and ``b`` at 0, so ``f(h) = R h`` and an untrained module is the identity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

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
from steerlab.steering.msrs_init import SHARED, BlockInit, init_bases, read_differences
from steerlab.steering.user_tokens import ChatMarkers, user_content_mask
from steerlab.subspace import Subspace

logger = logging.getLogger(__name__)

TokenRule = Literal["user", "paper"]
TOKEN_RULES = ("user", "paper")

__all__ = [
    "MSRS",
    "SHARED",
    "TOKEN_RULES",
    "BlockInit",
    "GateTrace",
    "MSRSLoss",
    "TokenRule",
    "init_bases",
    "read_differences",
]


# --- the module -------------------------------------------------------------------------------


class GateTrace(NamedTuple):
    """Per-token gates and projections of a text (see :meth:`MSRS.trace`)."""

    gates: Float[Tensor, "pos group"]
    """``m(h_t)`` per block (before the active mask)."""
    scores: Float[Tensor, "pos group"]
    """The token scores per block: ``‖R_i (h_t − μ)‖`` (token rule ``"user"``) or
    ``‖R_i h_t‖`` (``"paper"``)."""
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
        positions: default ``scored(n=1)``: token-level steering (one token per block).
        hidden: width of the gate MLP.
        init: initial ``[r, d]`` rows (e.g. :func:`init_bases`' ``R``); default random.
        token_rule: ``"user"`` or ``"paper"`` (see the module docstring).
        markers: the chat template's user markers
            (:func:`steerlab.steering.user_tokens.chat_markers`); needed by ``"user"``.
        center: ``[d]`` the centre ``μ`` of the ``"user"`` scores (or :meth:`set_center`).
        gates_at_inference: False applies the ungated edit outside training (the paper's code).
    """

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    R: nn.Linear
    R_init: Tensor
    center: Tensor

    def __init__(
        self,
        d: int,
        block_sizes: Sequence[int],
        attributes: Sequence[str],
        site: str,
        positions: str | Positions | None = None,
        hidden: int = 64,
        init: Tensor | None = None,
        *,
        token_rule: TokenRule = "user",
        markers: ChatMarkers | None = None,
        center: Tensor | None = None,
        gates_at_inference: bool = True,
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
        if token_rule not in TOKEN_RULES:
            raise ValueError(f"token_rule must be one of {TOKEN_RULES}, got {token_rule!r}")
        Intervention.__init__(self, site, positions if positions is not None else scored(), d)
        self.sizes, self.attributes = sizes, attributes
        # orthogonal() parametrizes the Linear in place (its return value is that same module)
        self.R = nn.Linear(d, r, bias=False)
        nn.utils.parametrizations.orthogonal(self.R)
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
        self.token_rule: TokenRule = token_rule
        self.markers = None if markers is None else ChatMarkers(*markers)
        self.gates_at_inference = bool(gates_at_inference)
        self.register_buffer("center", torch.zeros(d))
        self.has_center = False
        if center is not None:
            self.set_center(center)
        # inference mode until a trainer says otherwise: the mode decides whether the gates act
        # (gates_at_inference=False) and whether edited inputs are kept for the gate loss
        self.eval()

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

    def set_center(self, center: Float[Tensor, " d"]) -> MSRS:
        """Set ``μ``, the centre of the ``"user"`` token scores (e.g.
        :func:`steerlab.steering.user_tokens.user_token_mean` of the training prompts). In place.
        """
        c = check_finite(torch.as_tensor(center), "center", floating=True)
        if c.shape != (self.d_in,):
            raise ValueError(f"center has shape {tuple(c.shape)}, expected ({self.d_in},)")
        with torch.no_grad():
            self.center.copy_(c.to(self.center))
        self.has_center = True
        return self

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
        if self.training or self.gates_at_inference:
            g = self.group_gates(h) * self.group_mask(h)
        else:  # the reference's inference: the ungated edit of the active blocks
            g = self.group_mask(h).expand(*h.shape[:-1], len(self.sizes))
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

    def token_scores(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... group"]:
        """``s_{i,t}`` of every block (the shared block's too) under the token rule."""
        x = h.to(self.basis()).detach()
        if self.token_rule == "user":
            self._require_user_rule(markers=False)
            x = x - self.center.to(x)
        R = self.basis().detach()
        return torch.stack([torch.linalg.vector_norm(x @ R[sl].T, dim=-1)
                            for sl in self.blocks()], -1)  # fmt: skip

    def _require_user_rule(self, *, markers: bool = True) -> None:
        if markers and self.markers is None:
            raise ValueError(
                "MSRS token_rule='user' needs the chat template's user markers: pass "
                "markers=steerlab.steering.user_tokens.chat_markers(handle), or use "
                "token_rule='paper'"
            )
        if not self.has_center:
            raise ValueError(
                "MSRS token_rule='user' scores ‖R_i (h_t − μ)‖ and needs μ: call "
                "set_center(user_token_mean(handle, prompts, site, markers)) "
                "(steerlab.steering.user_tokens), or use token_rule='paper'"
            )

    def _user_choice(self, view: TokenView, h: Tensor) -> list[Tensor]:
        """Per attribute block, its top-n user-message tokens by centred score."""
        self._require_user_rule()
        assert self.markers is not None
        part = user_content_mask(view, self.markers)
        scores = self.token_scores(h)[..., 1:].masked_fill(~part[..., None], float("-inf"))
        k = min(int(self.positions.n or 1), part.shape[1])
        out = []
        for i in range(scores.shape[-1]):
            m = torch.zeros_like(part)
            m.scatter_(1, scores[..., i].topk(k, dim=1).indices, True)
            out.append(m & part)  # rows with fewer than k user tokens keep only real ones
        return out

    def block_masks(self, view: TokenView, h: Tensor) -> Tensor:
        """``[batch, pos, r]``: where each row acts (see the module docstring)."""
        blocks = self.blocks()
        R = self.basis().detach()
        if self.positions.tokens == "scored" and self.positions.basis is None:
            if self.token_rule == "user":
                per = self._user_choice(view, h)
            else:
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
        """Gates and token scores (:meth:`token_scores`) of one text's activations (for plots)."""
        x = h.to(self.basis())
        return GateTrace(self.group_gates(x).cpu(), self.token_scores(x).cpu(), self.names)

    @torch.no_grad()
    def selected_gates(self, view: TokenView, h: Float[Tensor, "batch pos d"]) -> Tensor:
        """``[batch, group]``: each block's gate ``m(h)`` at the token(s) where it acts (their
        mean; NaN where a block acts nowhere), before the active mask. With ``"last"`` every
        block reads the last prompt token; with the scored rule each its own token."""
        masks = self.block_masks(view, h)  # [batch, pos, r]
        starts = [sl.start for sl in self.blocks()]
        gates = self.group_gates(h.to(self.basis()))  # [batch, pos, group]
        out = torch.full((h.shape[0], len(starts)), float("nan"), dtype=gates.dtype)
        for g, s in enumerate(starts):
            if self.sizes[g] == 0:
                continue
            m = masks[..., s]
            for b in range(h.shape[0]):
                if bool(m[b].any()):
                    out[b, g] = gates[b, m[b], g].mean().cpu()
        return out

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
            "token_rule": self.token_rule,
            "markers": None if self.markers is None else self.markers.to_config(),
            "has_center": self.has_center,
            "gates_at_inference": self.gates_at_inference,
        }

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        mk = cfg.get("markers")
        # artifacts saved before token_rule existed used the paper's literal rule
        obj = cls(cfg["d_in"], cfg["block_sizes"], cfg["attributes"], cfg["site"],
                  positions_from_config(cfg, tensors), cfg["hidden"],
                  token_rule=cfg.get("token_rule", "paper"),
                  markers=None if mk is None else ChatMarkers.from_config(mk),
                  gates_at_inference=cfg.get("gates_at_inference", True))  # fmt: skip
        obj.set_active(cfg["active"])
        obj.scale = float(cfg["scale"])
        tensors = dict(tensors)
        tensors.setdefault("center", torch.zeros(cfg["d_in"]))
        obj._finish_load(cfg, tensors)
        obj.has_center = bool(cfg.get("has_center", False))
        return obj

    @classmethod
    def from_init(cls, init: BlockInit, site: str, positions: str | Positions | None = None,
                  hidden: int = 64, **kwargs: Any) -> MSRS:  # fmt: skip
        """Build from :func:`init_bases` (``kwargs``: ``token_rule``, ``markers``, ``center``,
        ``gates_at_inference``); records the energies in ``meta``."""
        obj = cls(init.R.shape[1], init.sizes, init.names[1:], site, positions, hidden,
                  init=init.R, **kwargs)  # fmt: skip
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
