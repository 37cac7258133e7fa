"""Tokenisation in one place: encoding, padding, special tokens and character offsets.

Every steerlab path that turns text into tokens goes through this module (capture, the contrast
pairs of steering vectors, steered generation and scoring, intervention training, the numeric
readouts), so one text gives the same tokens everywhere.

**BOS policy.** Text is tokenised without the tokenizer's own special tokens. For a causal LM,
steerlab prepends the BOS token when ``handle.add_bos`` is set, unless the text already starts
with it (a chat template that writes it). Encoders (BERT) keep the tokenizer's ``[CLS] ...
[SEP]``.

**Special tokens** are the tokens the tokenizer or steerlab *added*: the BOS at rank 0 of a
causal LM's sequence when ``handle.add_bos``; ``[CLS]`` at the first and ``[SEP]`` at the last
real token of an encoder's sequence. :func:`added_special` finds them in any padded batch (only
by rank and id, so left or right padding does not matter); the position rules of
:mod:`steerlab.positions` never select them. Tokens the text itself contains (the markers of a
chat template) are ordinary tokens, even when their id is the BOS id.

**Padding** is explicit: every encoder takes ``padding_side`` (``"right"`` by default; steered
generation pads on the left), and nothing here reads or changes ``tokenizer.padding_side``.
The pad id is the tokenizer's pad token, else its EOS.

**Length.** :func:`encode_texts` cuts texts longer than ``max_length`` (default the model's
context) with a warning and counts them; a prompt/completion pair that exceeds the context is
an error (a cut completion would read or train the wrong tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

if TYPE_CHECKING:  # annotations only: models.py imports nothing from here
    from steerlab.models import ModelHandle

logger = logging.getLogger(__name__)

PaddingSide = Literal["left", "right"]
PADDING_SIDES = ("left", "right")


@dataclass(frozen=True)
class Encoded:
    """A padded token batch (padded on either side).

    Attributes:
        input_ids: ``[batch, pos]`` token ids.
        attention_mask: ``[batch, pos]`` 1 for real tokens, 0 for padding.
        special_mask: ``[batch, pos]`` True for tokens the tokenizer or steerlab added
            (:func:`added_special`).
        offsets: ``[batch, pos, 2]`` character offsets of each token in its text, ``(0, 0)`` for
            added and padding tokens; None for token input.
        n_truncated: how many texts were cut to ``max_length``.
        prompt_len: ``[batch]`` real tokens of each prompt (added tokens included); the rest of
            the sequence is a completion. None: every real token is prompt.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    special_mask: Bool[Tensor, "batch pos"]
    offsets: Int[Tensor, "batch pos 2"] | None = None
    n_truncated: int = 0
    prompt_len: Int[Tensor, " batch"] | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def real_rank(self) -> Int[Tensor, "batch pos"]:
        """Index of each token among its sequence's real tokens (added tokens count)."""
        return self.attention_mask.long().cumsum(1) - 1

    def columns(self, rows: slice | Sequence[int] | Tensor) -> slice:
        """The columns that hold a real token of some row of ``rows``."""
        idx = rows if isinstance(rows, slice) else torch.as_tensor(rows, dtype=torch.long)
        used = self.attention_mask[idx].bool().any(0).nonzero().flatten()
        if len(used) == 0:
            raise ValueError("these rows hold no real token")
        return slice(int(used[0]), int(used[-1]) + 1)  # padding sits on one side: contiguous

    def take(self, rows: slice | Sequence[int] | Tensor) -> Encoded:
        """The rows ``rows``, without the columns that are padding in all of them."""
        cols = self.columns(rows)
        idx = rows if isinstance(rows, slice) else torch.as_tensor(rows, dtype=torch.long)
        am = self.attention_mask[idx]
        return Encoded(
            self.input_ids[idx][:, cols],
            am[:, cols],
            self.special_mask[idx][:, cols],
            None if self.offsets is None else self.offsets[idx][:, cols],
            0,
            None if self.prompt_len is None else self.prompt_len[idx],
        )

    def sequences(self) -> list[Tensor]:
        """Each row's real tokens, without padding."""
        return [ids[am.bool()] for ids, am in zip(self.input_ids, self.attention_mask)]


