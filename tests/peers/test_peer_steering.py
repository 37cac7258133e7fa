"""Steering vectors and LoReFT interventions against repeng, steering-vectors and pyreft
themselves, on the embedded model.

Tolerance for logits: the same float32 edit applied by another library's hook at the same
module output; kernels are the same, so differences are at most a few ulps of logits ~10:
atol 1e-4, rtol 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlab.interventions import steer
from steerlab.steering.exchange import (
    from_repeng,
    from_steering_vectors,
    to_repeng,
    to_steering_vectors,
)
from steerlab.steering.gguf import export_gguf, import_gguf
from steerlab.steering.pyreft import load_pyreft
from steerlab.tokens import encode_texts

pytestmark = pytest.mark.peer
TOL = {"atol": 1e-4, "rtol": 1e-5}
TEXTS = ["The weather today is", "My favourite food"]


def logits(model, enc):
    with torch.no_grad():
        return model.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits


def test_repeng_control_vector_round_trips_and_steers_alike(tmp_path, model, repeng):
    rng = np.random.default_rng(0)
    cv = repeng.ControlVector("llama", {3: rng.normal(size=model.d_model).astype(np.float32),
                                        5: rng.normal(size=model.d_model).astype(np.float32)})  # fmt: skip
    sv = from_repeng(cv)
    back = repeng.ControlVector(**to_repeng(sv))
    assert back == cv  # repeng's own __eq__: same model type and directions
    # GGUF both ways: repeng's writer -> steerlab's reader, steerlab's writer -> repeng's reader
    cv.export_gguf(str(tmp_path / "r.gguf"))
    assert torch.equal(import_gguf(tmp_path / "r.gguf").directions, sv.directions)
    theirs = repeng.ControlVector.import_gguf(str(export_gguf(sv, tmp_path / "s.gguf")))
    assert theirs.model_type == "llama" and sorted(theirs.directions) == [3, 5]
    assert all(np.array_equal(theirs.directions[i], cv.directions[i]) for i in (3, 5))
    # one text: repeng's padding mask reshapes position_ids to [batch, pos], but transformers 5
    # passes them as [1, pos] for the whole batch, which fails for batch > 1 (repeng's bug)
    enc = encode_texts(model, TEXTS[:1])
    cm = repeng.ControlModel(model.model, [3, 5])
    try:
        cm.set_control(cv, 1.5)
        ref = logits(model, enc)
    finally:
        cm.reset()
        cm.unwrap()
    with steer(model, sv.interventions(1.5, relative=False, normalize=False)):
        got = logits(model, enc)
    m = enc.attention_mask.bool()
    torch.testing.assert_close(got[m], ref[m], **TOL)


def test_steering_vectors_package_steers_alike(model):
    import steering_vectors as svs

    g = torch.Generator().manual_seed(0)
    theirs = svs.SteeringVector({4: torch.randn(model.d_model, generator=g)}, "decoder_block")
    sv = from_steering_vectors(theirs)
    again = svs.SteeringVector(**to_steering_vectors(sv))
    assert torch.equal(again.layer_activations[4], theirs.layer_activations[4])
    enc = encode_texts(model, TEXTS)
    with theirs.apply(model.model, multiplier=2.0):
        ref = logits(model, enc)
    with steer(model, sv.interventions(2.0, relative=False, normalize=False)):
        got = logits(model, enc)
    m = enc.attention_mask.bool()
    torch.testing.assert_close(got[m], ref[m], **TOL)


def test_pyreft_intervention_saved_by_pyreft_steers_alike(tmp_path, model):
    import pyreft

    torch.manual_seed(0)
    iv = pyreft.LoreftIntervention(
        embed_dim=model.d_model, low_rank_dimension=4, dtype=torch.float32
    )
    with torch.no_grad():
        iv.learned_source.weight.normal_(std=0.05)
        iv.learned_source.bias.normal_(std=0.5)
    cfg = pyreft.ReftConfig(representations={"layer": 3, "component": "block_output",
                                             "low_rank_dimension": 4, "intervention": iv})  # fmt: skip
    reft = pyreft.get_reft_model(model.model, cfg, set_device=False)
    reft.save(str(tmp_path / "reft"))
    enc = encode_texts(model, TEXTS[:1])
    T = int(enc.attention_mask.sum())
    with torch.no_grad():
        _, ref = reft({"input_ids": enc.input_ids, "attention_mask": enc.attention_mask},
                      unit_locations={"sources->base": (None, [[list(range(T))]])})  # fmt: skip
    (ours,) = load_pyreft(tmp_path / "reft")
    assert ours.site == "resid_post.3" and ours.rank == 4
    with steer(model, ours):
        got = logits(model, enc)
    torch.testing.assert_close(got[0, :T], ref.logits[0, :T], **TOL)
