"""lm_loss / lm_losses against cross-entropy and KL computed by hand from the HF model's logits.

The reference runs the model directly (``handle.model(...)``, hooks only where an intervention
is the point) and computes ``F.cross_entropy`` / ``F.kl_div`` in float64 on its logits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steerlab.interventions import AddVector, lm_loss, lm_losses, steer
from steerlab.interventions.loss import CLEAN

SITE = "resid_post.3"


@pytest.fixture(scope="module")
def windows(model):
    tok = model.tokenizer
    texts = ["The cat sat on the mat and looked at the door for a while.",
             "Numbers such as 12 and 40 are even; 7 is odd, and so is 9.",
             "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"]  # fmt: skip
    ids = [tok(t, add_special_tokens=False)["input_ids"][:12] for t in texts]
    assert all(len(x) == 12 for x in ids)
    return torch.tensor(ids)


def _manual_ce(model, ids, mask=None):
    """Per-target cross-entropy ``[n, T-1]`` in float64 from the model's logits."""
    with torch.no_grad():
        logits = model.model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(
        ids.shape[0], -1
    )


def test_matches_cross_entropy_on_the_hf_logits(model, windows):
    want = _manual_ce(model, windows)
    got = lm_loss(model, windows, batch_size=3, reduction="none")  # the same single forward
    assert got.n_tokens == windows[:, 1:].numel() and got.kl is None
    # the same logits, both log-softmaxes in float64: only the order of the sums differs
    torch.testing.assert_close(got.per_token, want, rtol=0, atol=1e-10)
    assert got.loss == pytest.approx(float(want.mean()), rel=1e-12)
    assert lm_loss(model, windows).per_token is None  # reduction="mean"
    # other batchings run other float32 matmul shapes (~1e-5 in the logits), nothing more
    for bs in (1, 2):
        assert lm_loss(model, windows, batch_size=bs).loss == pytest.approx(got.loss, abs=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_and_loss_mask(model, windows, side):
    # three sequences of lengths 12, 7, 4, padded on one side; each scored alone as reference
    lengths = [12, 7, 4]
    T = 12
    ids = torch.zeros(3, T, dtype=torch.long)
    am = torch.zeros(3, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(T - n, T)
        ids[b, cols], am[b, cols] = windows[b, :n], 1
    got = lm_loss(model, ids, attention_mask=am, reduction="none")
    assert got.n_tokens == sum(n - 1 for n in lengths)
    for b, n in enumerate(lengths):
        want = _manual_ce(model, windows[b : b + 1, :n])[0]
        row = got.per_token[b]
        real = row[~row.isnan()]
        # padding changes float32 attention sums slightly (~1e-5 in the logits)
        torch.testing.assert_close(real, want, rtol=0, atol=1e-3)
        assert int(row.isnan().sum()) == (T - 1) - (n - 1)  # uncounted targets are NaN
    # a loss mask on top: only the last 3 tokens of every sequence count
    lm = torch.zeros(3, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        end = n if side == "right" else T
        lm[b, end - 3 : end] = True
    sub = lm_loss(model, ids, attention_mask=am, loss_mask=lm, reduction="none")
    assert sub.n_tokens == 9
    kept = sub.per_token[~sub.per_token.isnan()]
    assert torch.equal(kept, got.per_token[lm[:, 1:]])  # same forward, a subset of its tokens
    assert sub.loss == pytest.approx(float(kept.double().mean()), rel=1e-12)


def test_with_an_intervention_and_kl(model, windows):
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    iv = AddVector(v, 8.0, SITE)
    with torch.no_grad():
        clean = model.model(input_ids=windows).logits[:, :-1].double()
        with steer(model, iv):
            edited = model.model(input_ids=windows).logits[:, :-1].double()
    y = windows[:, 1:].flatten()
    ce = F.cross_entropy(edited.flatten(0, 1), y).item()
    kl = F.kl_div(edited.flatten(0, 1).log_softmax(-1), clean.flatten(0, 1).log_softmax(-1),
                  log_target=True, reduction="batchmean").item()  # fmt: skip
    got = lm_loss(model, windows, iv, kl=True, batch_size=3)  # the forwards above: one batch
    # the same logits, float64 on both sides: only summation order differs
    assert got.loss == pytest.approx(ce, rel=1e-10)
    assert got.kl == pytest.approx(kl, rel=1e-8) and got.kl > 0.01
    assert lm_loss(model, windows, [], kl=True).kl == 0.0  # the clean model against itself
    # lm_losses: one clean pass shared by several edits, each the same as alone
    many = lm_losses(model, windows, {"a": iv, "none": []}, kl=True, batch_size=3)
    assert list(many) == [CLEAN, "a", "none"]
    assert many["a"].loss == got.loss and many["a"].kl == got.kl
    assert many["none"].loss == many[CLEAN].loss and many["none"].kl == 0.0
    assert many[CLEAN].loss == lm_loss(model, windows, batch_size=3).loss


def test_progress_and_empty_mask(model, windows):
    seen = []
    lm_loss(model, windows, batch_size=2, progress=seen.append)
    assert seen == [2, 3]
    none = lm_loss(model, windows, loss_mask=torch.zeros_like(windows, dtype=torch.bool))
    assert none.n_tokens == 0 and math.isnan(none.loss)


def test_bad_input(model, windows):
    with pytest.raises(ValueError, match="seq_len >= 2"):
        lm_loss(model, windows[:, :1])
    with pytest.raises(ValueError, match="seq_len >= 2"):
        lm_loss(model, windows[0])
    with pytest.raises(ValueError, match="integer token ids"):
        lm_loss(model, windows.float())
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        lm_loss(model, windows, attention_mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="batch_size"):
        lm_loss(model, windows, batch_size=0)
    with pytest.raises(ValueError, match="reduction"):
        lm_loss(model, windows, reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unedited model"):
        lm_losses(model, windows, {CLEAN: []})
    with pytest.raises(TypeError, match="Intervention"):
        lm_loss(model, windows, [torch.zeros(3)])  # type: ignore[list-item]


def test_rules_naming_sequences_hold_across_batches(model, windows):
    """A rule that names tokens per sequence (``tokens="indices"``) edits the same tokens
    whatever the batch size: each batch's rows are matched to their sequences."""
    from steerlab.positions import Positions
    from steerlab.saes.splice import Replace

    rule = Positions(part="prompt", tokens="indices", indices=((0, 1, 2), (5,), (3, 9)))
    iv = Replace.zeros(model.d_model, SITE, rule)
    one = lm_loss(model, windows, iv, batch_size=3)
    alone = lm_loss(model, windows, iv, batch_size=1)
    # the same edits; float32 forwards of another batch shape differ by ~1e-7 relative
    assert alone.loss == pytest.approx(one.loss, rel=1e-5)
    # and the edit is real: it differs from the clean loss
    assert abs(one.loss - lm_loss(model, windows, batch_size=3).loss) > 1e-3
