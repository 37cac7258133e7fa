"""Tokenisation with offsets, and the position rules that select which tokens to capture.

A position rule turns a padded batch into a boolean *selection mask* ``[batch, pos]``:

- ``"all"``: every real token (padding and a prepended BOS are masked out);
- ``"last"``: the last real token of each sequence;
- a boolean tensor ``[batch, pos]`` (combined with the attention mask);
- character spans, one ``(start, end)`` or a list of them per text: the tokens whose
  character offsets overlap the span (``span_tokens`` picks all / first / last of them), so
  "the number in this sentence" is selected through the tokenizer's offsets.

Texts longer than ``max_length`` tokens are truncated with a warning (documented choice: the
capture keeps going and reports how many texts were cut). A span that matches no token after
truncation is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

Span = tuple[int, int]
PositionRule = str | Tensor | list
SpanTokens = Literal["all", "first", "last"]


@dataclass
class Encoded:
    """A padded token batch.

    Attributes:
        input_ids: ``[batch, pos]`` token ids (right-padded).
        attention_mask: ``[batch, pos]`` 1 for real tokens.
        special_mask: ``[batch, pos]`` True where a token was added by steerlab (BOS).
        offsets: ``[batch, pos, 2]`` character offsets into each text, or None for token input.
        n_truncated: how many texts were cut to ``max_length``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    special_mask: Tensor
    offsets: Tensor | None = None
    n_truncated: int = 0


def encode_texts(handle, texts: list[str], max_length: int | None = None) -> Encoded:
    """Tokenise texts the way every steerlab capture does (explicit BOS, right padding).

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        texts: non-empty strings.
        max_length: truncate longer texts (with a warning); default the model's context.
    """
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("no input: pass at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t:
            raise ValueError(f"text {i} is empty or not a string ({type(t).__name__})")
    tok = handle.tokenizer
    limit = max_length or model_context(handle)
    if not handle.is_causal:
        return _encode_encoder_texts(handle, texts, limit)
    n_bos = 1 if handle.add_bos else 0
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs, n_cut = [], [], 0
    for seq, off in zip(enc["input_ids"], enc["offset_mapping"]):
        if len(seq) + n_bos > limit:
            n_cut += 1
            seq, off = seq[: limit - n_bos], off[: limit - n_bos]
        ids.append(([tok.bos_token_id] if n_bos else []) + list(seq))
        offs.append(([(0, 0)] if n_bos else []) + [tuple(o) for o in off])
    if n_cut:
        logger.warning(
            "%d of %d texts were longer than %d tokens and were truncated", n_cut, len(texts), limit
        )
    if any(len(s) == 0 for s in ids):
        raise ValueError("a text tokenised to no tokens")
    T = max(len(s) for s in ids)
    B = len(ids)
    input_ids = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    special = torch.zeros(B, T, dtype=torch.bool)
    offsets = torch.zeros(B, T, 2, dtype=torch.long)
    for b, (s, o) in enumerate(zip(ids, offs)):
        input_ids[b, : len(s)] = torch.tensor(s)
        attn[b, : len(s)] = 1
        offsets[b, : len(s)] = torch.tensor(o, dtype=torch.long).reshape(-1, 2)
        special[b, 0] = bool(n_bos)
    return Encoded(input_ids, attn, special, offsets, n_cut)


def _encode_encoder_texts(handle, texts: list[str], limit: int) -> Encoded:
    """Encoders (BERT) get their own special tokens ([CLS] ... [SEP]), masked out of "all"."""
    tok = handle.tokenizer
    n_long = sum(
        len(x) > limit for x in tok(texts, add_special_tokens=True, verbose=False)["input_ids"]
    )
    if n_long:
        logger.warning(
            "%d of %d texts were longer than %d tokens and were truncated",
            n_long,
            len(texts),
            limit,
        )
    enc = tok(
        texts,
        add_special_tokens=True,
        return_offsets_mapping=True,
        padding=True,
        truncation=True,
        max_length=limit,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    return Encoded(
        enc["input_ids"],
        enc["attention_mask"],
        enc["special_tokens_mask"].bool(),
        enc["offset_mapping"].long(),
        n_long,
    )


def encode_tokens(handle, input_ids: Tensor, attention_mask: Tensor | None = None) -> Encoded:
    """Wrap a token batch ``[batch, pos]``; a leading BOS token is marked special."""
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"token input must be [batch, pos] and non-empty, got {tuple(input_ids.shape)}"
        )
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"token ids must be integers, got {input_ids.dtype}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}"
        )
    vocab = handle.model.get_input_embeddings().num_embeddings
    if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
        raise ValueError(f"token ids must lie in [0, {vocab}) for {handle.model_id}")
    if input_ids.shape[1] > model_context(handle):
        raise ValueError(
            f"sequences of {input_ids.shape[1]} tokens exceed the model's context "
            f"({model_context(handle)}); cut them shorter"
        )
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    bos = handle.tokenizer.bos_token_id
    if bos is not None:
        special[:, 0] = input_ids[:, 0] == bos
    return Encoded(input_ids.long(), attention_mask.long(), special, None, 0)


