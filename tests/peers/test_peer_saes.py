"""SAEs written by SAELens, sparsify and dictionary_learning load into steerlab and compute the
same encode/decode; SAEs written by steerlab load into each of them and do the same; a Gemma
Scope params.npz loads like SAELens's own converter reads it.

Tolerance: the libraries compute in float32 with other summation orders (dense vs sparse
decode, folded biases), so outputs of size ~1-10 agree to a few ulps: atol 1e-4, rtol 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steerlab.saes import (
    load_sae,
    save_dictionary_learning,
    save_saelens,
    save_sparsify,
    save_sparsify_run,
)
from tests.peers.conftest import randomize_
from tests.saes.test_formats_architectures import random_sae

pytestmark = pytest.mark.peer
TOL = {"atol": 1e-4, "rtol": 1e-5}
D_IN, D_SAE = 16, 48


def x32(n=64):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(5)) * 2


def dense(sae, x):
    with torch.no_grad():
        return sae.encode_dense(x), sae.reconstruct(x)


# --- SAELens ---------------------------------------------------------------------------------


def saelens_models():
    import sae_lens as sl

    yield (
        "standard",
        sl.StandardSAE(sl.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)),
    )
    yield (
        "topk",
        sl.TopKSAE(
            sl.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True)
        ),
    )
    yield "jumprelu", sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    yield (
        "gated",
        sl.GatedSAE(sl.GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)),
    )


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_saelens_written_loads_in_steerlab(tmp_path, arch):
    theirs = dict(saelens_models())[arch]
    randomize_(theirs)
    if arch == "jumprelu":
        with torch.no_grad():
            theirs.threshold.copy_(torch.rand(D_SAE) * 0.5)
    theirs.save_model(str(tmp_path / "sl"))
    ours = load_sae(tmp_path / "sl")
    x = x32()
    z, xh = dense(ours, x)
    with torch.no_grad():
        tz = theirs.encode(x)
        tz = tz.to_dense() if tz.is_sparse else tz
        torch.testing.assert_close(z, tz, **TOL)
        torch.testing.assert_close(xh, theirs(x), **TOL)
    assert 0 < int((z > 0).sum()) < z.numel()


@pytest.mark.parametrize("save", ["inference", "training"])
def test_saelens_batchtopk_loads_in_steerlab(tmp_path, save):
    import sae_lens as sl

    theirs = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    randomize_(theirs)
    theirs.topk_threshold = torch.tensor(0.35, dtype=torch.double)
    # SAELens's inference form of a BatchTopK SAE is the JumpReLU it saves: the reference
    theirs.save_inference_model(str(tmp_path / "inference"))
    ref = sl.SAE.load_from_disk(str(tmp_path / "inference"))
    if save == "inference":
        theirs.save_inference_model(str(tmp_path / "b"))
    else:
        theirs.save_model(str(tmp_path / "b"))  # a training checkpoint: architecture batchtopk
    ours = load_sae(tmp_path / "b")
    x = x32()
    with torch.no_grad():
        torch.testing.assert_close(ours.reconstruct(x), ref(x), **TOL)


@pytest.mark.parametrize("arch", ["topk", "relu_l1", "jumprelu", "batchtopk", "gated"])
def test_steerlab_written_loads_in_saelens(tmp_path, arch):
    import sae_lens as sl

    ours = random_sae(arch, d_in=D_IN, d_sae=D_SAE, k=5, dtype="float32")
    theirs = sl.SAE.load_from_disk(str(save_saelens(ours, tmp_path / "sl")))
    x = x32()
    z, xh = dense(ours, x)
    with torch.no_grad():
        tz = theirs.encode(x)
        torch.testing.assert_close(z, tz.to_dense() if tz.is_sparse else tz, **TOL)
        torch.testing.assert_close(xh, theirs(x), **TOL)


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_per_token_normalisation_matches_saelens(tmp_path, mode):
    import sae_lens as sl

    theirs = sl.StandardSAE(
        sl.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations=mode)
    )
    randomize_(theirs)
    theirs.save_model(str(tmp_path / "sl"))
    ours = load_sae(tmp_path / "sl")
    x = x32() * 5 + 1
    with torch.no_grad():
        torch.testing.assert_close(ours.reconstruct(x), theirs(x), **TOL)
        back = sl.SAE.load_from_disk(str(save_saelens(ours, tmp_path / "again")))
        torch.testing.assert_close(back(x), theirs(x), **TOL)


def test_gemma_scope_npz_loads_like_saelens_converter(tmp_path, monkeypatch):
    import sae_lens as sl
    from sae_lens.loading import pretrained_sae_loaders as loaders

    g = np.random.default_rng(0)
    folder = "layer_3/width_16k/average_l0_40"
    f = tmp_path / folder / "params.npz"
    f.parent.mkdir(parents=True)
    np.savez(f, W_enc=g.normal(size=(2304, 64)).astype(np.float32) * 0.05,
             W_dec=g.normal(size=(64, 2304)).astype(np.float32) * 0.05,
             b_enc=g.normal(size=64).astype(np.float32), b_dec=g.normal(size=2304).astype(np.float32),
             threshold=np.abs(g.normal(size=64)).astype(np.float32))  # fmt: skip
    # SAELens's converter, with the hub download replaced by the local file
    monkeypatch.setattr(loaders, "hf_hub_download", lambda **kw: str(f))
    cfg, state, _ = loaders.gemma_2_sae_huggingface_loader("google/gemma-scope-2b-pt-res", folder)
    cfg["d_sae"] = 64  # the converter reads the width from the folder name ("16k")
    theirs = sl.JumpReLUSAE(sl.JumpReLUSAEConfig.from_dict(loaders.handle_config_defaulting(cfg)))
    theirs.load_state_dict(state)
    ours = load_sae(f)
    assert ours.cfg.site == "resid_post.3"
    x = torch.randn(32, 2304, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_dense(x), theirs.encode(x), **TOL)
        torch.testing.assert_close(ours.reconstruct(x), theirs(x), **TOL)


# --- sparsify --------------------------------------------------------------------------------


def test_sparsify_written_loads_in_steerlab_and_back(tmp_path):
    from sparsify import SparseCoder, SparseCoderConfig

    theirs = SparseCoder(D_IN, SparseCoderConfig(k=5, num_latents=D_SAE))
    randomize_(theirs)
    theirs.save_to_disk(tmp_path / "run" / "layers.4")
    ours = load_sae(tmp_path / "run", "layers.4")
    assert ours.cfg.site == "resid_post.4"
    x = x32()
    with torch.no_grad():
        enc = theirs.encode(x)
        acts, idx = ours.encode(x)
        torch.testing.assert_close(
            torch.zeros(64, D_SAE).scatter(-1, idx, acts),
            torch.zeros(64, D_SAE).scatter(-1, enc.top_indices, enc.top_acts), **TOL)  # fmt: skip
        torch.testing.assert_close(
            ours.reconstruct(x), theirs.decode(enc.top_acts, enc.top_indices), **TOL
        )
        # and back: steerlab's writer, sparsify's reader
        back = SparseCoder.load_from_disk(save_sparsify(ours, tmp_path / "again"))
        e2 = back.encode(x)
        torch.testing.assert_close(
            back.decode(e2.top_acts, e2.top_indices), ours.reconstruct(x), **TOL
        )
        run = save_sparsify_run({"layers.2": ours, "layers.10": ours}, tmp_path / "ours")
        assert list(SparseCoder.load_many(str(run), local=True)) == ["layers.2", "layers.10"]


# --- dictionary_learning ---------------------------------------------------------------------


def dl_classes():
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    return {"AutoEncoder": (AutoEncoder, "relu_l1"), "AutoEncoderTopK": (AutoEncoderTopK, "topk"),
            "BatchTopKSAE": (BatchTopKSAE, "batchtopk"),
            "JumpReluAutoEncoder": (JumpReluAutoEncoder, "jumprelu"),
            "GatedAutoEncoder": (GatedAutoEncoder, "gated")}  # fmt: skip


@pytest.mark.parametrize("cls", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE",
                                 "JumpReluAutoEncoder", "GatedAutoEncoder"])  # fmt: skip
def test_dictionary_learning_written_loads_in_steerlab_and_back(tmp_path, cls):
    klass, arch = dl_classes()[cls]
    theirs = klass(D_IN, D_SAE, 5) if arch in ("topk", "batchtopk") else klass(D_IN, D_SAE)
    randomize_(theirs)
    if arch == "batchtopk":
        theirs.threshold.fill_(0.3)
    if arch == "jumprelu":
        with torch.no_grad():
            theirs.threshold.copy_(torch.rand(D_SAE) * 0.5)
    d = tmp_path / "trainer_0"
    d.mkdir()
    torch.save(theirs.state_dict(), d / "ae.pt")  # what dictionary_learning's training writes
    trainer = {"dict_class": cls, "activation_dim": D_IN, "dict_size": D_SAE, "layer": 2,
               "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_2"}  # fmt: skip
    if arch in ("topk", "batchtopk"):
        trainer["k"] = 5
    (d / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
    ours = load_sae(d)
    x = x32()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_dense(x), theirs.encode(x), **TOL)
        torch.testing.assert_close(ours.reconstruct(x), theirs(x), **TOL)
        out = save_dictionary_learning(ours, tmp_path / "ours") / "ae.pt"
        if cls == "AutoEncoder":
            back = klass.from_pretrained(out, normalize_decoder=False)
        elif cls == "JumpReluAutoEncoder":
            back = klass.from_pretrained(out)
        else:
            back = klass.from_pretrained(out)
        torch.testing.assert_close(back(x), ours.reconstruct(x), **TOL)