# --- small facts about a handle ---------------------------------------------------------------


def model_context(handle: ModelHandle) -> int:
    """The model's maximum sequence length."""
    cfg = handle.model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))


def pad_token_id(handle: ModelHandle) -> int:
    """The id padding is filled with: the tokenizer's pad token, else its EOS."""
    tok = handle.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError(f"{handle.model_id}'s tokenizer has neither a pad nor an EOS token")
    return int(pad)


def single_token_id(handle: ModelHandle, word: str) -> int:
    """The id of ``word`` if the handle's tokenizer encodes it as exactly one token (else an
    error naming the word)."""
    ids = handle.tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the answer {word!r} must be one token, got {ids}")
    return ids[0]


def added_special(
    handle: ModelHandle,
    input_ids: Int[Tensor, "batch pos"] | None,
    attention_mask: Int[Tensor, "batch pos"],
) -> Bool[Tensor, "batch pos"]:
    """Which tokens of a padded batch (either side) the tokenizer or steerlab added.

    Causal LMs: the token at rank 0 when ``handle.add_bos`` and it is the BOS id. Encoders:
    ``[CLS]`` at rank 0 and ``[SEP]`` at the last rank. Without ``input_ids`` (a forward on
    embeddings) the ids cannot be checked and those ranks are assumed to hold them.
    """
    real = attention_mask.bool()
    rank = real.long().cumsum(1) - 1
    first = real & (rank == 0)
    out = torch.zeros_like(real)
    if handle.is_causal:
        if not handle.add_bos:
            return out
        bos = handle.tokenizer.bos_token_id
        return first if input_ids is None else first & (input_ids == bos)
    last = real & (rank == real.sum(1, keepdim=True) - 1)
    if input_ids is None:
        return first | last
    cls, sep = handle.tokenizer.cls_token_id, handle.tokenizer.sep_token_id
    if cls is not None:
        out |= first & (input_ids == cls)
    if sep is not None:
        out |= last & (input_ids == sep)
    return out


# --- padding --------------------------------------------------------------------------------


def pad_ids(
    seqs: Sequence[Tensor | Sequence[int]], pad_id: int, side: PaddingSide = "right"
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Stack token sequences into ``(input_ids, attention_mask)`` padded on ``side``."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {PADDING_SIDES}, got {side!r}")
    seqs = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    if not seqs:
        raise ValueError("no sequences to pad")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[b, sl], am[b, sl] = s, 1
    return ids, am


