"""The user message's tokens: markers read from the chat template, the mask on padded batches
against character offsets, and the centre μ against a capture by character spans."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from steerlab.capture import capture
from steerlab.positions import view_of
from steerlab.steering.user_tokens import (
    ChatMarkers,
    chat_markers,
    user_content_mask,
    user_token_mean,
)
from steerlab.tokens import encode_texts

PROMPTS = ["Hi there, how are you?", "Tell me a joke.", "user: what does <b> mean?"]


def test_markers_of_the_embedded_template(model):
    mk = chat_markers(model)
    tok = model.tokenizer
    assert tok.decode(list(mk.header)) == "<|im_start|>user\n"
    assert tok.decode(list(mk.footer)) == "<|im_end|>"
    assert ChatMarkers.from_config(mk.to_config()) == mk


def test_a_template_without_special_markers_is_a_clear_error(model):
    # a plain-text template ("User: ...\nAssistant:") has no special token to anchor on
    plain = SimpleNamespace(model_id="plain", tokenizer=model.tokenizer,
                            chat=lambda m: f"User: {m}\nAssistant:")  # fmt: skip
    with pytest.raises(ValueError, match="cannot find special tokens"):
        chat_markers(plain)


@pytest.mark.parametrize("side", ["left", "right"])
def test_mask_matches_the_user_characters(model, side):
    mk = chat_markers(model)
    texts = [model.chat(p, system="Be brief." if i == 1 else None) for i, p in enumerate(PROMPTS)]
    enc = encode_texts(model, texts, padding_side=side)
    mask = user_content_mask(view_of(enc), mk)
    for b, (p, t) in enumerate(zip(PROMPTS, texts)):
        lo = t.rindex(p)
        off = enc.offsets[b]
        inside = enc.attention_mask[b].bool() & (off[:, 0] >= lo) & (off[:, 1] <= lo + len(p))
        assert torch.equal(mask[b], inside), p


def test_user_token_mean_is_the_mean_over_user_spans(model):
    mk = chat_markers(model)
    site = "resid_post.4"
    mu = user_token_mean(model, PROMPTS, site, mk, batch_size=2)
    texts = [model.chat(p) for p in PROMPTS]
    spans = [(t.rindex(p), t.rindex(p) + len(p)) for p, t in zip(PROMPTS, texts)]
    acts = capture(model, texts, site, positions=spans)[site].double()
    # batches of 2 vs 3 change float32 activations by ~1e-5 relative; means of O(100) entries
    torch.testing.assert_close(mu, acts.mean(0).cpu(), rtol=1e-4, atol=1e-3)
