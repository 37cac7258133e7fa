"""Position rules: which tokens an intervention edits (or a vector is read from).

A rule has two parts, shared by extraction (reading activations) and application (steering):

- **part** — ``"prompt"``, ``"generation"`` or ``"both"``: which stretch of the sequence;
- **tokens** — which tokens of that stretch: ``"all"``, ``"last"``, :func:`first_n`,
  :func:`last_n`, :func:`token_ids`, character :func:`spans` (prompt only), or :func:`scored`
  (the token with the largest projection ``‖B h_t‖`` on a subspace, as in MSRS's token-level
  steering).

Strings are shorthand: ``"all"`` = both/all, ``"prompt"``, ``"generation"``, ``"both"``,
``"last"`` = prompt/last, and ``"<part>:<tokens>"`` such as ``"prompt:last_3"`` or
``"generation:first_8"``.

**Token coordinates.** Rules never look at raw column indices, only at the *rank* of a token:
its index among the example's real (attended) tokens. With ``L_b`` the number of prompt tokens
of example ``b``, a token of rank ``j`` is a prompt token iff ``j < L_b`` and otherwise the
``(j − L_b)``-th generated token. Ranks do not depend on left or right padding, on batching, or
on whether a KV cache delivered the earlier tokens, so every rule selects the same tokens in all
of those cases. Padding tokens are never selected.

**Prefix stability.** With a KV cache, a token's activations are computed once, when it is new;
without a cache they are recomputed at every step. Steering gives the same tokens both ways only
if whether token ``t`` is edited depends on tokens ``<= t`` alone. Every rule here has that
property; ``"last"``/``last_n`` of the generation (which would move as tokens are added) are
therefore rejected, and ``scored`` and character spans apply to the prompt only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

Part = Literal["prompt", "generation", "both"]
TokenKind = Literal["all", "last", "first_n", "last_n", "token_ids", "indices", "scored"]
PARTS = ("prompt", "generation", "both")
TOKEN_KINDS = ("all", "last", "first_n", "last_n", "token_ids", "indices", "scored")
_PROMPT_ONLY = ("last", "last_n", "indices", "scored")


@dataclass(frozen=True)
class TokenView:
    """The tokens of one forward call, in rank coordinates (see the module docstring).

    Attributes:
        real: ``[batch, pos]`` True for attended (non-padding) tokens.
        rank: ``[batch, pos]`` index of each token among its example's real tokens.
        prompt_len: ``[batch]`` number of prompt tokens ``L_b`` of each example.
        input_ids: ``[batch, pos]`` the tokens, or None when the call passed embeddings.
    """

    real: Bool[Tensor, "batch pos"]
    rank: Int[Tensor, "batch pos"]
    prompt_len: Int[Tensor, " batch"]
    input_ids: Int[Tensor, "batch pos"] | None = None

    @property
    def is_prompt(self) -> Bool[Tensor, "batch pos"]:
        return self.real & (self.rank < self.prompt_len[:, None])

    @property
    def is_generation(self) -> Bool[Tensor, "batch pos"]:
        return self.real & (self.rank >= self.prompt_len[:, None])

    @classmethod
    def from_mask(
        cls,
        attention_mask: Int[Tensor, "batch total"] | None,
        n_new: int,
        prompt_len: Int[Tensor, " batch"] | None = None,
        input_ids: Int[Tensor, "batch pos"] | None = None,
    ) -> TokenView:
        """View of the last ``n_new`` columns of a full (past + new) attention mask.

        Args:
            attention_mask: ``[batch, past + n_new]`` mask covering every token so far.
            n_new: tokens in this call (the earlier columns came from a KV cache).
            prompt_len: ``L_b``; default every real token is a prompt token.
            input_ids: this call's tokens ``[batch, n_new]``, needed by :func:`token_ids`.
        """
        full = attention_mask.bool()
        rank_full = full.long().cumsum(1) - 1
        if prompt_len is None:
            prompt_len = full.sum(1)
        return cls(
            real=full[:, -n_new:],
            rank=rank_full[:, -n_new:],
            prompt_len=prompt_len.to(full.device),
            input_ids=input_ids,
        )


@dataclass(frozen=True)
class Positions:
    """A position rule: a part of the sequence and a token selector within it.

    Attributes:
        part: ``"prompt"``, ``"generation"`` or ``"both"`` (prompt followed by generation).
        tokens: the selector; see the module docstring.
        n: count for ``first_n`` / ``last_n`` / ``scored`` (top-n tokens).
        ids: token ids for ``token_ids``.
        indices: per example, prompt ranks for ``indices`` (built by :func:`spans`).
        basis: ``[r, d]`` rows to score tokens by for ``scored``; None means the
            intervention's own basis ``B``. Kept out of :meth:`to_config`: interventions
            store it as a tensor.
    """

    part: Part = "both"
    tokens: TokenKind = "all"
    n: int | None = None
    ids: tuple[int, ...] = ()
    indices: tuple[tuple[int, ...], ...] | None = None
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
            raise ValueError("indices needs one tuple of prompt ranks per example")
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
        if self.basis is not None:
            cfg["has_basis"] = True
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any], basis: Tensor | None = None) -> Positions:
        """Inverse of :meth:`to_config`."""
        idx = cfg.get("indices")
        return cls(
            part=cfg["part"],
            tokens=cfg["tokens"],
            n=cfg.get("n"),
            ids=tuple(cfg.get("ids", ())),
            indices=None if idx is None else tuple(tuple(i) for i in idx),
            basis=basis,
        )

    def __str__(self) -> str:
        arg = {"first_n": self.n, "last_n": self.n, "token_ids": list(self.ids)}.get(self.tokens)
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
            part, idx = view.real, rank
        t = self.tokens
        if t == "all":
            return part
        if t == "last":
            return part & (rank == plen - 1)
        if t == "first_n":
            return part & (idx < self.n)
        if t == "last_n":
            return part & (rank >= plen - self.n)
        if t == "token_ids":
            if view.input_ids is None:
                raise ValueError("the token_ids rule needs input_ids; this call passed embeddings")
            ids = torch.tensor(self.ids, device=view.input_ids.device)
            return part & torch.isin(view.input_ids, ids)
        if t == "indices":
            return part & self._indices_mask(rank)
        return self._scored(part, h, self.basis if self.basis is not None else basis)

    def _indices_mask(self, rank: Tensor) -> Tensor:
        assert self.indices is not None
        if len(self.indices) != rank.shape[0]:
            raise ValueError(
                f"this rule selects prompt tokens for {len(self.indices)} examples, but the "
                f"forward pass has a batch of {rank.shape[0]}"
            )
        width = max((max(i) + 1 for i in self.indices if i), default=1)
        table = torch.zeros(rank.shape[0], width + 1, dtype=torch.bool, device=rank.device)
        for b, idx in enumerate(self.indices):
            table[b, list(idx)] = True
        # ranks beyond the table (and padding's rank -1) map to the always-False last column
        r = torch.where((rank >= 0) & (rank < width), rank, torch.full_like(rank, width))
        return table.gather(1, r)

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


def spans(
    handle: Any,
    texts: list[str],
    char_spans: list,
    span_tokens: Literal["all", "first", "last"] = "all",
) -> Positions:
    """Prompt tokens overlapping character spans, resolved with steerlab's tokenisation.

    The spans are turned into prompt ranks with :func:`steerlab.tokens.encode_texts`
    (the handle's BOS setting, no other special tokens), so the rule holds for forwards of those
    exact texts, padded either side, in a batch of the same order.

    Args:
        handle: the model handle (its tokenizer).
        texts: the prompts.
        char_spans: one ``(start, end)`` or a list of them per text.
        span_tokens: keep all overlapping tokens, or the first / last of each span.
    """
    from steerlab.tokens import encode_texts, selection_mask

    enc = encode_texts(handle, list(texts))
    # a BOS token never overlaps a span (offsets (0, 0)); right padding makes rank = column
    mask, _ = selection_mask(enc, list(char_spans), span_tokens)
    indices = tuple(tuple(int(j) for j in row.nonzero().flatten()) for row in mask)
    return Positions(part="prompt", tokens="indices", indices=indices)


_STR_RE = re.compile(r"^(?:(prompt|generation|both):)?(all|last|first_(\d+)|last_(\d+))$")


def as_positions(rule: str | Positions) -> Positions:
    """Parse a rule: a :class:`Positions`, or a string (see the module docstring)."""
    if isinstance(rule, Positions):
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"a position rule is a string or Positions, got {type(rule).__name__}")
    s = rule.strip()
    if s in PARTS:
        return Positions(part=s)  # type: ignore[arg-type]
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
) -> Bool[Tensor, "batch pos"]:
    """Apply a rule to a whole padded batch (no cache): the extraction-side entry point.

    Args:
        rule: the position rule.
        input_ids: ``[batch, pos]`` tokens (needed by ``token_ids``).
        attention_mask: ``[batch, pos]``, 1 for real tokens, padded on either side.
        prompt_len: real prompt tokens per example; default all real tokens are prompt.
        h: activations, for ``scored``.
        basis: scoring rows, for ``scored`` rules that carry none.
    """
    view = TokenView.from_mask(attention_mask, attention_mask.shape[1], prompt_len, input_ids)
    return as_positions(rule).mask(view, h, basis)


def _rows(basis: Any) -> Tensor:
    """``[r, d]`` rows from a Subspace (``d × k`` columns), a ``[r, d]`` tensor or a vector."""
    from steerlab.subspace import Subspace

    if isinstance(basis, Subspace):
        return basis.basis.T.contiguous()
    if not isinstance(basis, Tensor):
        raise TypeError(f"expected a Subspace or a tensor, got {type(basis).__name__}")
    return basis[None] if basis.ndim == 1 else basis
