"""Interventions meet the hidden state where it is: mixed dtypes, dispatched and offloaded models,
and an nnsight model whose weights are not local.

References: a float64 copy of the same model with a float64 copy of the intervention (mixed
dtypes), the undispatched model (accelerate's CPU + disk offload), and the plain HF capture
(nnsight with meta-device local weights).
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import dispatch_model
from transformers import GPT2Config, GPT2LMHeadModel

from steerlab.capture import capture
from steerlab.interventions import AddVector, LoReFT, SetCoords, apply_nnsight, steer
from steerlab.models import from_hf, from_nnsight, load_model, load_tokenizer
from steerlab.subspace import Subspace

TEXTS = ["The weather today is", "Once upon a time, there was"]
D = 32


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tok):
    """A randomly initialised 3-layer GPT-2 (config only)."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=D, n_layer=3, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def _handle(model, tok, name):
    return from_hf(copy.deepcopy(model), copy.deepcopy(tok), name)


def _interventions(kind: str):
    g = torch.Generator().manual_seed(1)
    if kind == "add_vector":
        return AddVector(torch.randn(D, generator=g), 3.0, "resid_post.1")
    if kind == "set_coords":
        sub = Subspace.from_vectors(torch.randn(2, D, generator=g))
        return SetCoords(sub, torch.tensor([2.0, -1.0]), "resid_post.1")
    iv = LoReFT(D, 2, "resid_post.1")  # a fresh LoReFT is not the identity: a real edit
    with torch.no_grad():
        iv.f.weight.normal_(generator=g)
    return iv


@pytest.mark.parametrize("kind", ["add_vector", "set_coords", "loreft"])
@pytest.mark.parametrize(("model_dtype", "iv_dtype"), [(torch.bfloat16, torch.float32),
                                                       (torch.float32, torch.bfloat16)])  # fmt: skip
def test_mixed_dtypes_match_a_float64_reference(gpt2, tok, kind, model_dtype, iv_dtype):
    model = copy.deepcopy(gpt2).to(model_dtype)
    iv = _interventions(kind).to(iv_dtype)
    # the reference computes in float64 from exactly the values both sides hold
    ref_model = copy.deepcopy(model).to(torch.float64)
    ref_iv = copy.deepcopy(iv).to(torch.float64)
    handle, ref = _handle(model, tok, "low"), _handle(ref_model, tok, "f64")
    with steer(handle, iv):
        got = capture(handle, TEXTS, "resid_post.2")["resid_post.2"]
    with steer(ref, ref_iv):
        want = capture(ref, TEXTS, "resid_post.2")["resid_post.2"]
    plain = capture(ref, TEXTS, "resid_post.2")["resid_post.2"]
    assert got.dtype == model_dtype  # the edit is returned in the hidden state's dtype
    assert iv_dtype == next(iter(iv.state_dict().values())).dtype  # the intervention kept its
    err = (got.double() - want).norm() / want.norm()
    # bfloat16 keeps 8 significant bits (eps 2^-8 = 3.9e-3): a bf16 forward through three
    # blocks lands within a few eps of float64; a float32 forward within ~1e-6
    assert err < (3e-2 if model_dtype == torch.bfloat16 else 1e-5)
    assert (want - plain).norm() / want.norm() > 10 * err  # the edit is far above the tolerance


def test_lowrank_training_gradients_reach_a_coarser_intervention(gpt2, tok):
    """A bfloat16 LoReFT on a float32 model runs through float32 copies; its parameters get
    gradients (the copies are differentiable ``.to`` of the originals)."""
    handle = _handle(gpt2, tok, "f32")
    iv = _interventions("loreft").to(torch.bfloat16)
    ids = tok(TEXTS[0], return_tensors="pt").input_ids
    with steer(handle, iv):
        out = handle.model(input_ids=ids)
    out.logits.float().square().mean().backward()
    grads = [p.grad for p in iv.parameters()]
    assert all(
        g is not None and g.dtype == torch.bfloat16 and bool(g.abs().sum() > 0) for g in grads
    )


def _offload_map(n_layer: int = 3) -> dict[str, str]:
    """Embeddings and block 0 in memory, blocks 1.. on disk, the head in memory."""
    m = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
         "transformer.ln_f": "cpu", "lm_head": "cpu", "transformer.h.0": "cpu"}  # fmt: skip
    m.update({f"transformer.h.{i}": "disk" for i in range(1, n_layer)})
    return m


def test_offloaded_model_captures_and_steers_like_the_plain_one(gpt2, tok, tmp_path):
    plain = _handle(gpt2, tok, "plain")
    moved = copy.deepcopy(gpt2)
    dispatched = dispatch_model(moved, device_map=_offload_map(), main_device="cpu",
                                offload_dir=str(tmp_path))  # fmt: skip
    handle = from_hf(dispatched, copy.deepcopy(tok), "offloaded")
    assert handle.dispatched and handle.device == torch.device("cpu")
    assert dispatched.transformer.h[2].attn.c_attn.weight.device.type == "meta"  # on disk
    sites = "resid_post.0,attn_out.1,resid_post.2"
    ivs = [_interventions("add_vector"), _interventions("set_coords")]
    for handle_ in (plain, handle):
        assert capture(handle_, TEXTS, sites).acts.keys() == set(sites.split(","))
    # the same CPU kernels on the same float32 weights (disk offload stores them exactly):
    # the results agree bit for bit
    a, b = capture(plain, TEXTS, sites), capture(handle, TEXTS, sites)
    for s in sites.split(","):
        assert torch.equal(a[s], b[s]), s
    with steer(plain, ivs):
        a = capture(plain, TEXTS, sites)
        enc = tok(TEXTS[0], return_tensors="pt")
        gen_a = plain.model.generate(**enc, max_new_tokens=6, do_sample=False)
    with steer(handle, copy.deepcopy(ivs)):
        b = capture(handle, TEXTS, sites)
        gen_b = handle.model.generate(**enc, max_new_tokens=6, do_sample=False)
    for s in sites.split(","):
        assert torch.equal(a[s], b[s]), s
    assert torch.equal(gen_a, gen_b)