def model_context(handle) -> int:
    """The model's maximum sequence length."""
    cfg = handle.model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))


def _as_span_lists(spans: list, n: int) -> list[list[Span]]:
    if len(spans) != n:
        raise ValueError(f"got {len(spans)} span entries for {n} texts; give one per text")
    out = []
    for s in spans:
        if isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, int) for v in s):
            out.append([s])
        else:
            out.append([tuple(x) for x in s])
    return out


def selection_mask(
    enc: Encoded, positions: PositionRule = "all", span_tokens: SpanTokens = "all"
) -> tuple[Tensor, Tensor]:
    """Apply a position rule.

    Returns:
        ``(mask, span_ids)``: boolean ``[batch, pos]`` selection and int ``[batch, pos]`` with
        the index of the span each selected token belongs to (-1 when not using spans).
    """
    real = enc.attention_mask.bool() & ~enc.special_mask
    span_ids = torch.full(real.shape, -1, dtype=torch.long)
    if isinstance(positions, str):
        if positions == "all":
            return real, span_ids
        if positions == "last":
            last = enc.attention_mask.sum(1) - 1
            mask = torch.zeros_like(real)
            mask[torch.arange(len(last)), last] = True
            return mask, span_ids
        raise ValueError(
            f"unknown position rule {positions!r}; use 'all', 'last', a boolean "
            "mask [batch, pos] or character spans"
        )
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or positions.shape != real.shape:
            raise ValueError(
                f"a position mask must be bool {tuple(real.shape)}, got "
                f"{positions.dtype} {tuple(positions.shape)}"
            )
        return positions & enc.attention_mask.bool(), span_ids
    if enc.offsets is None:
        raise ValueError("character spans need text input (token input has no offsets)")
    spans = _as_span_lists(positions, real.shape[0])
    mask = torch.zeros_like(real)
    start, end = enc.offsets[..., 0], enc.offsets[..., 1]
    for b, lst in enumerate(spans):
        for j, (s, e) in enumerate(lst):
            if e <= s:
                raise ValueError(f"text {b}: span {(s, e)} is empty")
            hit = real[b] & (start[b] < e) & (end[b] > s)
            idx = hit.nonzero().flatten()
            if len(idx) == 0:
                raise ValueError(
                    f"text {b}: span {(s, e)} matches no token (out of range or truncated away)"
                )
            if span_tokens == "first":
                idx = idx[:1]
            elif span_tokens == "last":
                idx = idx[-1:]
            mask[b, idx] = True
            span_ids[b, idx] = j
    return mask, span_ids


def single_token_id(handle: Any, word: str) -> int:
    """The id of ``word`` if the handle's tokenizer encodes it as exactly one token (else an
    error naming the word)."""
    ids = handle.tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the answer {word!r} must be one token, got {ids}")
    return ids[0]
