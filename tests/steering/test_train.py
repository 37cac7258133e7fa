"""The trainer: target tokens and positions, loss against a direct computation, LoReFT training."""

from __future__ import annotations

import pytest
import torch

from steerlab.interventions import LoReFT, steer
from steerlab.steering.train import (
    TrainConfig,
    TrainExample,
    encode_examples,
    evaluate_loss,
    train_intervention,
)

SITE = "resid_post.1"
EXAMPLES = [
    TrainExample("Say something.", "Blue whales sing loudly."),
    TrainExample("Tell me a fact.", "Blue whales sing loudly."),
    TrainExample("Hello there.", "Blue whales sing loudly."),
]


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models["gpt2"]


def test_encoding_cuts_targets_and_adds_eos(gpt2):
    cfg = TrainConfig(max_target_tokens=3)
    ((ids, plen),) = encode_examples(gpt2, EXAMPLES[:1], cfg)
    assert len(ids) - plen == 3
    cfg = TrainConfig(max_target_tokens=64)
    ((ids, plen),) = encode_examples(gpt2, EXAMPLES[:1], cfg)
    assert ids[-1] == gpt2.tokenizer.eos_token_id
    assert gpt2.tokenizer.decode(ids[plen:-1]) == "Blue whales sing loudly."


def test_unsteered_loss_matches_a_direct_forward(gpt2):
    cfg = TrainConfig(max_target_tokens=5, batch_size=2)
    ours = evaluate_loss(gpt2, None, EXAMPLES, cfg)
    nll = []
    for ids, plen in encode_examples(gpt2, EXAMPLES, cfg):
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(gpt2.model(input_ids=x).logits[0].double(), -1)
        nll.append(-logp[plen - 1 : len(ids) - 1].gather(1, x[0, plen:, None]).mean())
    # batches of 2 and 1 example, each the mean over its tokens: recompute that way
    enc = encode_examples(gpt2, EXAMPLES, cfg)
    n_tok = [len(i) - p for i, p in enc]
    b1 = (nll[0] * n_tok[0] + nll[1] * n_tok[1]) / (n_tok[0] + n_tok[1])
    expected = (float(b1) * 2 + float(nll[2])) / 3
    # float32 logits (padding changes nothing under right padding): 1e-4 relative
    assert ours == pytest.approx(expected, rel=1e-4)


def test_training_acts_at_the_last_prompt_token(gpt2):
    iv = LoReFT(gpt2.d_model, 2, SITE, positions="all")
    seen = []
    original = iv.apply_at

    def spy(site, h, view, rows=None):
        seen.append(iv.positions.mask(view, h))
        return original(site, h, view, rows)

    iv.apply_at = spy
    cfg = TrainConfig(epochs=1, batch_size=3, max_target_tokens=4)
    train_intervention(gpt2, iv, EXAMPLES, cfg)
    enc = encode_examples(gpt2, EXAMPLES, cfg)
    mask = seen[0]
    assert mask.sum(1).tolist() == [1, 1, 1]
    plens = sorted(p for _, p in enc)
    assert sorted((mask.float().argmax(1) + 1).tolist()) == plens  # the token at rank L_b − 1
    assert str(iv.positions) == "both:all"  # restored


def test_loreft_training_lowers_loss(gpt2):
    torch.manual_seed(0)
    iv = LoReFT(gpt2.d_model, 4, SITE, positions="last")
    cfg = TrainConfig(epochs=8, batch_size=3, lr=2e-2, max_target_tokens=6)
    before = evaluate_loss(gpt2, iv, EXAMPLES, cfg)
    res = train_intervention(gpt2, iv, EXAMPLES, cfg)
    after = evaluate_loss(gpt2, iv, EXAMPLES, cfg)
    assert after < before and res.epoch_ce[-1] < res.epoch_ce[0]
    R = iv.R.weight.detach().double()
    assert torch.allclose(R @ R.T, torch.eye(4, dtype=torch.float64), atol=1e-5)
    # the model itself got no gradient and no hook is left behind
    assert all(p.grad is None for p in gpt2.model.parameters())
    with steer(gpt2, iv):
        pass


def test_bad_input(gpt2):
    with pytest.raises(ValueError, match="no training examples"):
        train_intervention(gpt2, LoReFT(gpt2.d_model, 2, SITE), [])
    with pytest.raises(ValueError, match="empty"):
        encode_examples(gpt2, [TrainExample("", "x")], TrainConfig())
    with pytest.raises(ValueError, match=">= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="width"):
        train_intervention(gpt2, LoReFT(gpt2.d_model + 1, 2, SITE), EXAMPLES)
