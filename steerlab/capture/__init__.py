"""Capture activations at named sites, in memory or streamed into a sharded store.

    >>> from steerlab import load_model
    >>> from steerlab.capture import capture
    >>> model = load_model()                                    # embedded SmolLM2-135M
    >>> cap = capture(model, ["The year was 1999."], "resid_post.6", positions="all")
    >>> cap["resid_post.6"].shape                               # [n_tokens, d_model]
    torch.Size([9, 576])

The default ``hf`` backend hooks the HF modules directly and stops the forward pass after the
last requested site; ``transformer_lens`` and ``nnsight`` give the same numbers through those
libraries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from steerlab.capture.backends import BACKENDS, RUNNERS
from steerlab.sites import Site, parse_sites, site_width
from steerlab.tokens import (
    Encoded,
    PositionRule,
    SpanTokens,
    encode_texts,
    encode_tokens,
    selection_mask,
)

logger = logging.getLogger(__name__)

__all__ = ["Capture", "capture", "capture_to_store", "BACKENDS"]


@dataclass
class Capture:
    """Activations captured at several sites for the selected tokens.

    Attributes:
        acts: site name -> ``[n_rows, d]`` activations (rows in document, then position order).
        token_ids: ``[n_rows]`` the token at each row.
        doc_ids: ``[n_rows]`` index of the input text/sequence of each row.
        positions: ``[n_rows]`` token position of each row within its sequence.
        span_ids: ``[n_rows]`` which span of its text a row belongs to (-1 without spans).
        model_id: the model the activations came from.
    """

    acts: dict[str, Tensor]
    token_ids: Tensor
    doc_ids: Tensor
    positions: Tensor
    span_ids: Tensor
    model_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, site: str) -> Tensor:
        if site not in self.acts:
            raise KeyError(f"site {site!r} was not captured; captured: {sorted(self.acts)}")
        return self.acts[site]

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def sites(self) -> list[str]:
        return list(self.acts)


def _check_backend(backend: str) -> None:
    if backend not in RUNNERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")


def _batches(n: int, batch_size: int) -> Iterable[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def _run_batch(
    handle,
    enc: Encoded,
    rows: slice,
    sites: Sequence[Site],
    positions: Any,
    span_tokens: SpanTokens,
    backend: str,
    out_dtype: torch.dtype | None,
) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor, int]:
    sub = Encoded(
        enc.input_ids[rows],
        enc.attention_mask[rows],
        enc.special_mask[rows],
        None if enc.offsets is None else enc.offsets[rows],
    )
    # trim right padding of this batch so short batches run short forwards
    T = int(sub.attention_mask.sum(1).max())
    sub = Encoded(
        sub.input_ids[:, :T],
        sub.attention_mask[:, :T],
        sub.special_mask[:, :T],
        None if sub.offsets is None else sub.offsets[:, :T],
    )
    pos_rule = positions[rows] if isinstance(positions, list) else positions
    if isinstance(pos_rule, Tensor):
        pos_rule = pos_rule[rows][:, :T]
    mask, span_ids = selection_mask(sub, pos_rule, span_tokens)
    b_idx, p_idx = mask.nonzero(as_tuple=True)
    flat = (b_idx * T + p_idx).to(handle.device)
    acts = {}
    if len(flat):
        with torch.inference_mode():
            acts = RUNNERS[backend](
                handle,
                sub.input_ids.to(handle.device),
                sub.attention_mask.to(handle.device),
                sites,
                flat,
            )
    acts = {
        s.name: acts[s.name].to("cpu", out_dtype)
        if s.name in acts
        else torch.empty(0, site_width(handle, s))
        for s in sites
    }
    n_tok = int(sub.attention_mask.sum())
    return (
        acts,
        sub.input_ids[b_idx, p_idx],
        b_idx + rows.start,
        p_idx,
        span_ids[b_idx, p_idx],
        n_tok,
    )


def _encode(handle, inputs: Any, attention_mask: Tensor | None, max_length: int | None) -> Encoded:
    if hasattr(inputs, "input_ids") and isinstance(inputs.input_ids, Tensor):
        return encode_tokens(
            handle, inputs.input_ids, attention_mask
        )  # TokenChunks / BatchEncoding
    if isinstance(inputs, Tensor):
        return encode_tokens(handle, inputs, attention_mask)
    if isinstance(inputs, str):
        inputs = [inputs]
    return encode_texts(handle, list(inputs), max_length)


def capture(
    handle,
    inputs: str | Sequence[str] | Tensor | Any,
    sites: str | Sequence[str],
    *,
    positions: PositionRule = "all",
    span_tokens: SpanTokens = "all",
    backend: str = "hf",
    batch_size: int = 8,
    attention_mask: Tensor | None = None,
    max_length: int | None = None,
    dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> Capture:
    """Run the model on ``inputs`` and return activations at ``sites`` for selected tokens.

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        inputs: a text, a list of texts, a token tensor ``[batch, pos]``, or
            :class:`steerlab.datasets.TokenChunks`.
        sites: site names (``"resid_post.6"``) or a comma-separated string.
        positions: ``"all"`` (real tokens, no padding or BOS), ``"last"``, a boolean mask
            ``[batch, pos]``, or character spans (one ``(start, end)`` or a list per text).
        span_tokens: with spans, keep ``"all"`` overlapping tokens, the ``"first"`` or ``"last"``.
        backend: ``"hf"`` (fast, default), ``"transformer_lens"`` or ``"nnsight"``.
        batch_size: sequences per forward pass.
        attention_mask: for token input with padding.
        max_length: truncate longer texts (with a warning); default the model's context.
        dtype: dtype of the returned activations (default: the model's).
        progress: called with the number of tokens processed after each batch.
    """
    _check_backend(backend)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    site_list = parse_sites(sites, handle.n_layers)
    enc = _encode(handle, inputs, attention_mask, max_length)
    if isinstance(positions, Tensor) and positions.shape != enc.input_ids.shape:
        raise ValueError(
            f"position mask {tuple(positions.shape)} does not match the token "
            f"batch {tuple(enc.input_ids.shape)}"
        )
    parts = []
    for rows in _batches(len(enc.input_ids), batch_size):
        parts.append(
            _run_batch(handle, enc, rows, site_list, positions, span_tokens, backend, dtype)
        )
        if progress is not None:
            progress(parts[-1][5])
    acts = {s.name: torch.cat([p[0][s.name] for p in parts]) for s in site_list}
    return Capture(
        acts=acts,
        token_ids=torch.cat([p[1] for p in parts]),
        doc_ids=torch.cat([p[2] for p in parts]),
        positions=torch.cat([p[3] for p in parts]),
        span_ids=torch.cat([p[4] for p in parts]),
        model_id=handle.model_id,
        meta={
            "backend": backend,
            "n_truncated": enc.n_truncated,
            "tokenizer": handle.tokenizer_settings(),
        },
    )


def capture_to_store(
    handle,
    chunks: Any,
    sites: str | Sequence[str],
    path: str,
    *,
    dtype: str = "float32",
    batch_size: int = 8,
    shard_tokens: int = 65536,
    positions: str = "all",
    fingerprints: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
):
    """Stream activations of a token corpus into an on-disk store, resumably.

    The corpus is processed in order, ``batch_size`` sequences at a time; the store flushes a
    shard (atomically) every ~``shard_tokens`` rows. Rerunning with the same arguments after an
    interruption skips the sequences already in complete shards and finishes the store.

    Args:
        handle: the model.
        chunks: :class:`steerlab.datasets.TokenChunks` (or anything with ``input_ids [n, seq]``).
        sites: sites to capture.
        path: store directory.
        dtype: "float32", "float16" or "bfloat16" on disk.
        batch_size: sequences per forward pass.
        shard_tokens: rows per shard (approximately; shards end at batch boundaries).
        positions: ``"all"`` or ``"last"``.
        fingerprints: extra fingerprints to record (the corpus and tokenizer ones are added).
        config: extra settings to record; must match on resume.
        overwrite: replace an existing store at ``path``.
        progress: called with tokens processed after each batch (skipped ones included once).

    Returns:
        The finished :class:`steerlab.capture.store.ActivationStore`.
    """
    from steerlab.capture.store import ActivationStore, StoreWriter

    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    site_list = parse_sites(sites, handle.n_layers)
    ids = chunks.input_ids if hasattr(chunks, "input_ids") else chunks
    enc = encode_tokens(handle, ids)
    fps = {"tokenizer": handle.tokenizer_fingerprint()}
    if getattr(chunks, "fingerprint", None):
        fps["corpus"] = chunks.fingerprint
    fps.update(fingerprints or {})
    cfg = {
        "positions": positions,
        "seq_len": int(ids.shape[1]),
        "n_sequences_total": len(ids),
        "tokenizer": handle.tokenizer_settings(),
        **(config or {}),
    }
    writer = StoreWriter(
        path,
        model_id=handle.model_id,
        sites={s.name: site_width(handle, s) for s in site_list},
        dtype=dtype,
        shard_tokens=shard_tokens,
        fingerprints=fps,
        config=cfg,
        overwrite=overwrite,
    )
    with writer:
        start = writer.n_sequences
        if start:
            logger.info("resuming %s after %d of %d sequences", path, start, len(ids))
            if progress is not None:
                progress(int(enc.attention_mask[:start].sum()))
        if not writer.complete:
            for rows in _batches(len(ids) - start, batch_size):
                rows = slice(rows.start + start, rows.stop + start)
                acts, tok, doc, pos, _, n_tok = _run_batch(
                    handle, enc, rows, site_list, positions, "all", "hf", None
                )
                writer.add(acts, tok, doc, pos, n_sequences=rows.stop - rows.start)
                if progress is not None:
                    progress(n_tok)
            writer.finish()
    return ActivationStore(path)
