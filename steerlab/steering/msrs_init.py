"""MSRS's initial subspaces: a shared block and one private block per attribute, from
per-pair activation differences (see :mod:`steerlab.steering.msrs`).

The shared block is the top right-singular vectors of the stacked per-pair activation
differences of all attributes (each attribute's differences scaled to unit Frobenius norm, so
none dominates); attribute ``i``'s block is the top singular vectors of its differences after
the shared span and the earlier attributes' blocks are projected out (so all blocks are
mutually orthogonal). Per-pair differences rather than one mean vector per attribute: the SVD
of a single vector has rank 1 (a point the paper's reviewers raised). The reference code
(waitxian/MSRS ``get_svd_rank.py``) takes the shared block from the SVD of the stacked
attribute activations and each private block from the residual after the shared projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.checks import check_finite
from steerlab.datasets.pairs import as_pairs
from steerlab.models import ModelHandle
from steerlab.steering.pairs import read_pairs

SHARED = "shared"

__all__ = ["SHARED", "BlockInit", "init_bases", "read_differences"]


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
    handle: ModelHandle,
    pairs: Mapping[str, Any],
    site: str,
    *,
    chat: bool = True,
    target: Any = None,
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
    out = {}
    for a, p in pairs.items():
        ps = as_pairs(p)
        if len(ps) == 0:
            raise ValueError(f"attribute {a!r} has no pairs")
        acts = read_pairs(handle, ps, site, chat=chat)
        sign = -1.0 if (target or {}).get(a, "positive") == "negative" else 1.0
        out[a] = sign * (acts.pos[:, 0] - acts.neg[:, 0])
    return out
