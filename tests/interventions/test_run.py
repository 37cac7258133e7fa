"""Steered scoring and generation in batches: per-batch span resolution, batch-size, padding
and KV-cache independence, per-example slicing, on the tiny GPT-2 (with and without a BOS that
steerlab adds) and against single unpadded forwards."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from steerlab.interventions import AddVector, steer
from steerlab.interventions.run import GREEDY, generate_tokens, next_token_logits
from steerlab.positions import spans
from steerlab.tokens import batch_scope, encode_texts

SITE = "resid_post.1"
TEXTS = ["Albert Einstein was born in", "Marie Curie won", "Isaac Newton saw an apple fall in"]
NAMES = ["Albert Einstein", "Marie Curie", "Isaac Newton"]
RULE = spans([(0, len(n)) for n in NAMES], "last")


@pytest.fixture(params=[False, True], ids=["no_bos", "bos"])
def gpt2(tiny_models, request):
    return replace(tiny_models["gpt2"], add_bos=request.param)


@pytest.fixture(scope="module")
def vec():
    return torch.randn(64, generator=torch.Generator().manual_seed(0))


def test_next_token_logits_equal_single_forwards(gpt2, vec):
    iv = AddVector(vec, 5.0, SITE, RULE)
    got = next_token_logits(gpt2, TEXTS, iv, batch_size=2)
    for i, text in enumerate(TEXTS):
        enc = encode_texts(gpt2, [text])
        with torch.no_grad(), steer(gpt2, iv), batch_scope(enc, [i]):
            want = gpt2.model(input_ids=enc.input_ids).logits[0, -1]
        # right padding changes only the round-off of batched matmuls (float32, logits O(1))
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=1e-4)
    plain = next_token_logits(gpt2, TEXTS, batch_size=3)
    assert (plain - got).abs().amax() > 1e-2  # the edit reached the logits
    ids = torch.tensor([[5, 6]] * 3)
    torch.testing.assert_close(next_token_logits(gpt2, TEXTS, iv, candidates=ids),
                               got.gather(1, ids), atol=1e-4, rtol=1e-4)  # fmt: skip


def test_generate_tokens_batch_and_cache_independent(gpt2, vec):
    # a random tiny GPT-2's greedy token hardly depends on earlier prompt tokens, so the span
    # edit comes with one on the first generated tokens, which visibly changes the output
    u = torch.randn(64, generator=torch.Generator().manual_seed(1))
    iv = [AddVector(vec, 8.0, SITE, RULE), AddVector(u, 60.0, SITE, "generation:first_2")]
    kw = {"max_new_tokens": 6}
    batched = generate_tokens(gpt2, TEXTS, iv, batch_size=3, **kw)
    alone = generate_tokens(gpt2, TEXTS, iv, batch_size=1, **kw)
    uncached = generate_tokens(gpt2, TEXTS, iv, batch_size=2,
                               sampling={**GREEDY, "use_cache": False}, **kw)  # fmt: skip
    for a, b, c in zip(batched.new_ids, alone.new_ids, uncached.new_ids):
        assert a.tolist() == b.tolist() == c.tolist()
    plain = generate_tokens(gpt2, TEXTS, None, batch_size=3, **kw)
    assert [t.tolist() for t in plain.new_ids] != [t.tolist() for t in batched.new_ids]
    bos = [gpt2.tokenizer.bos_token_id] if gpt2.add_bos else []
    assert (
        batched.prompt_ids[1].tolist()
        == bos + gpt2.tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    )


def test_per_example_entries_follow_their_texts(gpt2, vec):
    u = torch.randn(64, generator=torch.Generator().manual_seed(1))
    iv = [AddVector(vec, 8.0, SITE, RULE), AddVector(u, 60.0, SITE, "generation:first_2")]
    mixed = generate_tokens(gpt2, TEXTS, [None, iv, None], per_example=True, batch_size=2,
                            max_new_tokens=4)  # fmt: skip
    steered = generate_tokens(gpt2, TEXTS, iv, batch_size=3, max_new_tokens=4)
    plain = generate_tokens(gpt2, TEXTS, None, batch_size=3, max_new_tokens=4)
    assert mixed.new_ids[1].tolist() == steered.new_ids[1].tolist()
    assert mixed.new_ids[0].tolist() == plain.new_ids[0].tolist()
    with pytest.raises(ValueError, match="one entry per text"):
        generate_tokens(gpt2, TEXTS, [iv], per_example=True)


def test_span_rule_without_a_batch_is_a_clear_error(gpt2, vec):
    enc = encode_texts(gpt2, TEXTS[:1])
    with (
        pytest.raises(ValueError, match="character offsets"),
        steer(gpt2, AddVector(vec, 1.0, SITE, RULE)),
    ):
        gpt2.model(input_ids=enc.input_ids)
