"""Splice an SAE into the model and measure the loss it costs.

:class:`SaeSplice` is an intervention (:mod:`steerlab.interventions`) whose edit replaces the
site's activations by the SAE's reconstruction, ``h' = x̂(h)``; :class:`Replace` sets them to a
constant (zero- or mean-ablation). Both are registered artifact kinds, so
``iv.save(dir)`` / :func:`steerlab.interventions.load_intervention` round-trip them, and both
work with every backend of :func:`steerlab.interventions.steer` and with its position rules.

:func:`spliced_losses` runs token windows clean, with the SAE spliced in, zero-ablated and
mean-ablated, and reports for each

- cross-entropy of the next token, ``CE = −(1/N) Σ_t log p(y_{t+1} | y_{≤t})``, over the
  ``N = n_windows · (seq_len − 1)`` predicted tokens;
- KL divergence from the clean model, ``KL = (1/N) Σ_t Σ_v p_clean log(p_clean / p)``, over
  the same positions;

and the loss recovered ``(L_ablated − L_spliced) / (L_ablated − L_clean)`` of both
(:func:`steerlab.saes.evals.ce_loss_recovered`; for KL, ``L_clean = 0``). Both losses come
from :func:`steerlab.interventions.loss.lm_losses`; sums are float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.checks import check_finite
from steerlab.interventions.algebra import (
    Intervention,
    positions_from_config,
    register_intervention,
)
from steerlab.interventions.loss import CLEAN, lm_losses
from steerlab.models import ModelHandle
from steerlab.positions import Positions
from steerlab.saes.evals import LossRecovered, ce_loss_recovered
from steerlab.saes.sae import Sae, SaeConfig, build_sae

if TYPE_CHECKING:
    from steerlab.capture.store import ActivationStore
    from steerlab.saes.normalize import NormalizedSae

__all__ = ["Replace", "SaeSplice", "SpliceLosses", "spliced_losses", "store_windows"]


@register_intervention("sae_splice")
class SaeSplice(Intervention):
    """Replace a site's activations by an SAE's reconstruction: ``h' = x̂(h)``.

    ``x̂ = decode(encode(h))`` (:meth:`Sae.reconstruct`) at the positions of the rule; other
    positions are unchanged. The SAE is a submodule, so ``save``/``load`` store its weights
    (``sae.W_enc`` ...) and its :class:`SaeConfig` in ``cfg.json``.

    Args:
        sae: the SAE (its ``d_in`` must be the site's width).
        site: where to splice it; default ``sae.cfg.site``.
        positions: the position rule (default every token).
    """

    def __init__(
        self, sae: Sae | NormalizedSae, site: str | None = None, positions: str | Positions = "all"
    ) -> None:
        site = site or sae.cfg.site
        if site is None:
            raise ValueError("the SAE has no cfg.site; pass site=")
        super().__init__(site, positions, sae.d_in)
        self.sae = sae

    def edit(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return self.sae.reconstruct(h)

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "sae": self.sae.cfg.to_dict()}

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        sae = build_sae(SaeConfig.from_dict(cfg["sae"]))
        obj = cls(sae, cfg["site"], positions_from_config(cfg, tensors))
        return obj._finish_load(cfg, tensors)


@register_intervention("replace")
class Replace(Intervention):
    """Set a site's activations to a constant: ``h' = c`` (zero- or mean-ablation).

    Args:
        value: ``[d]`` the constant (zeros for zero-ablation, the site's mean for
            mean-ablation).
        site: where to apply it.
        positions: the position rule (default every token).
    """

    # registered buffers and submodules, declared for type checkers (nn.Module.__getattr__ is
    # typed Tensor | Module)
    value: Tensor

    def __init__(self, value: Float[Tensor, " d"], site: str, positions: str | Positions = "all"):
        value = check_finite(value, "replacement value", floating=True)
        if value.ndim != 1:
            raise ValueError(f"replacement value must be [d], got shape {tuple(value.shape)}")
        super().__init__(site, positions, value.shape[0])
        self.register_buffer("value", value.detach().clone())

    @classmethod
    def zeros(cls, d: int, site: str, positions: str | Positions = "all") -> Replace:
        """Zero-ablation of a site of width ``d``."""
        return cls(torch.zeros(d), site, positions)

    def edit(self, h: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        # a fresh tensor, not an expanded view: later modules may write into it
        return self.value.to(h).expand_as(h).clone()

    @classmethod
    def _from_saved(cls, cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Intervention:
        obj = cls(tensors["value"], cfg["site"], positions_from_config(cfg, tensors))
        return obj._finish_load(cfg, tensors)


class SpliceLosses(NamedTuple):
    """Losses of :func:`spliced_losses` (nats per predicted token).

    Attributes:
        ce: cross-entropy clean / spliced / zero- / mean-ablated and the recovered fractions
            (``mean_abl`` and ``vs_mean`` are nan without a mean).
        kl: KL divergence from the clean model, same fields (``clean = 0``).
        n_tokens: predicted tokens the means are over.
    """

    ce: LossRecovered
    kl: LossRecovered
    n_tokens: int

    def as_dict(self) -> dict[str, Any]:
        """Nested plain dict for JSON."""
        return {"ce": self.ce._asdict(), "kl": self.kl._asdict(), "n_tokens": self.n_tokens}


def spliced_losses(
    handle: ModelHandle,
    sae: Sae | NormalizedSae,
    input_ids: Int[Tensor, "n_seq pos"],
    *,
    site: str | None = None,
    mean: Float[Tensor, " d"] | None = None,
    positions: str | Positions = "all",
    batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
) -> SpliceLosses:
    """CE and KL loss recovered of ``sae`` spliced at ``site``, vs zero- and mean-ablation.

    Every window is run four times (three without ``mean``): clean, with :class:`SaeSplice`,
    with ``Replace(0)``, with ``Replace(mean)``; the same positions rule applies to all three
    edits. The windows are full (no padding). The losses are those of
    :func:`steerlab.interventions.loss.lm_losses` (one clean pass per batch for the KL).

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        sae: the SAE.
        input_ids: token windows, e.g. ``chunk_tokens(...).input_ids``; at least 2 tokens each.
        site: where to splice; default ``sae.cfg.site``.
        mean: the site's mean activation (e.g. ``activation_stats(store, site).mean``); None
            skips mean-ablation.
        positions: which tokens are replaced.
        batch_size: windows per forward.
        progress: called with the number of windows done after each batch.

    Returns:
        :class:`SpliceLosses`.
    """
    site = site or sae.cfg.site
    if site is None:
        raise ValueError("the SAE has no cfg.site; pass site=")
    edits: dict[str, Intervention] = {
        "spliced": SaeSplice(sae, site, positions),
        "zero_abl": Replace.zeros(sae.d_in, site, positions),
    }
    if mean is not None:
        edits["mean_abl"] = Replace(mean.float(), site, positions)
    res = lm_losses(handle, torch.as_tensor(input_ids), edits, batch_size=batch_size, kl=True,
                    progress=progress)  # fmt: skip
    ce = {k: r.loss for k, r in res.items()}
    kl = {k: float(r.kl) for k, r in res.items() if r.kl is not None}  # all of them: kl=True
    nan = math.nan
    return SpliceLosses(
        ce_loss_recovered(ce[CLEAN], ce["spliced"], ce["zero_abl"], ce.get("mean_abl", nan)),
        ce_loss_recovered(0.0, kl["spliced"], kl["zero_abl"], kl.get("mean_abl", nan)),
        res[CLEAN].n_tokens,
    )


def store_windows(store: ActivationStore, n_windows: int) -> Int[Tensor, "n_windows pos"]:
    """Rebuild ``n_windows`` of a store's token windows, evenly spaced over the store.

    A store captured with ``positions="all"`` holds every token of every window in order
    (``doc_ids`` = window, ``positions`` = index in it), so window ``w`` is rows
    ``[w·T, (w+1)·T)``. These are the exact token windows the activations came from, so the
    loss recovered is measured on the SAE's own data distribution.

    Raises:
        ValueError: the store does not hold complete windows in order.
    """
    n_tok = store.n_tokens
    T = int((store.manifest.get("config") or {}).get("seq_len") or 0)
    if T < 2 or n_tok % T:
        raise ValueError(
            f"{store.path}: no complete windows of a known seq_len (seq_len={T or None}, "
            f"{n_tok} tokens); pass token windows to spliced_losses yourself"
        )
    total = n_tok // T
    if n_windows < 1:
        raise ValueError(f"n_windows must be >= 1, got {n_windows}")
    n_windows = min(n_windows, total)
    picks = torch.linspace(0, total - 1, n_windows).round().long().unique()
    rows = (picks[:, None] * T + torch.arange(T)).reshape(-1)
    meta = {k: store.site(k)[rows].long().reshape(len(picks), T)
            for k in ("token_ids", "doc_ids", "positions")}  # fmt: skip
    in_order = (meta["positions"] == torch.arange(T)).all() and (
        meta["doc_ids"] == meta["doc_ids"][:, :1]
    ).all()
    if not in_order:
        raise ValueError(f"{store.path}: rows are not whole windows in order (positions != 'all'?)")
    return meta["token_ids"]
