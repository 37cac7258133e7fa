"""The language-model loss of token sequences with and without interventions, in one place.

For token sequences ``y`` (rows of ``tokens``), the next-token cross-entropy over the counted
targets ``C`` is

    ``CE = −(1/|C|) Σ_{(b,t+1) ∈ C} log p(y_{b,t+1} | y_{b,≤t})``        (nats per token)

computed with the interventions applied through :func:`~steerlab.interventions.hooks.steer`.
A target ``t + 1`` is counted when both ``t`` and ``t + 1`` are real tokens (attention mask)
and ``loss_mask`` (if given) selects ``t + 1``. The KL divergence from the unedited model is

    ``KL = (1/|C|) Σ_{(b,t+1) ∈ C} Σ_v p_clean(v) (log p_clean(v) − log p(v))``

over the same positions. Logits are the model's (float32 for a float32 model); the
log-softmax is taken in float64, a few hundred rows at a time (a float32 ``logsumexp`` over a
49k vocabulary is off by up to ~2e-5 nats), over the counted rows only, and every sum over
tokens is accumulated in float64.

:func:`lm_loss` runs one set of interventions (and, for ``kl=True``, the clean model beside
it); :func:`lm_losses` runs several sets against one clean pass, so KL and "loss recovered"
need one clean forward per batch. They are what the erasure cost
(:func:`steerlab.erasure.scrub.lm_cost`), the SAE splice metrics
(:func:`steerlab.saes.splice.spliced_losses`) and continuation perplexities
(:func:`steerlab.steering.scores.continuation_scores`) are built on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlab.interventions.hooks import steer
from steerlab.interventions.kinds import Intervention
from steerlab.models import ModelHandle
from steerlab.tokens import Encoded, batch_scope

__all__ = ["CLEAN", "LMLoss", "lm_loss", "lm_losses"]

CLEAN = "clean"
"""Key of the unedited model's loss in :func:`lm_losses`."""

Edits = Intervention | Sequence[Intervention]
Reduction = Literal["mean", "none"]


class LMLoss(NamedTuple):
    """Next-token cross-entropy of a set of sequences (see the module docstring)."""

    loss: float
    """Mean cross-entropy over the counted targets, nats per token (nan if none counted)."""
    n_tokens: int
    """Number of counted targets ``|C|``."""
    per_token: Float[Tensor, "n_seq pos_minus_1"] | None
    """With ``reduction="none"``: the cross-entropy of target ``t + 1`` at column ``t``
    (float64, on the CPU), NaN where the target is not counted; else None."""
    kl: float | None
    """With ``kl=True``: the mean KL divergence from the unedited model (0 for the clean run
    itself); else None."""


def _as_tokens(tokens: Any) -> Tensor:
    ids = tokens.input_ids if hasattr(tokens, "input_ids") else tokens
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.shape[1] < 2 or ids.shape[0] < 1:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"tokens (input_ids) must be [n_seq >= 1, seq_len >= 2] token ids, "
                         f"got {shape}")  # fmt: skip
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"tokens must be integer token ids, got {ids.dtype}")
    return ids


def _counted(
    ids: Tensor, attention_mask: Tensor | None, loss_mask: Tensor | None
) -> Bool[Tensor, "n_seq pos_minus_1"]:
    """Which targets count: both tokens real, and the target selected by ``loss_mask``."""
    counted = torch.ones(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool)
    for name, m in (("attention_mask", attention_mask), ("loss_mask", loss_mask)):
        if m is None:
            continue
        if not isinstance(m, Tensor) or tuple(m.shape) != tuple(ids.shape):
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"{name} must have the shape of tokens {tuple(ids.shape)}, got {shape}"
            )
        m = m.bool().cpu()
        counted &= m[:, 1:]
        if name == "attention_mask":
            counted &= m[:, :-1]  # a target after padding has no context (left padding)
    return counted


def _edits(interventions: Edits) -> list[Intervention]:
    if isinstance(interventions, Intervention):
        return [interventions]
    out = list(interventions)
    if not all(isinstance(iv, Intervention) for iv in out):
        raise TypeError("interventions must be Intervention modules (or a list of them)")
    return out


def _rows(
    handle: ModelHandle,
    ids: Tensor,
    mask: Tensor | None,
    counted: Tensor,
    edits: list[Intervention],
    first: int = 0,
) -> Float[Tensor, "n vocab"]:
    """The logits that predict the counted targets (row ``(b, t)`` predicts token ``t + 1``).

    ``first`` is the index of the batch's first sequence among all of them: rules that name
    tokens of particular sequences (``Positions(tokens="indices")``, spans) resolve each row
    against its own sequence, whatever the batch size."""
    real = torch.ones_like(ids) if mask is None else mask
    enc = Encoded(ids, real, torch.zeros_like(ids, dtype=torch.bool))
    scope = batch_scope(enc, range(first, first + ids.shape[0]))
    with scope, steer(handle, edits) if edits else nullcontext():
        out = handle.model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.logits[:, :-1][counted].float()  # boolean indexing: one copy, counted rows only


_CHUNK_ELEMENTS = 1 << 23
"""float64 rows converted at a time: 8M entries (64 MB), ~170 rows of a 49k vocabulary."""


def _ce_rows(rows: Float[Tensor, "n vocab"], targets: Int[Tensor, " n"]) -> Tensor:
    """``logsumexp(z) − z_y`` per row, in float64, a chunk of rows at a time."""
    step = max(1, _CHUNK_ELEMENTS // rows.shape[-1])
    out = [
        torch.logsumexp(z.double(), -1) - z.gather(1, t[:, None])[:, 0].double()
        for z, t in zip(rows.split(step), targets.split(step))
    ]
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float64)


