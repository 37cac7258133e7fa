"""capture() and steer() touch exactly the same tokens for the same texts and rule.

The capture side reports the rows a rule selects. The steer side applies ``AddVector`` with the
same rule at ``resid_post.0`` and finds the tokens whose ``resid_post.0`` moved (a plain forward
hook on block 0, or a capture of every token inside the ``steer`` block). Drawn over
texts, prompt/completion splits, rules (spans included), batch sizes, padding sides and with or
without a BOS that steerlab adds, on a tiny GPT-2; one check on the embedded model.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.capture import capture
from steerlab.interventions import AddVector, steer
from steerlab.positions import first_n, last_n, spans, token_ids
from steerlab.tokens import batch_scope, encode_pairs, encode_texts

SITE = "resid_post.0"
ALPHA = 10.0
# AddVector adds ALPHA·v̂ to an edited token; max|ALPHA·v̂| >= ALPHA / sqrt(d) (1.25 for d = 64,
# 0.42 for d = 576). Every other token's resid_post.0 is bit-for-bit unchanged (same call, the
# edit comes after block 0), so "moved" is "max |Δ| > 0" and the edited ones clear 0.1 easily.
MOVED = 0.1
WORDS = ["the", "cat", "sat", "on", "a", "mat", "in", "1969", "blue", "whales", "sing"]
RULES = ["all", "prompt", "generation", "last", "prompt:first_2", "both:first_3",
         "generation:first_1", "last_n", "token_ids", "spans"]  # fmt: skip

texts_st = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6), min_size=1,
                    max_size=4)  # fmt: skip


def _rule(name, handle, prompts, pick, span_tokens):
    if name == "last_n":
        return last_n(2)
    if name == "token_ids":
        return token_ids(handle.tokenizer(" cat", add_special_tokens=False)["input_ids"] + [1])
    if name == "spans":  # one word of each text, found by its character offsets
        out = []
        for words in prompts:
            i = pick % len(words)
            start = len(" ".join(words[:i])) + (1 if i else 0)
            out.append((start, start + len(words[i])))
        return spans(out, span_tokens)
    return name


def _captured(handle, enc, rule, batch_size):
    cap = capture(handle, enc, SITE, positions=rule, batch_size=batch_size)
    return set(zip(cap.doc_ids.tolist(), cap.positions.tolist()))


def _block0_output(handle, sub):
    """resid_post.0 of a forward of ``sub``, read by a plain forward hook on block 0 (inside
    steer(), whose hooks are prepended, it sees the steered output)."""
    got = []
    hook = handle.layers[0].register_forward_hook(
        lambda _m, _a, out: got.append((out[0] if isinstance(out, tuple) else out).clone())
    )
    try:
        with torch.no_grad():
            handle.model.base_model(input_ids=sub.input_ids, attention_mask=sub.attention_mask)
    finally:
        hook.remove()
    return got[0]


def _steered(handle, enc, rule, batch_size):
    """Tokens whose resid_post.0 moves under steer(), as (text, rank among real tokens)."""
    v = torch.randn(handle.d_model, generator=torch.Generator().manual_seed(0))
    iv = AddVector(v, ALPHA, SITE, positions=rule)
    touched = set()
    for start in range(0, len(enc), batch_size):
        rows = list(range(start, min(start + batch_size, len(enc))))
        sub = enc.take(rows)
        before = _block0_output(handle, sub)
        with steer(handle, iv), batch_scope(sub, rows):
            after = _block0_output(handle, sub)
        moved = (after - before).abs().amax(-1)
        assert not (moved > 0)[~sub.attention_mask.bool()].any(), "padding was edited"
        assert bool((moved[moved > 0] > MOVED).all())
        b, p = (moved > 0).nonzero(as_tuple=True)
        touched |= {(rows[i], r) for i, r in zip(b.tolist(), sub.real_rank[b, p].tolist())}
    return touched


@settings(max_examples=40, deadline=None)
@given(
    texts_st,
    st.sampled_from(RULES),
    st.sampled_from(["left", "right"]),
    st.booleans(),
    st.booleans(),
    st.integers(1, 4),
    st.integers(0, 10),
    st.sampled_from(["all", "first", "last"]),
)
def test_capture_and_steer_touch_the_same_tokens(
    tiny_models, words, rule_name, side, add_bos, with_completion, batch_size, pick, span_tokens
):
    h = replace(tiny_models["gpt2"], add_bos=add_bos)
    prompts = [w[: max(1, len(w) // 2)] if with_completion else w for w in words]
    rule = _rule(rule_name, h, prompts, pick, span_tokens)
    texts = [" ".join(w) for w in prompts]
    if with_completion and rule_name != "spans":  # spans need text offsets: plain texts
        tails = [" ".join(w[len(p) :]) or "sing" for w, p in zip(words, prompts)]
        enc = encode_pairs(h, texts, tails, padding_side=side)
    else:
        enc = encode_texts(h, texts, padding_side=side)
    got = _captured(h, enc, rule, batch_size)
    assert got == _steered(h, enc, rule, batch_size)
    if add_bos:  # an added BOS (rank 0) is never touched, whatever the rule
        assert all(r > 0 for _, r in got)
    if rule_name == "all":  # every real token but the added one
        assert len(got) == int(enc.attention_mask.sum()) - int(enc.special_mask.sum())


@pytest.mark.parametrize("add_bos", [False, True])
def test_embedded_model_capture_and_steer_agree(model, add_bos):
    """On SmolLM2 the steer side is read by a capture of every token inside the steer block
    (capture declares each batch to the open steer context)."""
    h = replace(model, add_bos=add_bos)
    texts = ["In 1969 the first people walked on the Moon.", "Short one.", "A dog barked."]
    rules = ["all", "last", first_n(2), spans([(3, 7), (0, 5), (2, 5)], "last")]
    v = torch.randn(h.d_model, generator=torch.Generator().manual_seed(0))
    for side in ("left", "right"):
        enc = encode_texts(h, texts, padding_side=side)
        every = enc.attention_mask.bool()
        base = capture(h, enc, SITE, positions=every, batch_size=2)
        for rule in rules:
            with steer(h, AddVector(v, ALPHA, SITE, positions=rule)):
                moved = capture(h, enc, SITE, positions=every, batch_size=2)
            delta = (moved[SITE] - base[SITE]).abs().amax(-1)
            assert bool((delta[delta > 0] > MOVED).all())
            touched = set(zip(base.doc_ids[delta > 0].tolist(), base.positions[delta > 0].tolist()))
            assert touched == _captured(h, enc, rule, 3), (side, rule)
            if add_bos:
                assert all(r > 0 for _, r in touched)
