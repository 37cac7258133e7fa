"""load_sae over every layout, written here by hand from each library's documented layout,
with outputs checked against float64 forwards written from the libraries' sources; writers;
the registry; and every bad input the issue names (clear errors, nothing written)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steerlab.saes import (
    LAYOUTS,
    NormalizedSae,
    check_fits,
    detect_layout,
    load_sae,
    load_saes,
    save_dictionary_learning,
    save_gemma_scope,
    save_saelens,
    save_sparsify,
    save_sparsify_run,
)
from tests.saes.test_formats_architectures import random_sae

D_IN, D_SAE = 8, 24
# float64 weights, and the same function computed by folded weights: round-off only
ATOL64 = 1e-10


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def x64(n=40):
    return rand(n, D_IN, seed=99) * 2


def write_saelens(path, cfg, tensors):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, "dtype": "float64",
                                               **cfg}))  # fmt: skip
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(path / "sae_weights.safetensors")
    )


def base_tensors(seed=0):
    return {"W_enc": rand(D_IN, D_SAE, seed=seed), "b_enc": rand(D_SAE, seed=seed + 1) * 0.3,
            "W_dec": rand(D_SAE, D_IN, seed=seed + 2), "b_dec": rand(D_IN, seed=seed + 3)}  # fmt: skip


# --- SAELens: every architecture and option, against SAELens's forward written out ---------


def test_saelens_jumprelu_without_b_dec_subtraction(tmp_path):
    t = {**base_tensors(), "threshold": rand(D_SAE, seed=7).abs() * 0.5}
    write_saelens(tmp_path / "jr", {"architecture": "jumprelu", "apply_b_dec_to_input": False,
                                    "metadata": {"hook_name": "blocks.3.hook_resid_post"}}, t)  # fmt: skip
    sae = load_sae(tmp_path / "jr")
    x = x64()
    pre = x @ t["W_enc"] + t["b_enc"]  # SAELens JumpReLUSAE.encode, apply_b_dec_to_input False
    z = pre.relu() * (pre > t["threshold"])
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z, atol=ATOL64, rtol=0)
        torch.testing.assert_close(
            sae.reconstruct(x), z @ t["W_dec"] + t["b_dec"], atol=ATOL64, rtol=0
        )


def test_saelens_gated_without_b_dec_subtraction(tmp_path):
    t = base_tensors()
    g = {"W_enc": t["W_enc"], "W_dec": t["W_dec"], "b_dec": t["b_dec"], "b_gate": rand(D_SAE, seed=8),
         "r_mag": rand(D_SAE, seed=9) * 0.2, "b_mag": rand(D_SAE, seed=10)}  # fmt: skip
    write_saelens(tmp_path / "g", {"architecture": "gated", "apply_b_dec_to_input": False}, g)
    sae = load_sae(tmp_path / "g")
    x = x64()
    u = x @ g["W_enc"]  # SAELens GatedSAE.encode with sae_in = x
    z = ((u + g["b_gate"]) > 0) * (x @ (g["W_enc"] * g["r_mag"].exp()) + g["b_mag"]).relu()
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z, atol=ATOL64, rtol=0)


def test_saelens_batchtopk_training_checkpoint(tmp_path):
    t = {**base_tensors(), "topk_threshold": torch.tensor(0.4, dtype=torch.float64)}
    write_saelens(tmp_path / "b", {"architecture": "batchtopk", "k": 4.0,
                                   "rescale_acts_by_decoder_norm": True}, t)  # fmt: skip
    sae = load_sae(tmp_path / "b")
    assert sae.cfg.architecture == "batchtopk" and sae.cfg.k == 4
    x = x64()
    # SAELens's BatchTopK saved for inference = JumpReLU on pre·‖W_dec‖ with θ everywhere
    n = t["W_dec"].norm(dim=1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * n
    z = pre.relu() * (pre > 0.4)
    with torch.no_grad():
        torch.testing.assert_close(sae.reconstruct(x), (z / n) @ t["W_dec"] + t["b_dec"],
                                   atol=ATOL64, rtol=0)  # fmt: skip


def test_saelens_expected_average_only_in_and_whitening(tmp_path):
    t = base_tensors()
    write_saelens(tmp_path / "s", {"architecture": "standard",
                                   "normalize_activations": "expected_average_only_in"}, t)  # fmt: skip
    (tmp_path / "s" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25}))
    x = x64()
    ref = lambda xs: ((xs - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu() @ t["W_dec"] + t["b_dec"]  # noqa: E731
    with torch.no_grad():
        # SAELens's ActivationScaler: the SAE sees 0.25·x and its output is divided back
        torch.testing.assert_close(load_sae(tmp_path / "s").reconstruct(x), ref(0.25 * x) / 0.25,
                                   atol=ATOL64, rtol=0)  # fmt: skip
    A = rand(D_IN, D_IN, seed=11) + 3 * torch.eye(D_IN, dtype=torch.float64)
    mu = rand(D_IN, seed=12)
    write_saelens(tmp_path / "w", {"architecture": "standard",
                                   "normalize_activations": "covariance_whitening"}, t)  # fmt: skip
    save_file({"mean": mu, "matrix": A, "inverse_matrix": torch.linalg.inv(A).contiguous()},
              str(tmp_path / "w" / "activation_whitening.safetensors"))  # fmt: skip
    with torch.no_grad():
        got = load_sae(tmp_path / "w").reconstruct(x)
    # ActivationScaler.scale / unscale around the SAE
    torch.testing.assert_close(got, ref((x - mu) @ A) @ torch.linalg.inv(A) + mu, atol=1e-8, rtol=0)


def test_saelens_registry_norm_factor_and_per_token_norm(tmp_path):
    t = base_tensors()
    write_saelens(
        tmp_path / "ln", {"architecture": "standard", "normalize_activations": "layer_norm"}, t
    )
    assert isinstance(load_sae(tmp_path / "ln"), NormalizedSae)
    write_saelens(tmp_path / "z", {"architecture": "standard", "reshape_activations": "hook_z"}, t)
    with pytest.raises(ValueError, match="reshape_activations='hook_z'"):
        load_sae(tmp_path / "z")


# --- sparsify --------------------------------------------------------------------------------


def write_sparsify(path, k=4, seed=0, **cfg):
    t = base_tensors(seed)
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 3,
                                               "normalize_decoder": True, "num_latents": 0, "k": k,
                                               "multi_topk": False, "skip_connection": False,
                                               "transcode": False, "d_in": D_IN, **cfg}))  # fmt: skip
    save_file({"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
               "W_dec": t["W_dec"], "b_dec": t["b_dec"]}, str(path / "sae.safetensors"))  # fmt: skip
    return t


def sparsify_forward(t, x, k):
    """sparsify's SparseCoder.encode (ReLU, then TopK) and decode, written out."""
    a = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu()
    v, i = a.topk(k, dim=-1)
    return torch.zeros_like(a).scatter(-1, i, v) @ t["W_dec"] + t["b_dec"]