def left_pad(
    seqs: Sequence[Tensor], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """:func:`pad_ids` on the left: every sequence's last token sits in the last column."""
    return pad_ids(seqs, pad_id, "left")


def pad(
    handle: ModelHandle,
    seqs: Sequence[Sequence[int] | Tensor],
    *,
    prompt_len: Sequence[int] | Tensor | None = None,
    offsets: Sequence[Sequence[tuple[int, int]]] | None = None,
    padding_side: PaddingSide = "right",
) -> Encoded:
    """An :class:`Encoded` batch from token lists (special tokens found by
    :func:`added_special`).

    Args:
        handle: the model handle (its pad id and special-token rule).
        seqs: token ids of each example.
        prompt_len: real prompt tokens of each example (None: all prompt).
        offsets: per example, one ``(start, end)`` character offset per token.
        padding_side: ``"right"`` or ``"left"``.
    """
    ids, am = pad_ids(seqs, pad_token_id(handle), padding_side)
    if any(len(s) == 0 for s in seqs):
        raise ValueError("a sequence has no tokens")
    off = None
    if offsets is not None:
        off = torch.zeros(*ids.shape, 2, dtype=torch.long)
        for b, o in enumerate(offsets):
            o = torch.as_tensor(list(o), dtype=torch.long).reshape(-1, 2)
            off[b][am[b].bool()] = o
    plen = None if prompt_len is None else torch.as_tensor(prompt_len, dtype=torch.long)
    if plen is not None and len(plen) != len(seqs):
        raise ValueError(f"{len(plen)} prompt lengths for {len(seqs)} sequences")
    return Encoded(ids, am, added_special(handle, ids, am), off, 0, plen)


# --- encoders -------------------------------------------------------------------------------


def _check_texts(texts: Sequence[str], what: str = "text") -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if len(texts) == 0:
        raise ValueError("no input: pass at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t:
            raise ValueError(f"{what} {i} is empty or not a string ({type(t).__name__})")
    return texts


def _bos_head(handle: ModelHandle, ids: list[int]) -> list[int]:
    """The BOS policy: prepend BOS for ``add_bos`` handles unless the text starts with it."""
    bos = handle.tokenizer.bos_token_id
    if handle.add_bos and (not ids or ids[0] != bos):
        return [bos, *ids]
    return ids


def encode_texts(
    handle: ModelHandle,
    texts: Sequence[str],
    max_length: int | None = None,
    *,
    padding_side: PaddingSide = "right",
) -> Encoded:
    """Tokenise texts with character offsets (the BOS policy of the module docstring).

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        texts: non-empty strings.
        max_length: cut longer texts (with a warning); default the model's context.
        padding_side: ``"right"`` (capture, scoring) or ``"left"`` (generation).
    """
    texts = _check_texts(texts)
    tok = handle.tokenizer
    limit = max_length or model_context(handle)
    enc = tok(texts, add_special_tokens=not handle.is_causal, return_offsets_mapping=True,
              verbose=False)  # fmt: skip
    ids, offs, n_cut = [], [], 0
    for seq, off in zip(enc["input_ids"], enc["offset_mapping"]):
        seq, off = list(seq), [tuple(o) for o in off]
        if handle.is_causal:
            head = _bos_head(handle, seq)
            off = [(0, 0)] * (len(head) - len(seq)) + off
            seq = head
        if len(seq) > limit:
            n_cut += 1
            # an encoder keeps its closing [SEP]; otherwise the tail is lost
            sep = tok.sep_token_id
            n_end = int(not handle.is_causal and sep is not None and seq[-1] == sep)
            seq = seq[: limit - n_end] + seq[len(seq) - n_end :]
            off = off[: limit - n_end] + off[len(off) - n_end :]
        ids.append(seq)
        offs.append(off)
    if n_cut:
        logger.warning(
            "%d of %d texts were longer than %d tokens and were truncated", n_cut, len(texts), limit
        )
    if any(len(s) == 0 for s in ids):
        raise ValueError("a text tokenised to no tokens")
    return replace(pad(handle, ids, offsets=offs, padding_side=padding_side), n_truncated=n_cut)


def encode_pair(
    handle: ModelHandle,
    prompt: str,
    completion: str | None = None,
    *,
    chat: bool = False,
    max_completion_tokens: int | None = None,
    add_eos: bool = False,
) -> tuple[list[int], int]:
    """Token ids of ``prompt`` followed by ``completion``, and the prompt's length.

    The two parts are tokenised separately, so the boundary is exact. With ``chat`` the prompt
    is rendered with the chat template (a generation prompt follows it); without, a space joins
    the parts when neither has one. The BOS policy applies to the prompt.

    Args:
        handle: the model handle.
        prompt: the prompt (a user message with ``chat``), or a standalone text.
        completion: the continuation, or None for a prompt alone.
        chat: render the prompt with the chat template.
        max_completion_tokens: cut the completion to this many tokens.
        add_eos: append EOS to a completion that was not cut.
    """
    tok = handle.tokenizer
    head = handle.chat(prompt) if chat else prompt
    ids = _bos_head(handle, list(tok(head, add_special_tokens=False)["input_ids"]))
    plen = len(ids)
    if completion is not None:
        tail = completion
        if not chat and not head[-1:].isspace() and not tail[:1].isspace():
            tail = " " + tail  # plain text: keep the prompt and the completion two words
        t = list(tok(tail, add_special_tokens=False)["input_ids"])
        if max_completion_tokens is not None and len(t) > max_completion_tokens:
            t = t[:max_completion_tokens]
        elif add_eos and tok.eos_token_id is not None:
            t = [*t, tok.eos_token_id]
        ids += t
    return ids, plen


def encode_pairs(
    handle: ModelHandle,
    prompts: Sequence[str],
    completions: Sequence[str] | None = None,
    *,
    chat: bool = False,
    max_completion_tokens: int | None = None,
    add_eos: bool = False,
    padding_side: PaddingSide = "right",
    names: Sequence[str] | None = None,
) -> Encoded:
    """:func:`encode_pair` for a batch, padded, with ``prompt_len`` set.

    ``names`` say what to call each example in errors (default ``"example <i>"``).
    """
    prompts = list(prompts)
    if completions is not None and len(completions) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    name = (lambda i: names[i]) if names is not None else (lambda i: f"example {i}")
    limit = model_context(handle)
    seqs, plens = [], []
    for i, p in enumerate(prompts):
        c = None if completions is None else completions[i]
        if not isinstance(p, str) or not p or (c is not None and (not isinstance(c, str) or not c)):
            raise ValueError(f"{name(i)} has an empty prompt or completion")
        ids, plen = encode_pair(handle, p, c, chat=chat,
                                max_completion_tokens=max_completion_tokens, add_eos=add_eos)  # fmt: skip
        if not ids:
            raise ValueError(f"{name(i)} tokenises to no tokens")
        if len(ids) > limit:
            raise ValueError(f"{name(i)} has {len(ids)} tokens, more than the context ({limit})")
        seqs.append(ids)
        plens.append(plen)
    return pad(handle, seqs, prompt_len=plens, padding_side=padding_side)


def encode_tokens(
    handle: ModelHandle,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Encoded:
    """Wrap a token batch ``[batch, pos]`` (padded either side); added tokens are marked by
    :func:`added_special`."""
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
    ids, am = input_ids.long(), attention_mask.long()
    return Encoded(ids, am, added_special(handle, ids, am), None, 0)


# --- the batch a forward call runs ------------------------------------------------------------


@dataclass(frozen=True)
class BatchInfo:
    """What the runner of a batch knows about it (see :func:`batch_scope`).

    Attributes:
        n: rows in the batch.
        prompt_len: real prompt tokens per row (added tokens included), or None (all prompt).
        examples: ``[n]`` each row's index in the caller's list of texts, or None.
        offsets: ``[n, m, 2]`` character offsets of each row's content tokens (real, not
            added) by rank, or None without text.
    """

    n: int
    prompt_len: Tensor | None = None
    examples: Tensor | None = None
    offsets: Tensor | None = None


_BATCH: ContextVar[BatchInfo | None] = ContextVar("steerlab_batch", default=None)


def content_offsets(enc: Encoded) -> Int[Tensor, "batch n 2"] | None:
    """Character offsets of each row's content tokens, indexed by rank (None without text)."""
    if enc.offsets is None:
        return None
    content = enc.attention_mask.bool() & ~enc.special_mask
    n = max(int(content.sum(1).max()), 1)
    out = torch.zeros(len(enc), n, 2, dtype=torch.long)
    for b in range(len(enc)):
        o = enc.offsets[b][content[b]]
        out[b, : len(o)] = o
    return out


def batch_info(enc: Encoded, examples: Sequence[int] | Tensor | None = None) -> BatchInfo:
    """The :class:`BatchInfo` of an encoded batch (``examples``: the rows' text indices)."""
    ex = None if examples is None else torch.as_tensor(examples, dtype=torch.long).reshape(-1)
    if ex is not None and len(ex) != len(enc):
        raise ValueError(f"{len(ex)} example indices for a batch of {len(enc)}")
    return BatchInfo(len(enc), enc.prompt_len, ex, content_offsets(enc))


@contextmanager
def batch_scope(
    enc: Encoded, examples: Sequence[int] | Tensor | None = None
) -> Iterator[BatchInfo]:
    """Declare the batch that the forward calls inside the block run.

    Runners of known texts (``capture()``, :mod:`steerlab.interventions.run`, the trainer) wrap
    their forwards in it. An open ``steer()`` context reads it at the start of each prompt whose
    batch size matches: the prompt lengths split prompt from completion, and position rules
    about particular texts (:func:`steerlab.positions.spans`) resolve against the rows' text
    indices and character offsets (:mod:`steerlab.positions`).
    """
    token = _BATCH.set(batch_info(enc, examples))
    try:
        yield _BATCH.get()  # type: ignore[misc]
    finally:
        _BATCH.reset(token)


def current_batch() -> BatchInfo | None:
    """The innermost :func:`batch_scope`'s batch, or None."""
    return _BATCH.get()
