"""Position rules: which tokens are read (capture, steering vectors) or edited (``steer()``).

One system serves both sides: :func:`steerlab.capture.capture` and
:func:`steerlab.interventions.steer` take the same rules and, for the same texts, select the
same tokens, whatever the padding side, batch size or KV cache.

**What a rule can select.** Only *content* tokens: real (attended) tokens that the tokenizer or
steerlab did not add. Padding is never selected, and neither are the added special tokens of
:mod:`steerlab.tokens` (the BOS steerlab prepends when ``handle.add_bos``; an encoder's
``[CLS]``/``[SEP]``). So ``"all"`` means *every token of the text(s), and nothing else*, in
``capture()`` and ``steer()`` alike. Tokens the text itself contains (a chat template's markers)
are content.

A rule has two parts:
- **part** — ``"prompt"``, ``"generation"`` or ``"both"``: which stretch of the sequence;
- **tokens** — which tokens of that stretch: ``"all"``, ``"last"``, :func:`first_n`,
  :func:`last_n`, :func:`token_ids`, character :func:`spans` (prompt only), or :func:`scored`
  (the token with the largest projection ``‖B h_t‖`` on a subspace, as in MSRS's token-level
  steering).

Strings are shorthand: ``"all"`` = both/all, ``"prompt"``, ``"generation"``, ``"both"``,
``"last"`` = prompt/last, and ``"<part>:<tokens>"`` such as ``"prompt:last_3"`` or
``"generation:first_8"``.

**Token coordinates.** Rules never look at raw column indices, only at the *rank* of a token:
its index among the example's content tokens. With ``L_b`` the number of content tokens of the
prompt of example ``b``, a token of rank ``j`` is a prompt token iff ``j < L_b`` and otherwise
the ``(j − L_b)``-th generated token. Ranks do not depend on left or right padding, on batching,
or on whether a KV cache delivered the earlier tokens. For a text read on its own every token
is prompt; a completion (contrast pairs, training targets, generated tokens) is "generation".

**Prefix stability.** With a KV cache, a token's activations are computed once, when it is new;
without a cache they are recomputed at every step. Steering gives the same tokens both ways only
if whether token ``t`` is edited depends on tokens ``<= t`` alone. Every rule here has that
property; ``"last"``/``last_n`` of the generation (which would move as tokens are added) are
therefore rejected, and ``scored`` and character spans apply to the prompt only.

**Rules about particular texts** (:func:`spans`, ``indices``) are resolved in every forward
call, not frozen to one batch: whoever runs a batch of known texts (``capture()``,
:mod:`steerlab.interventions.run`, the trainer) wraps the forward in
:func:`steerlab.tokens.batch_scope`, which gives each row's index in the caller's texts, its
prompt length and its tokens' character offsets. A rule built once for ``n`` texts works with
any ``batch_size`` and padding side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlab.subspace import Subspace
from steerlab.tokens import Encoded, batch_info

Part = Literal["prompt", "generation", "both"]
TokenKind = Literal["all", "last", "first_n", "last_n", "token_ids", "indices", "spans", "scored"]
SpanTokens = Literal["all", "first", "last"]
PARTS = ("prompt", "generation", "both")
TOKEN_KINDS = ("all", "last", "first_n", "last_n", "token_ids", "indices", "spans", "scored")
SPAN_TOKENS = ("all", "first", "last")
_PROMPT_ONLY = ("last", "last_n", "indices", "spans", "scored")

Span = tuple[int, int]


@dataclass(frozen=True)
class TokenView:
    """The tokens of one forward call, in rank coordinates (see the module docstring).

    Attributes:
        real: ``[batch, pos]`` True for attended (non-padding) tokens.
        rank: ``[batch, pos]`` index of each content token among its example's content tokens;
            -1 for padding and added special tokens.
        prompt_len: ``[batch]`` content tokens of each example's prompt, ``L_b``.
        input_ids: ``[batch, pos]`` the tokens, or None when the call passed embeddings.
        special: ``[batch, pos]`` True for tokens the tokenizer or steerlab added; None: none.
        examples: ``[batch]`` index of each row in the caller's list of texts (rules about
            particular texts use it); None: row ``b`` is text ``b``.
        offsets: ``[batch, n, 2]`` character offsets of each row's content tokens, by rank;
            None when the texts are unknown.
    """

    real: Bool[Tensor, "batch pos"]
    rank: Int[Tensor, "batch pos"]
    prompt_len: Int[Tensor, " batch"]
    input_ids: Int[Tensor, "batch pos"] | None = None
    special: Bool[Tensor, "batch pos"] | None = None
    examples: Int[Tensor, " batch"] | None = None
    offsets: Int[Tensor, "batch n 2"] | None = None

    @property
    def content(self) -> Bool[Tensor, "batch pos"]:
        """Tokens a rule may select: real and not added."""
        return self.real if self.special is None else self.real & ~self.special

    @property
    def is_prompt(self) -> Bool[Tensor, "batch pos"]:
        return self.content & (self.rank < self.prompt_len[:, None])

    @property
    def is_generation(self) -> Bool[Tensor, "batch pos"]:
        return self.content & (self.rank >= self.prompt_len[:, None])

    @classmethod
    def from_mask(
        cls,
        attention_mask: Int[Tensor, "batch total"],
        n_new: int,
        prompt_len: Int[Tensor, " batch"] | None = None,
        input_ids: Int[Tensor, "batch pos"] | None = None,
        *,
        special: Bool[Tensor, "batch total"] | None = None,
        examples: Int[Tensor, " batch"] | None = None,
        offsets: Int[Tensor, "batch n 2"] | None = None,
    ) -> TokenView:
        """View of the last ``n_new`` columns of a full (past + new) attention mask.

        Args:
            attention_mask: ``[batch, past + n_new]`` mask covering every token so far.
            n_new: tokens in this call (the earlier columns came from a KV cache).
            prompt_len: real prompt tokens of each example, added tokens included (as
                :attr:`steerlab.tokens.Encoded.prompt_len` counts them); default all prompt.
            input_ids: this call's tokens ``[batch, n_new]``, needed by :func:`token_ids`.
            special: ``[batch, past + n_new]`` added tokens (as the attention mask, full).
            examples: see the class docstring.
            offsets: see the class docstring.
        """
        full = attention_mask.bool()
        content = full if special is None else full & ~special.to(full.device).bool()
        rank = torch.where(content, content.long().cumsum(1) - 1, -1)
        if prompt_len is None:
            plen = content.sum(1)
        else:
            real_rank = full.long().cumsum(1) - 1
            plen = (content & (real_rank < prompt_len.to(full.device)[:, None])).sum(1)
        return cls(
            real=full[:, -n_new:],
            rank=rank[:, -n_new:],
            prompt_len=plen,
            input_ids=input_ids,
            special=None if special is None else ~content[:, -n_new:] & full[:, -n_new:],
            examples=examples,
            offsets=offsets,
        )


def view_of(enc: Encoded, examples: Sequence[int] | Tensor | None = None) -> TokenView:
    """The :class:`TokenView` of a whole encoded batch (one uncached forward)."""
    info = batch_info(enc, examples)
    return TokenView.from_mask(enc.attention_mask, enc.input_ids.shape[1], enc.prompt_len,
                               enc.input_ids, special=enc.special_mask, examples=info.examples,
                               offsets=info.offsets)  # fmt: skip


# --- rules --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Positions:
    """A position rule: a part of the sequence and a token selector within it.

    Attributes:
        part: ``"prompt"``, ``"generation"`` or ``"both"`` (prompt followed by generation).
        tokens: the selector; see the module docstring.
        n: count for ``first_n`` / ``last_n`` / ``scored`` (top-n tokens).
        ids: token ids for ``token_ids``.
        indices: per text, prompt ranks for ``indices``.
        spans: per text, ``(start, end)`` character spans for ``spans``.
        span_tokens: with ``spans``: every overlapping token, or the first / last of each span.
        basis: ``[r, d]`` rows to score tokens by for ``scored``; None means the
            intervention's own basis ``B``. Kept out of :meth:`to_config`: interventions
            store it as a tensor.
    """

    part: Part = "both"
    tokens: TokenKind = "all"
    n: int | None = None
    ids: tuple[int, ...] = ()
    indices: tuple[tuple[int, ...], ...] | None = None
    spans: tuple[tuple[Span, ...], ...] | None = None
    span_tokens: SpanTokens = "all"
    basis: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"unknown part {self.part!r}; choose one of {PARTS}")
        if self.tokens not in TOKEN_KINDS:
            raise ValueError(f"unknown token selector {self.tokens!r}; choose one of {TOKEN_KINDS}")
        if self.tokens in _PROMPT_ONLY and self.part != "prompt":
            raise ValueError(
                f"token selector {self.tokens!r} applies to the prompt only (part={self.part!r}): "
                "the generation has no fixed end, and an edit must not depend on later tokens, "
                "or steering with and without the KV cache would differ"
            )
        if self.tokens in ("first_n", "last_n", "scored") and (self.n is None or self.n < 1):
            raise ValueError(f"{self.tokens} needs n >= 1, got {self.n}")
        if self.tokens == "token_ids" and not self.ids:
            raise ValueError("token_ids needs at least one token id")
        if self.tokens == "indices" and self.indices is None:
            raise ValueError("indices needs one tuple of prompt ranks per text")
        if self.tokens == "spans":
            if not self.spans:
                raise ValueError("spans needs one list of (start, end) spans per text")
            for i, lst in enumerate(self.spans):
                for s, e in lst:
                    if e <= s:
                        raise ValueError(f"text {i}: span {(s, e)} is empty")
        if self.span_tokens not in SPAN_TOKENS:
            raise ValueError(f"span_tokens must be one of {SPAN_TOKENS}, got {self.span_tokens!r}")
        if self.basis is not None and (
            self.basis.ndim != 2 or not torch.isfinite(self.basis).all()
        ):
            raise ValueError("a scoring basis must be a finite [r, d] tensor")

    # --- serialisation ----------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """JSON form (the scoring basis, if any, is saved by the owning intervention)."""
        cfg: dict[str, Any] = {"part": self.part, "tokens": self.tokens}
        if self.n is not None:
            cfg["n"] = self.n
        if self.ids:
            cfg["ids"] = list(self.ids)
        if self.indices is not None:
            cfg["indices"] = [list(i) for i in self.indices]
        if self.spans is not None:
            cfg["spans"] = [[list(s) for s in lst] for lst in self.spans]
            cfg["span_tokens"] = self.span_tokens
        if self.basis is not None:
            cfg["has_basis"] = True
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any], basis: Tensor | None = None) -> Positions:
        """Inverse of :meth:`to_config`."""
        idx, sp = cfg.get("indices"), cfg.get("spans")
        return cls(
            part=cfg["part"],
            tokens=cfg["tokens"],
            n=cfg.get("n"),
            ids=tuple(cfg.get("ids", ())),
            indices=None if idx is None else tuple(tuple(i) for i in idx),
            spans=None if sp is None else tuple(tuple((s, e) for s, e in lst) for lst in sp),
            span_tokens=cfg.get("span_tokens", "all"),
            basis=basis,
        )

    def __str__(self) -> str:
        arg = {"first_n": self.n, "last_n": self.n, "token_ids": list(self.ids)}.get(self.tokens)
        if self.tokens == "spans":
            arg = f"{len(self.spans or ())} texts, {self.span_tokens}"
        return f"{self.part}:{self.tokens}" + ("" if arg is None else f"({arg})")

    # --- selection --------------------------------------------------------------------------

    def mask(
        self,
        view: TokenView,
        h: Float[Tensor, "batch pos d"] | None = None,
        basis: Float[Tensor, "r d"] | None = None,
    ) -> Bool[Tensor, "batch pos"]:
        """The tokens of ``view`` this rule selects.

        Args:
            view: the call's tokens.
            h: the activations at the site (needed by ``scored``).
            basis: fallback scoring rows when the rule carries none (the intervention's ``B``).
        """
        rank, plen = view.rank, view.prompt_len[:, None]
        if self.part == "prompt":
            part, idx = view.is_prompt, rank
        elif self.part == "generation":
            part, idx = view.is_generation, rank - plen
        else:
            part, idx = view.content, rank
        t, n = self.tokens, int(self.n or 0)
        if t == "all":
            return part
        if t == "last":
            return part & (rank == plen - 1)
        if t == "first_n":
            return part & (idx < n)
        if t == "last_n":
            return part & (rank >= plen - n)
        if t == "token_ids":
            if view.input_ids is None:
                raise ValueError("the token_ids rule needs input_ids; this call passed embeddings")
            ids = torch.tensor(self.ids, device=view.input_ids.device)
            return part & torch.isin(view.input_ids, ids)
        if t == "indices":
            return part & self._indices_mask(view)
        if t == "spans":
            return self.span_hits(view)[0]
        return self._scored(part, h, self.basis if self.basis is not None else basis)

    def _texts(self, view: TokenView, n_texts: int) -> list[int]:
        n = view.real.shape[0]
        rows = list(range(n)) if view.examples is None else view.examples.tolist()
        if view.examples is None and n_texts != len(rows):
            raise ValueError(
                f"this rule names tokens of {n_texts} texts, but the forward pass has a batch "
                f"of {len(rows)}; run the texts through capture(), steerlab.interventions.run "
                "or inside steerlab.tokens.batch_scope(enc, examples) so that each row is "
                "matched to its text"
            )
        if rows and max(rows) >= n_texts:
            raise ValueError(f"row of text {max(rows)}, but this rule names only {n_texts} texts")
        return rows

    def _indices_mask(self, view: TokenView) -> Tensor:
        assert self.indices is not None
        rank = view.rank
        rows = self._texts(view, len(self.indices))
        width = max((max(i) + 1 for i in self.indices if i), default=1)
        table = torch.zeros(rank.shape[0], width + 1, dtype=torch.bool, device=rank.device)
        for b, t in enumerate(rows):
            table[b, list(self.indices[t])] = True
        # ranks beyond the table (and padding's rank -1) map to the always-False last column
        r = torch.where((rank >= 0) & (rank < width), rank, torch.full_like(rank, width))
        return table.gather(1, r)

    def span_hits(self, view: TokenView) -> tuple[Bool[Tensor, "batch pos"], Tensor]:
        """A ``spans`` rule's selection and, per selected token, which span of its text it
        belongs to (``[batch, pos]`` int, -1 elsewhere).

        Raises:
            ValueError: without the texts' offsets, or for a span that matches no prompt token
                of a row whose prompt is in this call (out of range, or truncated away).
        """
        assert self.spans is not None
        part = view.is_prompt
        ids = torch.full(part.shape, -1, dtype=torch.long, device=part.device)
        mask = torch.zeros_like(part)
        if not bool(part.any()):  # e.g. a cached decoding step: no prompt token here
            return mask, ids
        if view.offsets is None:
            raise ValueError(
                "a spans rule needs the character offsets of the texts: pass the texts to "
                "capture() or to steerlab.interventions.run, or wrap the forward in "
                "steerlab.tokens.batch_scope(encode_texts(handle, texts))"
            )
        rows = self._texts(view, len(self.spans))
        off = view.offsets.to(part.device)
        r = view.rank.clamp(0, off.shape[1] - 1)
        start = off[..., 0].gather(1, r)
        end = off[..., 1].gather(1, r)
        for b, t in enumerate(rows):
            if not bool(part[b].any()):
                continue
            for j, (s, e) in enumerate(self.spans[t]):
                idx = (part[b] & (start[b] < e) & (end[b] > s)).nonzero().flatten()
                if len(idx) == 0:
                    raise ValueError(
                        f"text {t}: span {(s, e)} matches no token (out of range or truncated away)"
                    )
                if self.span_tokens == "first":
                    idx = idx[:1]
                elif self.span_tokens == "last":
                    idx = idx[-1:]
                mask[b, idx] = True
                ids[b, idx] = j
        return mask, ids

    def _scored(self, part: Tensor, h: Tensor | None, basis: Tensor | None) -> Tensor:
        if h is None or basis is None:
            raise ValueError("the scored rule needs the site activations and a basis")
        B = basis.to(h)
        score = torch.linalg.vector_norm(h @ B.T, dim=-1)  # ‖B h_t‖  [batch, pos]
        score = score.masked_fill(~part, float("-inf"))
        k = min(int(self.n or 1), score.shape[1])
        top = score.topk(k, dim=1).indices
        out = torch.zeros_like(part)
        out.scatter_(1, top, True)
        return out & part  # rows with fewer than k part tokens (or none) keep only real ones


# --- constructors -----------------------------------------------------------------------------


def first_n(n: int, part: Part = "prompt") -> Positions:
    """The first ``n`` tokens of ``part`` (of the prompt by default)."""
    return Positions(part=part, tokens="first_n", n=n)


def last_n(n: int) -> Positions:
    """The last ``n`` prompt tokens (pyreft's ``l{n}``)."""
    return Positions(part="prompt", tokens="last_n", n=n)


def token_ids(ids: int | list[int] | tuple[int, ...], part: Part = "both") -> Positions:
    """Every token of ``part`` whose id is in ``ids``."""
    ids = (ids,) if isinstance(ids, int) else tuple(int(i) for i in ids)
    return Positions(part=part, tokens="token_ids", ids=ids)


def scored(basis: Any = None, n: int = 1) -> Positions:
    """The ``n`` prompt tokens with the largest ``‖B h_t‖`` (MSRS token-level selection).

    Args:
        basis: a :class:`steerlab.subspace.Subspace`, ``[r, d]`` rows or a ``[d]`` vector;
            None scores with the intervention's own basis.
        n: how many tokens per example.
    """
    if basis is not None:
        basis = _rows(basis)
    return Positions(part="prompt", tokens="scored", n=n, basis=basis)


def spans(char_spans: Sequence[Any], span_tokens: SpanTokens = "all") -> Positions:
    """Prompt tokens overlapping character spans of each text, resolved in every forward call.

    The rule carries the spans of all the texts; each batch resolves it against its own
    encoding (rows' text indices, character offsets: :func:`steerlab.tokens.batch_scope`), so
    it holds for any batch size, padding side and order. Added special tokens never match.

    Args:
        char_spans: per text, one ``(start, end)`` or a list of them.
        span_tokens: keep all overlapping tokens, or the first / last of each span.
    """
    out = []
    for s in char_spans:
        if isinstance(s, (tuple, list)) and len(s) == 2 and all(isinstance(v, int) for v in s):
            out.append(((int(s[0]), int(s[1])),))
        else:
            out.append(tuple((int(a), int(b)) for a, b in s))
    return Positions(part="prompt", tokens="spans", spans=tuple(out), span_tokens=span_tokens)


_STR_RE = re.compile(r"^(?:(prompt|generation|both):)?(all|last|first_(\d+)|last_(\d+))$")


def as_positions(rule: str | Positions) -> Positions:
    """Parse a rule: a :class:`Positions`, or a string (see the module docstring)."""
    if isinstance(rule, Positions):
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"a position rule is a string or Positions, got {type(rule).__name__}")
    s = rule.strip()
    if s in PARTS:
        return Positions(part=s)
    m = _STR_RE.match(s)
    if not m:
        raise ValueError(
            f"unknown position rule {rule!r}; use 'all', 'prompt', 'generation', 'both', "
            "'last', '<part>:<tokens>' with tokens all|last|first_<n>|last_<n>, or a "
            "Positions from first_n/last_n/token_ids/spans/scored"
        )
    part = m.group(1) or ("prompt" if m.group(2).startswith("last") else "both")
    if m.group(3):
        return Positions(part=part, tokens="first_n", n=int(m.group(3)))  # type: ignore[arg-type]
    if m.group(4):
        return Positions(part=part, tokens="last_n", n=int(m.group(4)))  # type: ignore[arg-type]
    return Positions(part=part, tokens=m.group(2))  # type: ignore[arg-type]


def select(
    rule: str | Positions,
    input_ids: Int[Tensor, "batch pos"] | None,
    attention_mask: Int[Tensor, "batch pos"],
    prompt_len: Int[Tensor, " batch"] | None = None,
    h: Float[Tensor, "batch pos d"] | None = None,
    basis: Float[Tensor, "r d"] | None = None,
    *,
    special: Bool[Tensor, "batch pos"] | None = None,
) -> Bool[Tensor, "batch pos"]:
    """Apply a rule to a whole padded batch (no cache; :func:`select_encoded` for an
    :class:`~steerlab.tokens.Encoded` batch). ``prompt_len`` counts real prompt tokens (added
    ones included; default all prompt), ``h``/``basis`` serve ``scored``, ``special`` marks the
    added tokens (never selected; default none)."""
    view = TokenView.from_mask(attention_mask, attention_mask.shape[1], prompt_len, input_ids,
                               special=special)  # fmt: skip
    return as_positions(rule).mask(view, h, basis)


def select_encoded(
    rule: str | Positions,
    enc: Encoded,
    examples: Sequence[int] | Tensor | None = None,
) -> Bool[Tensor, "batch pos"]:
    """Apply a rule to an encoded batch (``examples``: the rows' indices in the caller's texts).

    ``scored`` needs the activations it selects by and is applied where they exist (``steer``).
    """
    pos = as_positions(rule)
    if pos.tokens == "scored":
        raise ValueError(
            "a scored rule selects by the activations at the intervention's site; it applies "
            "in steer(), not to a token batch"
        )
    return pos.mask(view_of(enc, examples))


def _rows(basis: Any) -> Tensor:
    """``[r, d]`` rows from a Subspace (``d × k`` columns), a ``[r, d]`` tensor or a vector."""
    if isinstance(basis, Subspace):
        return basis.basis.T.contiguous()
    if not isinstance(basis, Tensor):
        raise TypeError(f"expected a Subspace or a tensor, got {type(basis).__name__}")
    return basis[None] if basis.ndim == 1 else basis
