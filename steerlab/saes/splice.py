"""Splice an SAE into the model and measure the loss it costs.

:class:`SaeSplice` is a steering intervention (:mod:`steerlab.steering`) whose edit replaces the
site's activations by the SAE's reconstruction, ``h' = x̂(h)``; :class:`Replace` sets them to a
constant (zero- or mean-ablation). Both are registered artifact kinds, so
``iv.save(dir)`` / :func:`steerlab.steering.load_intervention` round-trip them, and both work
with every backend of :func:`steerlab.steering.steer` and with its position rules.

:func:`spliced_losses` runs token windows clean, with the SAE spliced in, zero-ablated and
mean-ablated, and reports for each

- cross-entropy of the next token, ``CE = −(1/N) Σ_t log p(y_{t+1} | y_{≤t})``, over the
  ``N = n_windows · (seq_len − 1)`` predicted tokens;
- KL divergence from the clean model, ``KL = (1/N) Σ_t Σ_v p_clean log(p_clean / p)``, over
  the same positions;

and the loss recovered ``(L_ablated − L_spliced) / (L_ablated − L_clean)`` of both
(:func:`steerlab.saes.evals.ce_loss_recovered`; for KL, ``L_clean = 0``). Sums are float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.interventions.algebra import Intervention, _finite, _kind, _positions_from
from steerlab.interventions.hooks import steer
from steerlab.positions import Positions
from steerlab.saes.evals import LossRecovered, ce_loss_recovered
from steerlab.saes.sae import Sae, SaeConfig, build_sae

if TYPE_CHECKING:
    from steerlab.capture.store import ActivationStore

__all__ = ["Replace", "SaeSplice", "SpliceLosses", "spliced_losses", "store_windows"]


@_kind("sae_splice")
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
        self, sae: Sae, site: str | None = None, positions: str | Positions = "all"
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
        obj = cls(sae, cfg["site"], _positions_from(cfg, tensors))
        return obj._finish_load(cfg, tensors)


@_kind("replace")
class Replace(Intervention):
    """Set a site's activations to a constant: ``h' = c`` (zero- or mean-ablation).

    Args:
        value: ``[d]`` the constant (zeros for zero-ablation, the site's mean for
            mean-ablation).
        site: where to apply it.
        positions: the position rule (default every token).
    """

    def __init__(self, value: Float[Tensor, " d"], site: str, positions: str | Positions = "all"):
        value = _finite(value, "replacement value")
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
        obj = cls(tensors["value"], cfg["site"], _positions_from(cfg, tensors))
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


def _logits(handle: Any, ids: Tensor) -> Tensor:
    out = handle.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return out.logits[:, :-1].float()  # predictions of tokens 1..T-1


@torch.no_grad()
def spliced_losses(
    handle: Any,
    sae: Sae,
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
    edits. The windows are full (no padding).

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
    ids = torch.as_tensor(input_ids)
    if ids.ndim != 2 or ids.shape[1] < 2 or ids.shape[0] < 1:
        raise ValueError(f"input_ids must be [n_seq, pos >= 2], got {tuple(ids.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    site = site or sae.cfg.site
    if site is None:
        raise ValueError("the SAE has no cfg.site; pass site=")
    edits: dict[str, Intervention] = {
        "spliced": SaeSplice(sae, site, positions),
        "zero_abl": Replace.zeros(sae.d_in, site, positions),
    }
    if mean is not None:
        edits["mean_abl"] = Replace(mean.float(), site, positions)
    ce = dict.fromkeys(["clean", *edits], 0.0)
    kl = dict.fromkeys(edits, 0.0)
    n = 0
    for s in range(0, ids.shape[0], batch_size):
        x = ids[s : s + batch_size].to(handle.device)
        y = x[:, 1:].reshape(-1)
        logp_clean = _logits(handle, x).log_softmax(-1).flatten(0, 1)
        ce["clean"] += float(F.nll_loss(logp_clean, y, reduction="sum").double())
        p_clean = logp_clean.exp()
        for name, iv in edits.items():
            with steer(handle, iv):
                logp = _logits(handle, x).log_softmax(-1).flatten(0, 1)
            ce[name] += float(F.nll_loss(logp, y, reduction="sum").double())
            # KL(p_clean ‖ p); xlogy-style: terms with p_clean = 0 contribute 0
            kl[name] += float((p_clean * (logp_clean - logp)).double().sum())
            del logp
        n += y.numel()
        if progress is not None:
            progress(min(s + batch_size, ids.shape[0]))
    ce_m = {k: v / n for k, v in ce.items()}
    kl_m = {k: v / n for k, v in kl.items()}
    nan = math.nan
    return SpliceLosses(
        ce_loss_recovered(
            ce_m["clean"], ce_m["spliced"], ce_m["zero_abl"], ce_m.get("mean_abl", nan)
        ),
        ce_loss_recovered(0.0, kl_m["spliced"], kl_m["zero_abl"], kl_m.get("mean_abl", nan)),
        n,
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
