"""The trained AST-Probe artifact (:class:`AstProbe`): ``B``, ``C``, ``U`` and the leaf
rescaling, with its forward pass (Hernández López et al., ASE 2022; the equations are in
:mod:`steerlab.probes.ast.probe`, which trains it and re-exports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.artifacts import FrozenArtifact, register
from steerlab.probes.ast.trees import Tree, debinarize, targets_to_tree
from steerlab.subspace import Subspace


def _batch_x(x: Tensor, index: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Gather, normalise and zero-pad ``[b, leaves, d_model]`` float32 leaf vectors."""
    w = int((index >= 0).sum(1).max())
    idx = index[:, :w]
    z = (x[idx.clamp_min(0)].float() - mean) * scale
    return z * (idx >= 0)[..., None]


class AstProbeOutput(NamedTuple):
    """Probe outputs for a batch of snippets padded to ``leaf`` leaves."""

    d: Float[Tensor, "... leaf_minus_1"]
    """Predicted syntactic distances ``d̂``."""
    c_scores: Float[Tensor, "... leaf_minus_1 n_c"]
    """Scores of the LCA labels."""
    u_scores: Float[Tensor, "... leaf n_u"]
    """Scores of the unary labels."""


@register("ast_probe")
@dataclass(frozen=True, eq=False, repr=False)
class AstProbe(FrozenArtifact):
    """A trained AST-Probe (Hernández López et al., ASE 2022).

    With ``z = (h − μ) ⊙ s`` and ``p_i = Bᵀ z_i``: ``d̂_i = ‖p_i − p_{i−1}‖²``, LCA scores
    ``(p_i − p_{i−1}) C`` and unary scores ``p_i U``. ``save(dir)`` / ``AstProbe.load(dir)``
    come from :class:`~steerlab.artifacts.FrozenArtifact` (the label tuples go to ``cfg.json``).
    """

    CODECS = {"c_labels": (list, tuple), "u_labels": (list, tuple)}

    B: Float[Tensor, "d_model rank"]
    C: Float[Tensor, "rank n_c"]
    U: Float[Tensor, "rank n_u"]
    mean: Float[Tensor, " d_model"]
    """``μ``, subtracted from leaf vectors."""
    scale: Float[Tensor, " d_model"]
    """``s``, multiplied after subtracting ``μ`` (``1/σ`` when standardising)."""
    c_labels: tuple[str, ...]
    """LCA label of each column of ``C``."""
    u_labels: tuple[str, ...]
    """Unary label of each column of ``U``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Config, site, model id, training history (JSON-serialisable)."""

    def __post_init__(self) -> None:
        d, r = self.B.shape
        if self.C.shape != (r, len(self.c_labels)) or self.U.shape != (r, len(self.u_labels)):
            raise ValueError(
                f"C {tuple(self.C.shape)} / U {tuple(self.U.shape)} do not match "
                f"rank {r} and the label vocabularies"
            )
        if self.mean.shape != (d,) or self.scale.shape != (d,):
            raise ValueError(f"mean and scale must have shape ({d},)")

    def __repr__(self) -> str:
        return (
            f"AstProbe(d_model={self.d_model}, rank={self.rank}, n_c={len(self.c_labels)}, "
            f"n_u={len(self.u_labels)}, site={self.meta.get('site')!r})"
        )

    @property
    def d_model(self) -> int:
        return self.B.shape[0]

    @property
    def rank(self) -> int:
        return self.B.shape[1]

    def __call__(self, h: Float[Tensor, "... leaf d_model"]) -> AstProbeOutput:
        """Distances and label scores for leaf vectors ``h`` (one snippet or a padded batch)."""
        if h.ndim < 2 or h.shape[-1] != self.d_model:
            raise ValueError(f"h must be [..., leaf, {self.d_model}], got {tuple(h.shape)}")
        z = (h.to(self.B) - self.mean) * self.scale
        return _forward(z, self.B, self.C, self.U)

    def predict(
        self, h: Float[Tensor, "leaf d_model"], leaves: Sequence[str] | None = None
    ) -> Tree:
        """The predicted (debinarised) AST of one snippet; leaves labelled ``leaves`` or 0…n."""
        with torch.no_grad():
            out = self(h)
        n = h.shape[0]
        leaves = [str(i) for i in range(n)] if leaves is None else list(leaves)
        c = [self.c_labels[i] for i in out.c_scores.argmax(-1).tolist()]
        u = [self.u_labels[i] for i in out.u_scores.argmax(-1).tolist()]
        return debinarize(targets_to_tree(leaves, out.d, c, u))

    def subspace(self) -> Subspace:
        """The syntactic subspace: the orthonormalised columns of ``diag(s) B`` at origin ``μ``.

        ``Bᵀ z = (diag(s) B)ᵀ (h − μ)``, so these are the directions of the raw activations
        that the probe reads.
        """
        W = (self.B.double() * self.scale.double()[:, None]).T
        meta = {
            "method": "ast_probe",
            "rank": self.rank,
            **{k: self.meta[k] for k in ("site", "model_id") if k in self.meta},
        }
        sub = Subspace.from_vectors(W, self.mean.double(), meta=meta)
        return sub.to(dtype=self.B.dtype)

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> AstProbe:
        """A copy on ``device`` and/or in ``dtype``."""
        t = {k: getattr(self, k).to(device=device, dtype=dtype) for k in _TENSORS}
        return AstProbe(**t, c_labels=self.c_labels, u_labels=self.u_labels, meta=dict(self.meta))


_TENSORS = ("B", "C", "U", "mean", "scale")


def _forward(z: Tensor, B: Tensor, C: Tensor, U: Tensor) -> AstProbeOutput:
    p = z @ B  # [..., leaf, rank]
    diff = p[..., 1:, :] - p[..., :-1, :]
    return AstProbeOutput(diff.pow(2).sum(-1), diff @ C, p @ U)
