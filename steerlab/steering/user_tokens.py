"""The user message's content tokens inside a chat-templated prompt, for token-level steering.

    >>> markers = chat_markers(handle)            # e.g. header "<|im_start|>user\\n", footer "<|im_end|>"
    >>> mask = user_content_mask(view, markers)   # [batch, pos]: only the user's own words
    >>> mu = user_token_mean(handle, prompts, "resid_post.9", markers)

MSRS picks, per attribute, the prompt token with the largest projection on its block. Over a
whole chat prompt that argmax lands on the template: the default system prompt (" Sm" of
"SmolLM") and the role markers (``<|im_start|>``, ``<|im_end|>``), whose activations have large
norms whatever the user asked. :class:`steerlab.steering.msrs.MSRS` therefore restricts the
choice to the tokens of the user message itself: the tokens after the *last* user header of the
prompt and before the footer that closes it (or the end of the prompt). The header and footer
are token-id sequences read from the tokenizer's own chat template (:func:`chat_markers`), so
no template is hard-coded; :func:`chat_markers` checks them on a rendered example and raises
if the template does not delimit the user message with special tokens.

Selection runs on token ids in the forward call, so it is the same for any batch size and
padding side, and with or without a KV cache (the prompt is whole in the first call; later
cached calls hold generated tokens only, which a prompt rule never selects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from steerlab.capture import capture
from steerlab.models import ModelHandle
from steerlab.positions import TokenView, view_of
from steerlab.tokens import encode_texts

__all__ = ["ChatMarkers", "chat_markers", "user_content_mask", "user_token_mean"]

_SENTINEL = "Zebra quartz 7 sentinel"


class ChatMarkers(NamedTuple):
    """Token ids that open and close a user message in a chat template."""

    header: tuple[int, ...]
    """The tokens right before the user's text (ChatML: ``<|im_start|> user \\n``)."""
    footer: tuple[int, ...]
    """The first tokens after it (ChatML: ``<|im_end|>``)."""

    def to_config(self) -> dict[str, list[int]]:
        return {"header": list(self.header), "footer": list(self.footer)}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ChatMarkers:
        return cls(tuple(int(i) for i in cfg["header"]), tuple(int(i) for i in cfg["footer"]))


def _special_strings(tok: Any) -> list[str]:
    strings = set(tok.all_special_tokens)
    strings |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
    return sorted((s for s in strings if s), key=len, reverse=True)


def chat_markers(handle: ModelHandle) -> ChatMarkers:
    """Read the user header and footer from ``handle``'s chat template (see module doc).

    The header is the rendered text from the last special token before the user role's name
    up to the user's text; the footer the first special token after it.

    Raises:
        ValueError: the model has no chat template, or its template does not put special
            tokens around the user message, or the markers do not tokenise apart from the
            message (then pass :class:`ChatMarkers` yourself).
    """
    tok = handle.tokenizer
    text = handle.chat(_SENTINEL)  # raises without a chat template
    i = text.rindex(_SENTINEL)
    prefix, suffix = text[:i], text[i + len(_SENTINEL) :]
    specials = _special_strings(tok)
    role = prefix.rfind("user")
    starts = [prefix.rfind(s, 0, role) for s in specials] if role >= 0 else []
    start = max(starts, default=-1)
    ends = [(suffix.find(s), s) for s in specials if suffix.find(s) >= 0]
    if start < 0 or not ends:
        raise ValueError(
            f"{handle.model_id}: cannot find special tokens around the user message in the chat "
            f"template (rendered: {text!r}); pass ChatMarkers(header_ids, footer_ids) yourself"
        )
    _, footer_text = min(ends)
    header = tuple(tok(prefix[start:], add_special_tokens=False)["input_ids"])
    footer = tuple(tok(footer_text, add_special_tokens=False)["input_ids"])
    markers = ChatMarkers(header, footer)
    # check: in the rendered prompt, the tokens between the markers are the sentinel's
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])[None]
    view = TokenView.from_mask(torch.ones_like(ids), ids.shape[1], input_ids=ids)
    inside = ids[0][user_content_mask(view, markers)[0]].tolist()
    if tok.decode(inside).strip() != _SENTINEL:
        raise ValueError(
            f"{handle.model_id}: the user header {tok.decode(list(header))!r} and footer "
            f"{footer_text!r} do not delimit the user message once tokenised; pass ChatMarkers "
            "yourself"
        )
    return markers


def _last_match(ids: Tensor, pattern: Tensor, ok: Tensor) -> int:
    """End (exclusive) of the last occurrence of ``pattern`` in ``ids`` among ``ok`` tokens; -1."""
    k = len(pattern)
    if len(ids) < k:
        return -1
    win = ids.unfold(0, k, 1)  # [n - k + 1, k]
    hit = (win == pattern).all(1) & ok.unfold(0, k, 1).all(1)
    where = hit.nonzero().flatten()
    return int(where[-1]) + k if len(where) else -1


def user_content_mask(view: TokenView, markers: ChatMarkers) -> Bool[Tensor, "batch pos"]:
    """The prompt tokens of ``view`` that belong to the last user message.

    Raises:
        ValueError: the call has no token ids (embeddings), or a row's prompt tokens are in
            this call but contain no user header (a prompt rendered without the chat template).
    """
    part = view.is_prompt
    out = torch.zeros_like(part)
    if not bool(part.any()):  # a cached decoding step: no prompt token in this call
        return out
    if view.input_ids is None:
        raise ValueError("the user-message token rule needs input_ids; this call passed embeddings")
    head = torch.tensor(markers.header, device=part.device)
    foot = torch.tensor(markers.footer, device=part.device)
    for b in range(part.shape[0]):
        if not bool(part[b].any()):
            continue
        ids = view.input_ids[b].to(part.device)
        start = _last_match(ids, head, part[b])
        if start < 0:
            raise ValueError(
                f"row {b}: no user header ({markers.header}) among the prompt tokens; the "
                "user-message rule needs prompts rendered with the chat template (chat=True), "
                "or use MSRS token_rule='prompt'"
            )
        stop = len(ids)
        rest = ids[start:]
        if len(rest) >= len(foot):
            hit = (rest.unfold(0, len(foot), 1) == foot).all(1).nonzero().flatten()
            if len(hit):
                stop = start + int(hit[0])
        out[b, start:stop] = True
    return out & part


def user_token_mean(
    handle: ModelHandle,
    prompts: Sequence[str],
    site: str,
    markers: ChatMarkers,
    *,
    system: str | None = None,
    batch_size: int = 8,
) -> Float[Tensor, " d"]:
    """Mean activation at ``site`` over the user-message tokens of chat-rendered ``prompts``
    (float64): the centre ``μ`` of MSRS's token scores ``‖R_i (h_t − μ)‖``.

    Args:
        handle: the model.
        prompts: user messages (rendered with the chat template, default system prompt).
        site: one site name.
        markers: from :func:`chat_markers`.
        system: a system message for the template (None: the template's default).
        batch_size: prompts per forward.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("user_token_mean needs at least one prompt")
    enc = encode_texts(handle, [handle.chat(p, system=system) for p in prompts])
    mask = user_content_mask(view_of(enc), markers)
    if not bool(mask.any(1).all()):
        bad = int((~mask.any(1)).nonzero()[0])
        raise ValueError(f"prompt {bad} ({prompts[bad]!r}) has no user-message token")
    acts = capture(handle, enc, site, positions=mask, batch_size=batch_size)[site]
    return acts.double().mean(0).cpu()