def _kl_rows(ref: Float[Tensor, "n vocab"], rows: Float[Tensor, "n vocab"]) -> Tensor:
    """``Σ_v p_ref (log p_ref − log p)`` per row, in float64, a chunk of rows at a time."""
    step = max(1, _CHUNK_ELEMENTS // rows.shape[-1])
    out = []
    for r, z in zip(ref.split(step), rows.split(step)):
        lr, lz = r.double().log_softmax(-1), z.double().log_softmax(-1)
        out.append((lr.exp() * (lr - lz)).sum(-1))  # p_ref = 0 terms: 0 · finite = 0
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float64)


@torch.no_grad()
def _run(
    handle: ModelHandle,
    tokens: Any,
    runs: dict[str, list[Intervention]],
    attention_mask: Tensor | None,
    loss_mask: Tensor | None,
    batch_size: int,
    reduction: Reduction,
    kl: bool,
    progress: Callable[[int], Any] | None,
) -> dict[str, LMLoss]:
    """Every run of ``runs`` on each batch in turn; with ``kl`` the first run is the
    reference (the clean model)."""
    ids = _as_tokens(tokens)
    counted = _counted(ids, attention_mask, loss_mask)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    ce_sum = dict.fromkeys(runs, 0.0)
    kl_sum = dict.fromkeys(runs, 0.0)
    per_token: dict[str, list[Tensor]] = {name: [] for name in runs}
    dev = handle.device
    for s in range(0, ids.shape[0], batch_size):
        x = ids[s : s + batch_size].to(dev)
        m = None if attention_mask is None else attention_mask[s : s + batch_size].to(dev)
        c = counted[s : s + batch_size]
        c_dev = c.to(dev)
        y = x[:, 1:][c_dev]
        ref = None
        for name, ivs in runs.items():
            rows = _rows(handle, x, m, c_dev, ivs, first=s)
            ce = _ce_rows(rows, y)
            ce_sum[name] += float(ce.sum())
            if reduction == "none":
                full = torch.full(c.shape, math.nan, dtype=torch.float64)
                full[c] = ce.cpu()
                per_token[name].append(full)
            if kl:
                if ref is None:  # the first run is the clean model
                    ref = rows
                else:
                    kl_sum[name] += float(_kl_rows(ref, rows).sum())
        if progress is not None:
            progress(min(s + batch_size, ids.shape[0]))
    n = int(counted.sum())
    return {
        name: LMLoss(
            ce_sum[name] / n if n else math.nan,
            n,
            torch.cat(per_token[name]) if reduction == "none" else None,
            (kl_sum[name] / n if n else math.nan) if kl else None,
        )
        for name in runs
    }


def lm_losses(
    handle: ModelHandle,
    tokens: Int[Tensor, "n_seq pos"] | Any,
    edits: Mapping[str, Edits],
    *,
    attention_mask: Int[Tensor, "n_seq pos"] | None = None,
    loss_mask: Bool[Tensor, "n_seq pos"] | None = None,
    batch_size: int = 8,
    reduction: Reduction = "mean",
    kl: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, LMLoss]:
    """The loss of the clean model and of each set of interventions, in one pass over batches.

    Each batch runs the clean model once and every entry of ``edits`` once (under
    :func:`steer`); the KL of an entry is against that clean run.

    Args:
        handle: the causal language model.
        tokens: ``[n_seq, pos]`` token ids, or anything with ``.input_ids`` (e.g.
            :class:`steerlab.datasets.corpora.TokenChunks`).
        edits: name -> an intervention or a list of them (applied in order at each site).
        attention_mask: ``[n_seq, pos]`` 1 for real tokens (left or right padding); None: all.
        loss_mask: ``[n_seq, pos]`` True for the tokens whose prediction counts; None: all.
        batch_size: sequences per forward.
        reduction: ``"mean"`` or ``"none"`` (also return :attr:`LMLoss.per_token`).
        kl: also compute the KL divergence from the clean model.
        progress: called with the number of sequences done after each batch.

    Returns:
        name -> :class:`LMLoss`, with the clean model under :data:`CLEAN` (first).
    """
    if CLEAN in edits:
        raise ValueError(f"{CLEAN!r} names the unedited model; give the edit another name")
    runs = {CLEAN: [], **{name: _edits(ivs) for name, ivs in edits.items()}}
    return _run(handle, tokens, runs, attention_mask, loss_mask, batch_size, reduction, kl,
                progress)  # fmt: skip


def lm_loss(
    handle: ModelHandle,
    tokens: Int[Tensor, "n_seq pos"] | Any,
    interventions: Edits = (),
    *,
    attention_mask: Int[Tensor, "n_seq pos"] | None = None,
    loss_mask: Bool[Tensor, "n_seq pos"] | None = None,
    batch_size: int = 8,
    reduction: Reduction = "mean",
    kl: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> LMLoss:
    """Next-token cross-entropy of ``tokens`` under ``steer(handle, interventions)``.

    One forward per batch; with ``kl=True`` (and interventions) each batch also runs the
    clean model, for the KL divergence from it. The arguments are those of
    :func:`lm_losses`.

        >>> base = lm_loss(handle, windows).loss
        >>> edited = lm_loss(handle, windows, EraserEdit(eraser, "resid_post.6")).loss
    """
    edits = _edits(interventions)
    runs = {CLEAN: [], "edited": edits} if kl and edits else {"edited": edits}
    out = _run(handle, tokens, runs, attention_mask, loss_mask, batch_size, reduction, kl,
               progress)  # fmt: skip
    return out["edited"]
