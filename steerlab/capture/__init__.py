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

from steerlab import distributed as dist
from steerlab.capture.backends import BACKENDS, RUNNERS
from steerlab.capture.ranks import RankStoreWriter, commit
from steerlab.capture.store import ActivationStore, StoreWriter
from steerlab.checks import check_int
from steerlab.models import ModelHandle
from steerlab.positions import Positions, SpanTokens, as_positions, spans, view_of
from steerlab.sites import Site, parse_sites, site_width
from steerlab.tokens import Encoded, PaddingSide, batch_scope, encode_texts, encode_tokens

logger = logging.getLogger(__name__)

__all__ = ["Capture", "capture", "capture_to_store", "BACKENDS", "PositionRule"]

#: what ``capture(positions=...)`` accepts: a rule (string or :class:`Positions`), a boolean
#: mask ``[batch, pos]``, or character spans (one ``(start, end)`` or a list per text)
PositionRule = str | Positions | Tensor | list


@dataclass
class Capture:
    """Activations captured at several sites for the selected tokens.

    Attributes:
        acts: site name -> ``[n_rows, d]`` activations (rows in document, then position order).
        token_ids: ``[n_rows]`` the token at each row.
        doc_ids: ``[n_rows]`` index of the input text/sequence of each row.
        positions: ``[n_rows]`` index of each row's token among its sequence's real tokens
            (an added BOS counts; padding does not): the column of a right-padded batch.
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


def _batches(n: int, batch_size: int) -> Iterable[range]:
    for i in range(0, n, batch_size):
        yield range(i, min(n, i + batch_size))


def _rule(positions: PositionRule, span_tokens: SpanTokens, enc: Encoded) -> Positions | Tensor:
    """The capture rule as a :class:`Positions` or a checked boolean mask."""
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or positions.shape != enc.input_ids.shape:
            raise ValueError(
                f"a position mask must be bool {tuple(enc.input_ids.shape)} like the token "
                f"batch, got {positions.dtype} {tuple(positions.shape)}"
            )
        return positions
    if isinstance(positions, (list, tuple)):
        if len(positions) != len(enc):
            raise ValueError(
                f"got {len(positions)} span entries for {len(enc)} texts; give one per text"
            )
        return spans(positions, span_tokens)
    rule = as_positions(positions)  # span_tokens only shapes a plain list of spans
    if rule.tokens == "scored":
        raise ValueError("a scored rule selects by activations; it applies in steer(), not here")
    if rule.tokens in ("spans", "indices"):
        n = len(rule.spans if rule.spans is not None else rule.indices or ())
        if n != len(enc):
            raise ValueError(f"the rule names tokens of {n} texts, but there are {len(enc)}")
    return rule


def _run_batch(
    handle: ModelHandle,
    enc: Encoded,
    rows: range,
    sites: Sequence[Site],
    rule: Positions | Tensor,
    backend: str,
    out_dtype: torch.dtype | None,
) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, Tensor, int]:
    sl = slice(rows.start, rows.stop)
    sub = enc.take(sl)  # without the columns that are padding in every row of the batch
    T = sub.input_ids.shape[1]
    span_ids = torch.full(sub.input_ids.shape, -1, dtype=torch.long)
    if isinstance(rule, Tensor):
        mask = rule[sl][:, enc.columns(sl)] & sub.attention_mask.bool()
    elif rule.tokens == "spans":
        mask, span_ids = rule.span_hits(view_of(sub, list(rows)))
    else:
        mask = rule.mask(view_of(sub, list(rows)))
    b_idx, p_idx = mask.nonzero(as_tuple=True)
    flat = (b_idx * T + p_idx).to(handle.device)
    acts = {}
    if len(flat):
        # the batch scope lets a steer() context around capture() resolve its rules per batch
        with torch.inference_mode(), batch_scope(sub, list(rows)):
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
        sub.real_rank[b_idx, p_idx],
        span_ids[b_idx, p_idx],
        n_tok,
    )


def _encode(
    handle: ModelHandle,
    inputs: Any,
    attention_mask: Tensor | None,
    max_length: int | None,
    padding_side: PaddingSide,
) -> Encoded:
    if isinstance(inputs, Encoded):
        return inputs
    if hasattr(inputs, "input_ids") and isinstance(inputs.input_ids, Tensor):
        return encode_tokens(
            handle, inputs.input_ids, attention_mask
        )  # TokenChunks / BatchEncoding
    if isinstance(inputs, Tensor):
        return encode_tokens(handle, inputs, attention_mask)
    if isinstance(inputs, str):
        inputs = [inputs]
    return encode_texts(handle, list(inputs), max_length, padding_side=padding_side)


def capture(
    handle: ModelHandle,
    inputs: str | Sequence[str] | Tensor | Encoded | Any,
    sites: str | Sequence[str],
    *,
    positions: PositionRule = "all",
    span_tokens: SpanTokens = "all",
    backend: str = "hf",
    batch_size: int = 8,
    attention_mask: Tensor | None = None,
    max_length: int | None = None,
    padding_side: PaddingSide = "right",
    dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> Capture:
    """Run the model on ``inputs`` and return activations at ``sites`` for selected tokens.

    ``positions`` takes the rules of :mod:`steerlab.positions`, the same that say where
    :func:`steerlab.interventions.steer` edits, with the same meaning: ``"all"`` is every token
    of the text (never padding, never a BOS steerlab added for ``handle.add_bos``, never BERT's
    [CLS]/[SEP]); ``"last"`` the last of them; ``"prompt"``/``"generation"`` split an
    :class:`~steerlab.tokens.Encoded` batch with prompt lengths (texts are all prompt);
    ``"prompt:first_3"``, :func:`~steerlab.positions.token_ids`, ... Character spans, as
    :func:`~steerlab.positions.spans` or as a plain list (one ``(start, end)`` or a list of
    them per text, with ``span_tokens``), select the tokens whose offsets overlap them, batch
    by batch. A boolean mask ``[batch, pos]`` selects exactly its tokens (padding excepted).

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        inputs: a text, a list of texts, a token tensor ``[batch, pos]``,
            :class:`steerlab.datasets.TokenChunks`, or an :class:`~steerlab.tokens.Encoded`
            batch (e.g. prompt + completion pairs from :func:`steerlab.tokens.encode_pairs`).
        sites: site names (``"resid_post.6"``) or a comma-separated string.
        positions: the rule (see above).
        span_tokens: with a list of spans, keep ``"all"`` overlapping tokens, the ``"first"``
            or the ``"last"`` (other rules ignore it; a :func:`spans` rule carries its own).
        backend: ``"hf"`` (fast, default), ``"transformer_lens"`` or ``"nnsight"``.
        batch_size: sequences per forward pass.
        attention_mask: for token input with padding.
        max_length: truncate longer texts (with a warning); default the model's context.
        padding_side: how texts are padded (results agree up to float round-off).
        dtype: dtype of the returned activations (default: the model's).
        progress: called with the number of tokens processed after each batch.
    """
    _check_backend(backend)
    check_int(batch_size, "batch_size")
    check_int(max_length, "max_length", optional=True)
    site_list = parse_sites(sites if isinstance(sites, str) else list(sites), handle.n_layers)
    enc = _encode(handle, inputs, attention_mask, max_length, padding_side)
    rule = _rule(positions, span_tokens, enc)
    parts = []
    for rows in _batches(len(enc), batch_size):
        parts.append(_run_batch(handle, enc, rows, site_list, rule, backend, dtype))
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


def _rewrite_damaged(
    writer: StoreWriter,
    handle: ModelHandle,
    enc: Encoded,
    sites: Sequence[Site],
    rule: Positions | Tensor,
    batch_size: int,
) -> None:
    """Capture the sequences of each damaged shard of ``writer``'s store again and rewrite it."""
    if writer.damaged:
        names = ", ".join(d.file for d in writer.damaged)
        logger.warning("%s: rewriting damaged shard(s) %s", writer.path, names)
    for d in list(writer.damaged):
        seqs = writer.shard_sequences(d.index)
        with writer.rewrite_shard(d.index) as sub:
            for rows in _batches(len(seqs), batch_size):
                rows = range(rows.start + seqs.start, rows.stop + seqs.start)
                acts, tok, doc, pos, _, _ = _run_batch(handle, enc, rows, sites, rule, "hf", None)
                sub.add(acts, tok, doc, pos, n_sequences=len(rows))


def capture_to_store(
    handle: ModelHandle,
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
    distributed: bool | None = None,
) -> ActivationStore:
    """Stream activations of a token corpus into an on-disk store, resumably.

    The corpus is processed in order, ``batch_size`` sequences at a time; the store flushes a
    shard (atomically) every ~``shard_tokens`` rows. Rerunning with the same arguments after an
    interruption skips the sequences already in complete shards and finishes the store.

    Every rerun over an existing store (complete or not) first verifies each listed shard's
    sha256; damaged or missing shards are logged by name (a warning) and captured again from
    their sequences, which rewrites exactly those shard files and nothing else.

    **Distributed** (under ``torchrun``, after :func:`steerlab.distributed.init`): each rank
    captures a contiguous run of whole batches (:func:`steerlab.distributed.split_range`) into
    its own shards of the one store (:mod:`steerlab.capture.ranks`); after a barrier rank 0
    commits the manifest. The store holds the rows of a one-process capture, in the same order;
    an interrupted run resumes per rank when rerun with the same number of ranks. Every rank
    returns the committed store.

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
        progress: called with tokens processed after each batch (skipped ones included once);
            in a distributed run, with this rank's tokens.
        distributed: split the sequences over the ranks of the open process group; None (the
            default) does so whenever one with more than one rank is open.

    Returns:
        The finished :class:`steerlab.capture.store.ActivationStore`.
    """
    check_int(batch_size, "batch_size")
    check_int(shard_tokens, "shard_tokens")
    site_list = parse_sites(sites if isinstance(sites, str) else list(sites), handle.n_layers)
    ids = chunks.input_ids if hasattr(chunks, "input_ids") else chunks
    enc = encode_tokens(handle, ids)
    rule = _rule(positions, "all", enc)
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
    if distributed and not dist.is_distributed():
        raise ValueError(
            "distributed=True needs an open torch.distributed process group: launch with "
            "torchrun and call steerlab.distributed.init() first"
        )
    world = dist.world_size() if distributed is not False else 1
    share = dist.split_range(len(ids), unit=batch_size) if world > 1 else range(len(ids))
    kw: dict[str, Any] = {
        "model_id": handle.model_id,
        "sites": {s.name: site_width(handle, s) for s in site_list},
        "dtype": dtype, "shard_tokens": shard_tokens, "fingerprints": fps, "config": cfg,
        "overwrite": overwrite,
    }  # fmt: skip
    if world > 1:
        writer: StoreWriter = RankStoreWriter(
            path, rank=dist.rank(), world_size=world, sequences=share, **kw
        )
    else:
        writer = StoreWriter(path, **kw)
    with writer:
        if world == 1:  # a distributed store's parts are verified when rank 0 commits them
            _rewrite_damaged(writer, handle, enc, site_list, rule, batch_size)
        # a committed distributed store lists every rank's rows: this rank's share is done
        done = len(share) if getattr(writer, "committed", False) else writer.n_sequences
        start = share.start + done
        if done:
            logger.info("resuming %s after %d of %d sequences", path, done, len(share))
            if progress is not None:
                progress(int(enc.attention_mask[share.start : start].sum()))
        if not writer.complete:
            for rows in _batches(share.stop - start, batch_size):
                rows = range(rows.start + start, rows.stop + start)
                acts, tok, doc, pos, _, n_tok = _run_batch(
                    handle, enc, rows, site_list, rule, "hf", None
                )
                writer.add(acts, tok, doc, pos, n_sequences=len(rows))
                if progress is not None:
                    progress(n_tok)
            writer.finish()
    if world > 1:
        dist.barrier()  # every part is complete on disk
        if dist.rank() == 0 and not getattr(writer, "committed", False):
            commit(path, world)
        dist.barrier()  # the manifest is committed before any rank opens the store
    return ActivationStore(path)
