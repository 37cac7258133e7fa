"""Concept erasure inside the model: erasers as steering interventions, scrubbing, LM cost.

An eraser from :mod:`steerlab.erasure.leace` (LEACE), :mod:`~steerlab.erasure.rlace` or
:mod:`~steerlab.erasure.inlp` is the affine map ``r(h) = h − L R (h − μ)``. :class:`EraserEdit`
applies it at a site during forward passes and ``generate`` through
:func:`steerlab.interventions.steer`:

    >>> iv = EraserEdit(LeaceEraser.fit(x, z), site="resid_post.9")
    >>> with steer(handle, iv):
    ...     out = handle.model.generate(**enc, max_new_tokens=16)

:func:`scrub` is concept scrubbing (Belrose et al. 2023, section 6; concept-erasure's
``ConceptScrubber``): one LEACE eraser per site, in execution order, each fitted on the
activations captured with every earlier eraser already applied in the model.
:func:`lm_cost` is the price in language modelling: the mean next-token cross-entropy of a
token corpus with and without the erasers (:func:`steerlab.interventions.loss.lm_loss`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.capture import capture
from steerlab.erasure.inlp import InlpEraser
from steerlab.erasure.leace import AffineEraser, LeaceEraser
from steerlab.erasure.rlace import RlaceEraser
from steerlab.interventions.algebra import (
    Intervention,
    LowRankEdit,
    positions_from_config,
    register_intervention,
)
from steerlab.interventions.hooks import steer
from steerlab.interventions.loss import lm_loss
from steerlab.models import ModelHandle
from steerlab.positions import Positions
from steerlab.sites import parse_sites

logger = logging.getLogger(__name__)

__all__ = ["ERASER_KINDS", "EraserEdit", "LMCost", "ScrubResult", "lm_cost", "scrub"]

#: eraser kind (``cfg.json``) -> class, for rebuilding the eraser inside a saved EraserEdit.
ERASER_KINDS: dict[str, type[AffineEraser]] = {
    "affine": AffineEraser,
    "leace": LeaceEraser,
    "rlace": RlaceEraser,
    "inlp": InlpEraser,
}


@register_intervention("eraser_edit")
class EraserEdit(LowRankEdit):
    """An eraser applied in the model: ``h' = h − L R (h − μ)`` at the selected positions.

    In the intervention algebra ``h' = h + Bᵀ (f(h) − B h)`` the rows ``B`` are an orthonormal
    basis of ``range(L)`` (``L = Bᵀ T`` from a reduced QR) and ``f(h) = B h − T R (h − μ)``, an
    affine target; :meth:`edit` computes the eraser directly, in the finer of the activations'
    and the factors' dtypes (float64 for a LEACE fit), so the edit equals ``eraser(h)`` up to
    the final rounding to the activations' dtype. LEACE's edit is oblique (``L ≠ Rᵀ``), which
    is why this is a class of its own rather than an :class:`~steerlab.interventions.Ablate`.

    Args:
        eraser: any :class:`~steerlab.erasure.leace.AffineEraser` (LEACE, R-LACE, INLP).
        site: where to apply it; its width must equal ``eraser.d_model``.
        positions: the position rule (default every token, prompt and generation).
    """

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    proj_left: Tensor
    proj_right: Tensor
    bias: Tensor

    def __init__(self, eraser: AffineEraser, site: str, positions: str | Positions = "all") -> None:
        if not isinstance(eraser, AffineEraser):
            raise TypeError(f"eraser must be an AffineEraser, got {type(eraser).__name__}")
        L, R, mu = eraser.proj_left, eraser.proj_right, eraser.bias
        if L.shape[1] == 0:  # LEACE found nothing to erase: keep one zero column (identity)
            L, R = L.new_zeros(L.shape[0], 1), R.new_zeros(1, R.shape[1])
        # Householder QR: Q has orthonormal columns even when L is rank deficient, and L = Q T
        Q, _ = torch.linalg.qr(L.double())
        super().__init__(Q.T.to(L.dtype), None, None, site=site, positions=positions)
        self.register_buffer("proj_left", L.detach().clone())
        self.register_buffer("proj_right", R.detach().clone())
        self.register_buffer("bias", (mu if mu is not None else L.new_zeros(L.shape[0])).clone())
        self.affine = mu is not None
        kind = getattr(eraser, "KIND", "affine")
        self.eraser_kind = kind if kind in ERASER_KINDS else "affine"  # unknown: the base map
        self.eraser_meta = dict(eraser.meta)

    @property
    def eraser(self) -> AffineEraser:
        """The eraser as a frozen artifact again (its registered class, on this module's device)."""
        cls = ERASER_KINDS[self.eraser_kind]
        bias = self.bias if self.affine else None
        return cls(self.proj_left, self.proj_right, bias, dict(self.eraser_meta))

    def target(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... r"]:
        # the algebra's f(h) = B h − T R (h − μ) with T = B L; edit() takes the direct path
        x = h.to(torch.promote_types(h.dtype, self.proj_left.dtype))
        B, L, R, mu = (t.to(x) for t in (self.B, self.proj_left, self.proj_right, self.bias))
        return x @ B.T - ((x - mu) @ R.T) @ (B @ L).T

    def edit(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        x = h.to(torch.promote_types(h.dtype, self.proj_left.dtype))
        L, R, mu = (t.to(x) for t in (self.proj_left, self.proj_right, self.bias))
        # (delta Rᵀ) Lᵀ costs O(d·rank) per token, as AffineEraser.__call__
        return (x - ((x - mu) @ R.T) @ L.T).type_as(h)

    def to_config(self) -> dict[str, Any]:
        cfg = Intervention.to_config(self)
        return {
            **cfg,
            "rank": int(self.proj_left.shape[1]),
            "affine": self.affine,
            "eraser_kind": self.eraser_kind,
            "eraser_meta": self.eraser_meta,
        }

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        if cfg["eraser_kind"] not in ERASER_KINDS:
            raise ValueError(
                f"unknown eraser kind {cfg['eraser_kind']!r}; known: {list(ERASER_KINDS)}"
            )
        kind_cls = ERASER_KINDS[cfg["eraser_kind"]]
        bias = tensors["bias"] if cfg["affine"] else None
        eraser = kind_cls(tensors["proj_left"], tensors["proj_right"], bias, cfg["eraser_meta"])
        obj = cls(eraser, cfg["site"], positions_from_config(cfg, tensors))
        return obj._finish_load(cfg, tensors)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eraser={self.eraser_kind}, rank={self.proj_left.shape[1]}"


# --- scrubbing ------------------------------------------------------------------------------


class ScrubResult(NamedTuple):
    """The erasers of :func:`scrub`, in execution order of their sites."""

    interventions: list[EraserEdit]
    """One :class:`EraserEdit` per site; pass the list to ``steer`` to apply them all."""
    erasers: dict[str, LeaceEraser]
    """Site name -> the LEACE eraser fitted there."""


def _row_labels(labels: Tensor, doc_ids: Tensor, n_texts: int) -> Tensor:
    """Labels per captured row: per-text labels broadcast through ``doc_ids``, or per row."""
    labels = torch.as_tensor(labels)
    if labels.shape[0] == doc_ids.shape[0] and labels.shape[0] != n_texts:
        return labels
    if labels.shape[0] != n_texts:
        raise ValueError(
            f"labels has {labels.shape[0]} entries; need one per text ({n_texts}) or one per "
            f"captured row ({doc_ids.shape[0]})"
        )
    return labels[doc_ids]


def scrub(
    handle: ModelHandle,
    texts: Sequence[str],
    labels: Tensor,
    sites: str | Sequence[str],
    *,
    positions: Any = "last",
    apply_positions: str | Positions = "all",
    batch_size: int = 16,
    fitter_kwargs: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ScrubResult:
    """Concept scrubbing: fit LEACE site by site, each on activations already scrubbed upstream.

    For the sites in execution order: capture the site's activations at ``positions`` inside
    ``steer(handle, erasers so far)``, fit a :class:`~steerlab.erasure.leace.LeaceFitter` on
    them, and add its :class:`EraserEdit` (applied at ``apply_positions``) to the list.

    Args:
        handle: the model.
        texts: the texts that carry the concept.
        labels: class indices, one per text (broadcast to every captured token of the text)
            or one per captured row (per-token labels, e.g. with ``positions="all"``).
        sites: the sites to scrub (any order; they are sorted into execution order).
        positions: capture rule for the fit (``"last"``, ``"all"``, a mask or spans; see
            :func:`steerlab.capture.capture`).
        apply_positions: steering rule for applying the erasers in the model.
        batch_size: sequences per capture forward.
        fitter_kwargs: passed to ``LeaceFitter`` (``method``, ``shrinkage``, ``affine``, ...).
        progress: called with each site name once it is fitted.
    """
    texts = list(texts)
    site_list = sorted(parse_sites(sites, handle.n_layers))
    if not site_list:
        raise ValueError("no sites to scrub")
    edits: list[EraserEdit] = []
    erasers: dict[str, LeaceEraser] = {}
    for site in site_list:
        with steer(handle, edits):
            cap = capture(handle, texts, site.name, positions=positions, batch_size=batch_size)
        z = _row_labels(labels, cap.doc_ids, len(texts))
        eraser = LeaceEraser.fit(cap[site.name], z, **(fitter_kwargs or {}))
        erasers[site.name] = eraser
        edits.append(EraserEdit(eraser, site.name, apply_positions))
        logger.info("scrub: fitted %s (edit rank %d) on %d rows", site.name, eraser.edit_rank,
                    len(cap))  # fmt: skip
        if progress is not None:
            progress(site.name)
    return ScrubResult(edits, erasers)


# --- language-modelling cost ----------------------------------------------------------------


class LMCost(NamedTuple):
    """Mean next-token cross-entropy (nats/token) with and without interventions."""

    ce_base: float
    """Cross-entropy of the unedited model."""
    ce_edited: float
    """Cross-entropy with the interventions applied."""
    increase: float
    """``ce_edited − ce_base``: the cost of the erasure in nats per token."""
    n_tokens: int
    """Number of predicted tokens averaged over."""


def lm_cost(
    handle: ModelHandle,
    input_ids: Any,
    interventions: Intervention | Sequence[Intervention],
    *,
    batch_size: int = 8,
    base: float | None = None,
) -> LMCost:
    """Cross-entropy of a token corpus with and without ``interventions``
    (:func:`steerlab.interventions.loss.lm_loss`, which applies them through ``steer``).

    Args:
        handle: the model.
        input_ids: ``[n_seq, seq_len]`` token windows, or :class:`steerlab.datasets.TokenChunks`;
            every window is one unpadded forward.
        interventions: what to apply (an empty list gives ``increase == 0`` exactly).
        batch_size: windows per forward.
        base: a known ``ce_base`` for these windows (skips the unedited pass).
    """
    edited = lm_loss(handle, input_ids, interventions, batch_size=batch_size)
    if base is None:
        base = lm_loss(handle, input_ids, batch_size=batch_size).loss
    if not math.isfinite(edited.loss):
        logger.warning("lm_cost: the edited model's cross-entropy is %s", edited.loss)
    return LMCost(base, edited.loss, edited.loss - base, edited.n_tokens)
