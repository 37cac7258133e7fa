"""Position rules: parsing, padding/cache invariance (the property steered generation needs),
and the tracker's rule for where a prompt starts. Pure tensor tests except the span test."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.interventions.hooks import PositionTracker
from steerlab.positions import (
    Positions,
    TokenView,
    as_positions,
    first_n,
    last_n,
    scored,
    select,
    select_encoded,
    spans,
    token_ids,
)
from steerlab.tokens import encode_texts

PROPS = settings(max_examples=40, deadline=None)

# prefix-stable rules that need no activations; each must give the same tokens padded either
# side and with or without a cache
RULES = [
    "all",
    "prompt",
    "generation",
    "both",
    "last",
    "prompt:first_2",
    "generation:first_3",
    "both:first_4",
    last_n(2),
    token_ids([5, 7]),
    token_ids(5, part="generation"),
    Positions(part="prompt", tokens="indices", indices=((0, 2), (1,))),
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("all", Positions("both", "all")),
        ("prompt", Positions("prompt", "all")),
        ("generation", Positions("generation", "all")),
        ("last", Positions("prompt", "last")),
        ("prompt:last_3", Positions("prompt", "last_n", n=3)),
        ("generation:first_8", Positions("generation", "first_n", n=8)),
        ("first_2", Positions("both", "first_n", n=2)),
    ],
)
def test_parse(text, expected):
    assert as_positions(text) == expected
    assert Positions.from_config(expected.to_config()) == expected


@pytest.mark.parametrize("bad", ["generation:last", "both:last_2", "middle", "prompt:first_x"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        as_positions(bad)


def test_prompt_only_selectors_rejected_elsewhere():
    with pytest.raises(ValueError, match="prompt only"):
        Positions(part="generation", tokens="scored", n=1)
    with pytest.raises(ValueError, match="n >= 1"):
        first_n(0)


def _sequences(lengths, prompt_lens, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 10, (n,), generator=g) for n in lengths], torch.tensor(prompt_lens)


def _pad(seqs, side):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[b, sl], am[b, sl] = s, 1
    return ids, am


def _unpad(mask, am):
    return [m[a.bool()] for m, a in zip(mask, am)]


@PROPS
@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), min_size=2, max_size=2),
    st.integers(0, 1000),
    st.sampled_from(range(len(RULES))),
)
def test_padding_invariance(shape, seed, r):
    # sequences of prompt + generated tokens; the rule must select the same real tokens
    seqs, plen = _sequences([p + g for p, g in shape], [p for p, _ in shape], seed)
    rule = as_positions(RULES[r])
    got = {}
    for side in ("left", "right"):
        ids, am = _pad(seqs, side)
        got[side] = _unpad(select(rule, ids, am, plen), am)
    assert all(torch.equal(a, b) for a, b in zip(got["left"], got["right"]))


@PROPS
@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5)), min_size=2, max_size=2),
    st.integers(0, 1000),
    st.sampled_from(range(len(RULES))),
)
def test_cache_invariance(shape, seed, r):
    # cached generation: one call with the (left-padded) prompt, then one token per call over a
    # growing attention mask. The union of selections equals one uncached call on everything.
    n_gen = max(g for _, g in shape)
    seqs, _ = _sequences([p for p, _ in shape], [p for p, _ in shape], seed)
    prompt_ids, prompt_am = _pad(seqs, "left")
    g = torch.Generator().manual_seed(seed + 1)
    gen = torch.randint(0, 10, (2, n_gen), generator=g)
    ids = torch.cat([prompt_ids, gen], 1)
    am = torch.cat([prompt_am, torch.ones_like(gen)], 1)
    plen = prompt_am.sum(1)
    rule = as_positions(RULES[r])
    full = select(rule, ids, am, plen)
    P = prompt_ids.shape[1]
    parts = [rule.mask(TokenView.from_mask(am[:, :P], P, plen, ids[:, :P]))]
    for t in range(P, ids.shape[1]):
        parts.append(rule.mask(TokenView.from_mask(am[:, : t + 1], 1, plen, ids[:, t : t + 1])))
    assert torch.equal(torch.cat(parts, 1), full)


def test_selectors_by_hand():
    # example 0: 3 prompt + 2 generated, right-padded to 6; example 1: 2 prompt + 4 generated
    am = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    ids = torch.tensor([[5, 1, 7, 5, 2, 0], [3, 5, 9, 9, 7, 1]])
    plen = torch.tensor([3, 2])

    def sel(rule):
        return select(rule, ids, am, plen).long().tolist()

    assert sel("prompt") == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert sel("generation") == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert sel("last") == [[0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    assert sel(last_n(2)) == [[0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert sel(first_n(1, "generation")) == [[0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]]
    assert sel(token_ids([5, 7])) == [[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 1, 0]]
    assert sel("all") == am.tolist()  # padding never selected


def test_scored_picks_largest_projection_in_prompt():
    B = torch.zeros(1, 4)
    B[0, 0] = 1.0
    h = torch.zeros(2, 5, 4)
    h[0, :, 0] = torch.tensor([1.0, -3.0, 2.0, 9.0, 0.0])  # 9.0 sits at a generated token
    h[1, :, 0] = torch.tensor([0.0, 5.0, 1.0, 2.0, 0.0])  # column 0 is padding
    am = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    plen = torch.tensor([3, 3])
    m = select(scored(B), None, am, plen, h=h)
    assert m.long().tolist() == [[0, 1, 0, 0, 0], [0, 1, 0, 0, 0]]
    m2 = select(scored(n=2), None, am, plen, h=h, basis=B)  # the intervention's own basis
    assert m2.long().tolist() == [[0, 1, 1, 0, 0], [0, 1, 0, 1, 0]]


def test_added_tokens_are_never_selected():
    # example 0: BOS (added) + 3 prompt + 1 generated, left-padded; example 1: BOS + 2 + 2.
    # Ranks count content tokens only, so "first_2" is two tokens of the text, not BOS + one.
    am = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    special = torch.tensor([[0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    ids = torch.tensor([[0, 9, 5, 6, 7, 8], [9, 5, 6, 7, 8, 9]])
    plen = torch.tensor([4, 3])  # real prompt tokens, BOS included (as Encoded counts them)

    def sel(rule):
        return select(rule, ids, am, plen, special=special).long().tolist()

    assert sel("all") == [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert sel("prompt") == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]]
    assert sel("prompt:first_2") == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert sel("last") == [[0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]
    assert sel("generation:first_1") == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]
    assert sel(token_ids(9)) == [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]]  # the BOS id 9 too
    view = TokenView.from_mask(am, 6, plen, ids, special=special)
    assert view.rank.tolist() == [[-1, -1, 0, 1, 2, 3], [-1, 0, 1, 2, 3, 4]]
    assert view.prompt_len.tolist() == [3, 2]


def test_spans_resolve_per_batch(model):
    texts = ["The cat sat on the mat.", "A dog barked."]
    rule = spans([(4, 7), (2, 5)])
    words = ["cat", "dog"]
    for side in ("left", "right"):
        enc = encode_texts(model, texts, padding_side=side)
        m = select_encoded(rule, enc)
        got = [model.tokenizer.decode(enc.input_ids[b][m[b]]).strip() for b in range(2)]
        assert got == words
    # one text at a time: the batch declares which text each row is
    for i, word in enumerate(words):
        enc = encode_texts(model, texts[i : i + 1])
        m = select_encoded(rule, enc, examples=[i])
        assert model.tokenizer.decode(enc.input_ids[0][m[0]]).strip() == word
    with pytest.raises(ValueError, match="batch of 1"):
        select_encoded(rule, encode_texts(model, texts[:1]))
    with pytest.raises(ValueError, match="matches no token"):
        select_encoded(spans([(40, 44)]), encode_texts(model, texts[1:]))
    # a saved rule comes back equal
    assert Positions.from_config(rule.to_config()) == rule


def test_spans_never_match_an_added_bos(model):
    h = replace(model, add_bos=True)
    enc = encode_texts(h, ["A dog barked."])
    assert enc.special_mask[0].tolist()[:2] == [True, False]
    m = select_encoded(spans([(0, 13)]), enc)
    assert m[0].tolist() == (~enc.special_mask[0]).tolist()


# --- the tracker ------------------------------------------------------------------------------


class _Cache:
    def __init__(self, n):
        self.n = n

    def get_seq_length(self):
        return self.n


def test_tracker_rules():
    tr = PositionTracker()
    ids = torch.ones(2, 4, dtype=torch.long)
    am = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    # rule 2: an uncached call outside generate is a whole prompt
    v = tr.on_call(ids, None, am, None)
    assert tr.prompt_len.tolist() == [3, 4] and bool(v.is_prompt[am.bool()].all())
    # a cached call continues it
    am5 = torch.cat([am, torch.ones(2, 1, dtype=torch.long)], 1)
    v = tr.on_call(ids[:, :1], None, am5, _Cache(4))
    assert v.is_generation.all() and v.rank.tolist() == [[3], [4]]
    # rule 1: inside generate, later uncached calls continue the first one's prompt
    tr.begin_generate()
    tr.on_call(ids, None, am, None)
    v = tr.on_call(torch.ones(2, 5, dtype=torch.long), None, am5, None)
    tr.end_generate()
    assert tr.prompt_len.tolist() == [3, 4]
    assert v.is_generation.long().tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
    # outside generate the same uncached call is a new prompt
    v = tr.on_call(torch.ones(2, 5, dtype=torch.long), None, am5, None)
    assert not v.is_generation.any()
    # rule 3: explicit prompt lengths for the next prompt
    tr.new_prompt([2, 1])
    v = tr.on_call(torch.ones(2, 5, dtype=torch.long), None, am5, None)
    assert v.is_prompt.long().tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
