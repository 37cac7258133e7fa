"""The one tokenisation module: BOS policy, special tokens, padding sides, pairs, offsets."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from steerlab.tokens import (
    added_special,
    batch_scope,
    current_batch,
    encode_pair,
    encode_pairs,
    encode_texts,
    encode_tokens,
    left_pad,
    pad_ids,
)

TEXTS = ["In 1969 the first people walked on the Moon.", "Short one."]


def _plain(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_encode_texts_bos_policy_and_offsets(model, side):
    h = replace(model, add_bos=True)
    bos = h.tokenizer.bos_token_id
    enc = encode_texts(h, TEXTS, padding_side=side)
    for b, text in enumerate(TEXTS):
        real = enc.attention_mask[b].bool()
        assert enc.input_ids[b][real].tolist() == [bos, *_plain(model, text)]
        assert enc.special_mask[b][real].tolist() == [True] + [False] * len(_plain(model, text))
        off = enc.offsets[b][real]
        assert off[0].tolist() == [0, 0]  # the added BOS covers no character
        pieces = [text[s:e] for s, e in off[1:].tolist()]
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    short = enc.attention_mask[1].bool()
    assert bool(short[-1] if side == "right" else short[0]) is False  # padding on that side
    # a text that already starts with BOS (a chat template) does not get a second one
    again = encode_texts(h, [h.tokenizer.bos_token + "hi"])
    assert again.input_ids[0].tolist() == [bos, *_plain(model, "hi")]
    assert encode_texts(model, TEXTS).special_mask.sum() == 0  # add_bos=False adds nothing


def test_padding_side_of_the_tokenizer_is_never_touched(model):
    before = model.tokenizer.padding_side
    encode_texts(model, TEXTS, padding_side="left")
    encode_pairs(model, TEXTS, ["yes", "no"], padding_side="left")
    assert model.tokenizer.padding_side == before


def test_encode_pair_boundary_and_targets(model):
    ids, plen = encode_pair(model, "How was it?", "Great.")
    assert ids[:plen] == _plain(model, "How was it?")
    assert ids[plen:] == _plain(model, " Great.")  # a space joins plain-text parts
    ids2, plen2 = encode_pair(model, "How was it? ", "Great.")
    assert ids2[plen2:] == _plain(model, "Great.")  # ... only when neither side has one
    chat, cplen = encode_pair(model, "How was it?", "Great.", chat=True)
    assert chat[:cplen] == _plain(model, model.chat("How was it?"))
    assert chat[cplen:] == _plain(model, "Great.")
    cut, p = encode_pair(model, "Q", "one two three four", max_completion_tokens=2, add_eos=True)
    assert len(cut) - p == 2  # cut: no EOS
    eos, p = encode_pair(model, "Q", "one", add_eos=True)
    assert eos[-1] == model.tokenizer.eos_token_id
    enc = encode_pairs(model, ["Q one", "Q"], ["a b", "c"], padding_side="left")
    assert enc.prompt_len.tolist() == [2, 1]
    with pytest.raises(ValueError, match="pair 1 has an empty"):
        encode_pairs(model, ["a", ""], None, names=["pair 0", "pair 1"])


def _encoder(cls=101, sep=102):
    tok = SimpleNamespace(cls_token_id=cls, sep_token_id=sep, bos_token_id=None)
    return SimpleNamespace(is_causal=False, add_bos=False, tokenizer=tok)


def test_added_special_by_rank_either_padding_side(model):
    enc = _encoder()
    right = torch.tensor([[101, 7, 8, 102, 0], [101, 7, 102, 0, 0]])
    am_r = (right != 0).long()
    left = torch.tensor([[0, 101, 7, 8, 102], [0, 0, 101, 7, 102]])
    am_l = (left != 0).long()
    want = [[True, False, False, True], [True, False, True]]
    for ids, am in ((right, am_r), (left, am_l)):
        m = added_special(enc, ids, am)
        assert [r[a.bool()].tolist() for r, a in zip(m, am)] == want
        assert not m[~am.bool()].any()
    # a [SEP] written inside the text is not the added one
    mid = torch.tensor([[101, 102, 8, 102]])
    assert added_special(enc, mid, torch.ones_like(mid)).tolist() == [[True, False, False, True]]
    # causal: only a rank-0 BOS, only when the handle adds one
    h = replace(model, add_bos=True)
    ids = torch.tensor([[0, 1, 5, 1], [1, 5, 6, 7]])
    am = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert added_special(h, ids, am).tolist() == [[False, True, False, False],
                                                  [True, False, False, False]]  # fmt: skip
    assert not added_special(model, ids, am).any()
    assert encode_tokens(h, ids, am).special_mask.tolist() == added_special(h, ids, am).tolist()


def test_pad_and_take():
    ids, am = pad_ids([[1, 2, 3], [4]], 0, "right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and am.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, am = left_pad([torch.tensor([1, 2, 3]), torch.tensor([4])], 0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    with pytest.raises(ValueError, match="padding side"):
        pad_ids([[1]], 0, "middle")


@pytest.mark.parametrize("side", ["left", "right"])
def test_take_trims_padding_and_batch_scope(model, side):
    enc = encode_texts(model, TEXTS, padding_side=side)
    sub = enc.take([1])
    assert sub.input_ids.shape[1] == int(enc.attention_mask[1].sum()) and bool(
        sub.attention_mask.all()
    )
    assert sub.sequences()[0].tolist() == enc.sequences()[1].tolist()
    assert current_batch() is None
    with batch_scope(sub, [1]) as info:
        assert current_batch() is info and info.examples.tolist() == [1]
        assert info.offsets.shape[:2] == (1, sub.input_ids.shape[1])
    assert current_batch() is None
    with (
        pytest.raises(ValueError, match="2 example indices for a batch of 1"),
        batch_scope(sub, [0, 1]),
    ):
        pass