def test_sparsify_dir_and_run(tmp_path):
    run = tmp_path / "run"
    ts = {h: write_sparsify(run / h, seed=s) for s, h in enumerate(["layers.10", "layers.2"])}
    (run / "config.json").write_text(json.dumps({"model": "my-model"}))
    assert detect_layout(run) == "sparsify_run" and detect_layout(run / "layers.2") == "sparsify"
    saes = load_saes(run)
    assert list(saes) == ["layers.2", "layers.10"]  # natural order, as sparsify's natsort
    one = load_sae(run, "layers.10")
    assert one.cfg.site == "resid_post.10" and one.cfg.model_id == "my-model" and one.cfg.k == 4
    x = x64()
    with torch.no_grad():
        torch.testing.assert_close(one.reconstruct(x), sparsify_forward(ts["layers.10"], x, 4),
                                   atol=ATOL64, rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"sparsify run with 2 SAEs \['layers.2', 'layers.10'\]"):
        load_sae(run)
    with pytest.raises(ValueError, match="no hookpoint 'layers.3'"):
        load_sae(run, "layers.3")


def test_sparsify_refusals(tmp_path):
    write_sparsify(tmp_path / "g", activation="groupmax")
    with pytest.raises(ValueError, match="activation='groupmax'"):
        load_sae(tmp_path / "g")
    write_sparsify(tmp_path / "t", transcode=True)
    with pytest.raises(ValueError, match="transcode=true is not supported"):
        load_sae(tmp_path / "t")
    write_sparsify(tmp_path / "w", num_latents=25)  # config says 25 latents, weights hold 24
    with pytest.raises(
        ValueError, match=r"encoder.weight has shape \(24, 8\), the config implies \(25, 8\)"
    ):
        load_sae(tmp_path / "w")