def test_load_model_with_a_device_map_and_bfloat16(gpt2, tok, tmp_path):
    src = tmp_path / "model"
    gpt2.save_pretrained(src)
    tok.save_pretrained(src)
    ref = load_model(str(src), device="cpu", dtype="bfloat16")
    handle = load_model(str(src), device_map=_offload_map(), dtype=torch.bfloat16,
                        offload_folder=tmp_path / "offload")  # fmt: skip
    assert handle.dtype == torch.bfloat16 and handle.dispatched
    iv = _interventions("add_vector")  # float32 on a bfloat16 model
    with steer(ref, iv):
        a = capture(ref, TEXTS, "resid_post.2")["resid_post.2"]
    with steer(handle, copy.deepcopy(iv)):
        b = capture(handle, TEXTS, "resid_post.2")["resid_post.2"]
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)  # same kernels, same weights
    with pytest.raises(ValueError, match="not both"):
        load_model(str(src), device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="not a floating-point torch dtype"):
        load_model(str(src), dtype="int8")


def test_nnsight_paths_do_not_read_local_weights(gpt2, tok):
    """The handle's model holds only meta tensors (as for a model served by NDIF); the nnsight
    wrapper runs a real copy. Capture and steering through nnsight equal the plain HF ones."""
    from nnsight import LanguageModel

    plain = _handle(gpt2, tok, "plain")
    served = copy.deepcopy(gpt2)  # what the remote side runs
    lm = LanguageModel(served, tokenizer=copy.deepcopy(tok))
    handle = from_nnsight(lm, "served")
    handle.model = copy.deepcopy(gpt2).to("meta")  # no local weights at all
    assert handle.device == torch.device("cpu")
    sites = "resid_post.0,attn_out.1"
    a = capture(plain, TEXTS, sites)
    b = capture(handle, TEXTS, sites, backend="nnsight")
    for s in sites.split(","):
        # nnsight batches the same modules; float32 round-off of ~1e-6 relative (see
        # tests/interventions/test_hooks.py), activations are O(1)
        torch.testing.assert_close(a[s], b[s], rtol=1e-5, atol=1e-5)
    iv = _interventions("add_vector")
    enc = tok(TEXTS[0], return_tensors="pt")
    with steer(plain, iv), torch.no_grad():
        want = plain.model(**enc).logits
    with torch.no_grad(), lm.trace({"input_ids": enc.input_ids,
                                    "attention_mask": enc.attention_mask}):  # fmt: skip
        apply_nnsight(lm, handle, copy.deepcopy(iv))
        out = lm.output.save()
    got = out.logits if hasattr(out, "logits") else out["logits"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_nnsight_capture_and_vector_steering_through_the_remote_simulation(gpt2, tok, monkeypatch):
    """nnsight's ``remote="local"`` serialises each trace as it would for NDIF, deserialises it
    with every module that is not installed hidden (steerlab included) and runs it. steerlab's
    nnsight capture survives that, ships a request without the handle or its tokenizer, and
    equals the plain HF capture; so does steering by a plain envoy edit with a steerlab
    vector's tensor (the remote steering recipe of docs/scaling_out.md)."""
    from nnsight import TransformersModel
    from nnsight.schema.request import RequestModel

    sizes: list[int] = []
    serialize = RequestModel.serialize

    def measured(tracer, *args, **kwargs):
        blob = serialize(tracer, *args, **kwargs)
        sizes.append(len(blob))
        return blob

    monkeypatch.setattr(RequestModel, "serialize", staticmethod(measured))
    plain = _handle(gpt2, tok, "plain")
    lm = TransformersModel(copy.deepcopy(gpt2), tokenizer=copy.deepcopy(tok))
    handle = from_nnsight(lm, "served", remote="local")
    sites = "resid_post.0,attn_out.1"
    a = capture(plain, TEXTS, sites)
    b = capture(handle, TEXTS, sites, backend="nnsight")
    assert sizes, "the capture did not go through the remote path"
    # the tokenizer alone (49,152 tokens) pickles to ~1.5 MB; the request is a few kB
    assert max(sizes) < 100_000, sizes
    for s in sites.split(","):
        torch.testing.assert_close(a[s], b[s], rtol=1e-5, atol=1e-5)  # as in the test above
    iv = _interventions("add_vector")
    v = iv.effective().detach()  # α v̂: a plain tensor, which pickles
    enc = tok(TEXTS[0], return_tensors="pt")
    with steer(plain, iv), torch.no_grad():
        want = plain.model(**enc).logits
    inputs = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
    with torch.no_grad(), lm.trace(inputs, remote="local"):
        lm.transformer.h[1].output[:] += v  # resid_post.1, every position
        out = lm.output.save()
    got = out.logits if hasattr(out, "logits") else out["logits"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 forward, O(1) logits
