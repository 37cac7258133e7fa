"""Steering vectors to and from repeng and steering-vectors; LoReFT to and from pyreft's layout.

Round trips copy float32 values, so vectors come back identical; LoReFT's R goes through the
orthogonal parametrization's right inverse and back (a QR), equal to float32 round-off. Steering
is checked against what repeng's ControlModel does, written out as a forward hook.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from steerlab.interventions import steer
from steerlab.interventions.kinds import LoReFT
from steerlab.steering.exchange import (
    from_repeng,
    from_steering_vectors,
    to_repeng,
    to_steering_vectors,
)
from steerlab.steering.pyreft import LOREFT_TYPE, load_pyreft, save_pyreft
from steerlab.steering.vectors import SteeringVector
from steerlab.tokens import encode_texts


def vec(site_kind="resid_post", layers=(2, 5), d=6, seed=0) -> SteeringVector:
    D = torch.randn(len(layers), d, generator=torch.Generator().manual_seed(seed))
    sites = ",".join(f"{site_kind}.{i}" for i in layers)
    sv = SteeringVector.from_direction(D, sites, model_id="tiny")
    sv.meta["model_type"] = "llama"
    return sv


@dataclass
class ControlVectorLike:  # the fields of repeng's ControlVector dataclass
    model_type: str
    directions: dict


def test_repeng_round_trip_and_negative_layers():
    sv = vec()
    d = to_repeng(sv)
    assert d["model_type"] == "llama" and sorted(d["directions"]) == [2, 5]
    assert all(
        isinstance(v, np.ndarray) and v.dtype == np.float32 for v in d["directions"].values()
    )
    back = from_repeng(ControlVectorLike(**d))
    assert back.layers == sv.layers and torch.equal(back.directions, sv.directions)
    assert back.site_kind == "resid_post" and back.meta["model_type"] == "llama"
    neg = {-1: d["directions"][5], -4: d["directions"][2]}
    with pytest.raises(ValueError, match="pass n_layers"):
        from_repeng({"model_type": "llama", "directions": neg})
    assert from_repeng({"model_type": "llama", "directions": neg}, n_layers=6).layers == (2, 5)
    with pytest.raises(ValueError, match="repeng steers decoder-layer outputs"):
        to_repeng(vec("mlp_out"))


def test_steering_vectors_round_trip_per_layer_type():
    for kind, lt in (
        ("resid_post", "decoder_block"),
        ("mlp_out", "mlp"),
        ("attn_out", "self_attn"),
    ):
        sv = vec(kind)
        d = to_steering_vectors(sv)
        assert d["layer_type"] == lt and sorted(d["layer_activations"]) == [2, 5]
        back = from_steering_vectors(d)
        assert back.site_kind == kind and torch.equal(back.directions, sv.directions)
    with pytest.raises(ValueError, match="layer_type 'input_layernorm' has no steerlab site"):
        from_steering_vectors(
            {"layer_activations": {1: torch.ones(3)}, "layer_type": "input_layernorm"}
        )
    with pytest.raises(ValueError, match="different widths"):
        from_steering_vectors({"layer_activations": {1: torch.ones(3), 2: torch.ones(4)}})


def test_repeng_vector_steers_like_repengs_control_model(model):
    torch.manual_seed(0)
    d = model.d_model
    cv = {
        "model_type": "llama",
        "directions": {3: np.random.default_rng(0).normal(size=d).astype(np.float32)},
    }
    sv = from_repeng(cv)
    enc = encode_texts(model, ["The weather today is", "A short note"])
    coeff = 2.5
    # repeng's ControlModule: the block's output hidden state + coeff · direction, every token
    block = model.model.model.layers[3]
    add = torch.from_numpy(cv["directions"][3]) * coeff

    def hook(_m, _inp, out):
        if isinstance(out, tuple):
            return (out[0] + add, *out[1:])
        return out + add

    with torch.no_grad():
        h = block.register_forward_hook(hook)
        try:
            ref = model.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        finally:
            h.remove()
        with steer(model, sv.interventions(coeff, relative=False, normalize=False)):
            got = model.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    m = enc.attention_mask.bool()
    # the same float32 addition at the same place: identical up to kernel nondeterminism
    torch.testing.assert_close(got[m], ref[m], atol=1e-4, rtol=1e-5)


def loreft(d=6, r=2, site="resid_post.3", seed=0) -> LoReFT:
    torch.manual_seed(seed)
    iv = LoReFT(d, r, site)
    with torch.no_grad():
        iv.f.weight.normal_()
        iv.f.bias.normal_()
    return iv


def test_pyreft_layout_and_round_trip(tmp_path):
    ivs = [loreft(), loreft(site="mlp_out.1", seed=1)]
    path = save_pyreft(ivs, tmp_path / "reft")
    cfg = json.loads((path / "config.json").read_text())
    keys = [
        "layer_3_comp_block_output_unit_pos_nunit_1#0",
        "layer_1_comp_mlp_output_unit_pos_nunit_1#1",
    ]
    assert cfg["sorted_keys"] == keys and cfg["intervention_types"] == [LOREFT_TYPE] * 2
    assert cfg["representations"][0][:5] == [3, "block_output", "pos", 1, 2]
    assert len(cfg["representations"][0]) == 14  # pyvene's RepresentationConfig fields
    sd = torch.load(path / f"intkey_{keys[0]}.bin", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "weight": (2, 6),
        "bias": (2,),
        "rotate_layer": (6, 2),
    }
    back = load_pyreft(path)
    h = torch.randn(4, 5, 6)
    for a, b in zip(ivs, back):
        assert b.site == a.site and b.rank == a.rank
        # R through the orthogonal parametrization's right inverse: float32 round-off
        torch.testing.assert_close(b.R.weight, a.R.weight, atol=1e-6, rtol=0)
        assert torch.equal(b.f.weight, a.f.weight) and torch.equal(b.f.bias, a.f.bias)
        with torch.no_grad():
            torch.testing.assert_close(b.edit(h), a.edit(h), atol=1e-5, rtol=1e-5)
        # pyreft's LoreftIntervention.forward, written out: h + (W h + b − h R) Rᵀ
        R = sd["rotate_layer"] if a is ivs[0] else None
        if R is not None:
            ref = h + (h @ sd["weight"].T + sd["bias"] - h @ R) @ R.T
            with torch.no_grad():
                torch.testing.assert_close(a.edit(h), ref, atol=1e-5, rtol=1e-5)


def test_pyreft_refusals(tmp_path):
    path = save_pyreft(loreft(), tmp_path / "reft")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(
        json.dumps(
            {**cfg, "intervention_types": ["<class 'pyreft.interventions.NoreftIntervention'>"]}
        )
    )
    with pytest.raises(ValueError, match="steerlab reads pyreft's LoreftIntervention only"):
        load_pyreft(path)
    path = save_pyreft(loreft(), tmp_path / "evil")
    key = json.loads((path / "config.json").read_text())["sorted_keys"][0]

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"weight": Payload()}, path / f"intkey_{key}.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_pyreft(path)
    with pytest.raises(ValueError, match="no component for resid_mid.2"):
        save_pyreft(loreft(site="resid_mid.2"), tmp_path / "mid")
    assert not (tmp_path / "mid").exists()