def test_sparsify_writer(tmp_path):
    sae = random_sae("topk")
    run = save_sparsify_run([sae], tmp_path / "run")
    assert sorted(p.name for p in run.iterdir()) == ["layers.5"]
    assert sorted(p.name for p in (run / "layers.5").iterdir()) == ["cfg.json", "sae.safetensors"]
    back = load_sae(run, "layers.5")
    x = x64()
    with torch.no_grad():
        torch.testing.assert_close(back.reconstruct(x), sae.reconstruct(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="sparsify has TopK SAEs only"):
        save_sparsify(random_sae("jumprelu"), tmp_path / "jr")
    assert not (tmp_path / "jr").exists()  # nothing written


# --- dictionary_learning ---------------------------------------------------------------------


def dl_dir(path, cls, sd, **trainer):
    path.mkdir(parents=True)
    torch.save(OrderedDict((k, v.float()) for k, v in sd.items()), path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {
        "dict_class": cls, "activation_dim": D_IN, "dict_size": D_SAE, "layer": 3,
        "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_3",
        **trainer}, "buffer": {"ctx_len": 128}}))  # fmt: skip


@pytest.mark.parametrize("cls", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE",
                                 "JumpReluAutoEncoder", "GatedAutoEncoder"])  # fmt: skip
def test_dictionary_learning_classes(tmp_path, cls):
    t = {k: v.float().double() for k, v in base_tensors().items()}  # float32-representable
    r, bm, th = (
        rand(D_SAE, seed=5).float().double() * 0.2,
        rand(D_SAE, seed=6).float().double(),
        0.25,
    )
    x = x64()
    enc = lambda: x - t["b_dec"]  # noqa: E731
    if cls == "AutoEncoder":  # encode: ReLU(encoder(x - bias)); decode: decoder(f) + bias
        sd = {"bias": t["b_dec"], "encoder.weight": t["W_enc"].T, "encoder.bias": t["b_enc"],
              "decoder.weight": t["W_dec"].T}  # fmt: skip
        z = (enc() @ t["W_enc"] + t["b_enc"]).relu()
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        sd = {"k": torch.tensor(3, dtype=torch.int), "threshold": torch.tensor(th),
              "encoder.weight": t["W_enc"].T, "encoder.bias": t["b_enc"],
              "decoder.weight": t["W_dec"].T, "b_dec": t["b_dec"]}  # fmt: skip
        a = (enc() @ t["W_enc"] + t["b_enc"]).relu()
        if cls == "AutoEncoderTopK":  # per-token top-k (use_threshold=False by default)
            v, i = a.topk(3, dim=-1)
            z = torch.zeros_like(a).scatter(-1, i, v)
        else:  # BatchTopKSAE.encode: use_threshold=True by default
            z = a * (a > th)
    elif cls == "JumpReluAutoEncoder":  # apply_b_dec_to_input = False
        sd = {**t, "threshold": torch.full((D_SAE,), th)}
        pre = x @ t["W_enc"] + t["b_enc"]
        z = (pre * (pre > th)).relu()
    else:
        sd = {"decoder_bias": t["b_dec"], "encoder.weight": t["W_enc"].T, "r_mag": r,
              "gate_bias": t["b_enc"], "mag_bias": bm, "decoder.weight": t["W_dec"].T}  # fmt: skip
        xe = enc() @ t["W_enc"]
        z = ((xe + t["b_enc"]) > 0) * (r.exp() * xe + bm).relu()
    dl_dir(tmp_path / "dl", cls, sd, k=3)
    sae = load_sae(tmp_path / "dl")
    assert sae.cfg.site == "resid_post.3" and sae.cfg.model_id == "EleutherAI/pythia-70m-deduped"
    with torch.no_grad():
        # float32 weights: round-off of a few ulps on values of size ~10
        torch.testing.assert_close(sae.reconstruct(x.float()).double(), z @ t["W_dec"] + t["b_dec"],
                                   atol=1e-4, rtol=1e-5)  # fmt: skip
    # and back: steerlab writes the same layout, and reads it to the same function
    save_dictionary_learning(sae, tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(load_sae(tmp_path / "again").reconstruct(x.float()),
                           sae.reconstruct(x.float()))  # fmt: skip


class NotATensor:  # a class weights_only must refuse to unpickle
    def __reduce__(self):
        return (os.getcwd, ())


def test_dictionary_learning_refuses_unsafe_pickles(tmp_path):
    sd = {"bias": torch.zeros(D_IN), "encoder.weight": torch.zeros(D_SAE, D_IN)}
    dl_dir(tmp_path / "evil", "AutoEncoder", sd)
    torch.save({"bias": torch.zeros(D_IN), "payload": NotATensor()}, tmp_path / "evil" / "ae.pt")
    before = sorted(p.name for p in (tmp_path / "evil").iterdir())
    with pytest.raises(ValueError, match=r"weights_only=True\) refused this file"):
        load_sae(tmp_path / "evil")
    assert sorted(p.name for p in (tmp_path / "evil").iterdir()) == before  # nothing written
    dl_dir(tmp_path / "cls", "IdentityDict", sd)
    with pytest.raises(ValueError, match="dict_class 'IdentityDict' is not supported"):
        load_sae(tmp_path / "cls")


# --- Gemma Scope -----------------------------------------------------------------------------


def test_gemma_scope_params_npz(tmp_path):
    t = {k: v.float().double() for k, v in base_tensors().items()}
    th = rand(D_SAE, seed=4).abs().float().double()
    d = tmp_path / "gemma-scope-2b-pt-res" / "layer_6" / "width_16k" / "average_l0_20"
    d.mkdir(parents=True)
    np.savez(d / "params.npz", W_enc=t["W_enc"].float().numpy(), W_dec=t["W_dec"].float().numpy(),
             b_enc=t["b_enc"].float().numpy(), b_dec=t["b_dec"].float().numpy(),
             threshold=th.float().numpy())  # fmt: skip
    sae = load_sae(d)
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.site == "resid_post.6"
    x = x64()
    pre = x @ t["W_enc"] + t["b_enc"]  # Gemma Scope's encoder adds no b_dec
    z = pre.relu() * (pre > th)
    with torch.no_grad():
        # b_dec folded into b_enc in float32: round-off of a few ulps
        torch.testing.assert_close(sae.encode_dense(x.float()).double(), z, atol=1e-4, rtol=1e-5)
    f = save_gemma_scope(sae, tmp_path / "copy")
    with torch.no_grad():
        torch.testing.assert_close(
            load_sae(f).reconstruct(x.float()), sae.reconstruct(x.float()), atol=1e-5, rtol=1e-5
        )  # fmt: skip  (b_enc unfolded, refolded)
    np.savez(tmp_path / "obj.npz", W_enc=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_sae(tmp_path / "obj.npz")


# --- the registry --------------------------------------------------------------------------


def test_registry_resolves_local_releases_and_fails_fast_offline(tmp_path, monkeypatch):
    sae = random_sae("topk")
    save_saelens(sae, tmp_path / "rel" / "blocks.5.hook_resid_post")
    reg = tmp_path / "pretrained_saes.yaml"
    reg.write_text(
        "my-release:\n  repo_id: rel\n  model: tiny\n  conversion_func: null\n  saes:\n"
        "  - id: layer_5\n    path: blocks.5.hook_resid_post\n    neuronpedia: tiny/5-res\n"
        "hub-release:\n  repo_id: someone/some-saes\n  model: gpt2\n  saes:\n"
        "  - id: layer_0\n    path: layer_0\n"
    )
    monkeypatch.setenv("STEERLAB_SAE_REGISTRY", str(reg))
    back = load_sae("my-release", "layer_5")
    x = x64().float()
    with torch.no_grad():
        assert torch.equal(back.reconstruct(x), sae.reconstruct(x))
    with pytest.raises(ValueError, match=r"has no SAE 'layer_9'; its ids: \['layer_5'\]"):
        load_sae("my-release", "layer_9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="hub is offline") as e:
        load_sae("hub-release", "layer_0")
    assert "\n" not in str(e.value)  # one clear line
    with pytest.raises(FileNotFoundError, match="neither a file or directory nor a release"):
        load_sae("no-such-release", "x")


# --- bad input -------------------------------------------------------------------------------


def test_unknown_layout_lists_the_understood_ones(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="not an SAE layout steerlab understands") as e:
        load_sae(tmp_path / "d")
    for layout in LAYOUTS:
        assert layout in str(e.value)
    assert "weights.bin" in str(e.value)


def test_shape_mismatch_between_config_and_weights(tmp_path):
    t = {**base_tensors(), "threshold": torch.zeros(D_SAE, dtype=torch.float64)}
    t["W_dec"] = t["W_dec"][:, :7]
    write_saelens(tmp_path / "s", {"architecture": "jumprelu"}, t)
    with pytest.raises(
        ValueError,
        match=r"W_dec has shape \(24, 7\), but the config \(d_in=8, d_sae=24\) implies \(24, 8\)",
    ):
        load_sae(tmp_path / "s")


def test_checkpoint_for_another_width_than_the_site(tmp_path, model):
    sae = random_sae("topk")  # d_in 8, at resid_post.5
    path = save_saelens(sae, tmp_path / "sl")
    with pytest.raises(
        ValueError, match=r"reads 8-wide activations, but .*resid_post.5 is 576 wide"
    ):
        load_sae(path, handle=model)
    with pytest.raises(ValueError, match="576 wide"):
        check_fits(sae, model, "resid_post.2")


def test_writers_write_nothing_on_bad_input(tmp_path):
    sae = random_sae("relu_l1")
    with pytest.raises(ValueError, match=r"density must have shape \(24,\)"):
        save_saelens(sae, tmp_path / "sl", density=torch.ones(3))
    assert not (tmp_path / "sl").exists()
