"""CUDA against CPU: capture, steering, an SAE training step, a LEACE fit, a split model.

Marked ``gpu`` and skipped without CUDA (``pytest -m gpu tests/test_gpu.py`` on a GPU machine).
Each check runs the same computation on the CPU (the reference) and on ``cuda:0``.
Tolerances: float32 CUDA kernels sum in other orders than the CPU's (and cuBLAS may pick
other algorithms), ~1e-6 relative per op; through a few layers the tests allow 1e-4. TF32 is
switched off so that float32 means float32. bfloat16 results are compared at 3e-2 (a few
bfloat16 eps, 2^-8). Float64 statistics stay float64 on the GPU and agree to 1e-10.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from steerlab.capture import capture, capture_to_store
from steerlab.erasure.leace import LeaceFitter
from steerlab.interventions import AddVector, LoReFT, steer
from steerlab.models import from_hf, load_tokenizer
from steerlab.saes.sae import SaeConfig
from steerlab.saes.train import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXTS = ["The weather today is", "Once upon a time, there was a"]
F32 = {"rtol": 1e-4, "atol": 1e-4}
BF16 = {"rtol": 3e-2, "atol": 3e-2}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tok):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=3, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def _on(gpt2, tok, device, dtype=torch.float32):
    return from_hf(copy.deepcopy(gpt2).to(device, dtype), copy.deepcopy(tok), f"tiny-{device}")


def test_capture_cuda_equals_cpu(gpt2, tok, tmp_path):
    cpu, gpu = _on(gpt2, tok, "cpu"), _on(gpt2, tok, "cuda")
    sites = "resid_post.0,attn_out.1,mlp_out.2"
    a, b = capture(cpu, TEXTS, sites), capture(gpu, TEXTS, sites)
    for s in sites.split(","):
        torch.testing.assert_close(b[s].cpu(), a[s], **F32)
    # a bfloat16 store written from the GPU records its dtype and holds the CPU's rows
    ids = torch.randint(0, len(tok), (6, 16), generator=torch.Generator().manual_seed(0))
    ref = capture_to_store(cpu, ids, sites, str(tmp_path / "cpu"), dtype="bfloat16")
    got = capture_to_store(gpu, ids, sites, str(tmp_path / "gpu"), dtype="bfloat16")
    assert got.manifest["dtype"] == "bfloat16" and got.dtype == "bfloat16"
    for s in sites.split(","):
        torch.testing.assert_close(got.site(s)[:].float(), ref.site(s)[:].float(), **BF16)


def test_steering_cuda_equals_cpu(gpt2, tok):
    g = torch.Generator().manual_seed(1)
    ivs = [AddVector(torch.randn(64, generator=g), 4.0, "resid_post.1"), LoReFT(64, 2, "mlp_out.2")]
    cpu, gpu = _on(gpt2, tok, "cpu"), _on(gpt2, tok, "cuda")
    enc = tok(TEXTS[0], return_tensors="pt")
    with steer(cpu, copy.deepcopy(ivs)), torch.no_grad():
        want = cpu.model(**enc).logits
    with steer(gpu, copy.deepcopy(ivs)), torch.no_grad():  # moved to the GPU by steer()
        got = gpu.model(**enc.to("cuda")).logits
    torch.testing.assert_close(got.cpu(), want, **F32)
    # a float32 intervention on a bfloat16 model on the GPU
    bf = _on(gpt2, tok, "cuda", torch.bfloat16)
    with steer(bf, copy.deepcopy(ivs)), torch.no_grad():
        low = bf.model(**enc.to("cuda")).logits
    assert low.dtype == torch.bfloat16
    assert ((low.float().cpu() - want).norm() / want.norm()) < 5e-2


@pytest.mark.parametrize("autocast", ["off", "auto"])
def test_sae_training_steps_cuda_equal_cpu(autocast):
    """Two steps; without autocast in float64 (exact up to summation order: 1e-9), with the
    default bfloat16 autocast on CUDA in float32 (the FVU within 0.05 of the CPU's)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2048, 32, generator=g) @ torch.randn(32, 32, generator=g)
    dtype = "float64" if autocast == "off" else "float32"
    cfgs = [SaeConfig(d_in=32, d_sae=128, k=8, site="x", name="s", init="active_subspace",
                      dtype=dtype)]  # fmt: skip

    def run(device):
        tc = TrainConfig(batch_size=256, max_tokens=256 * 2, lr=1e-3, warmup_steps=0,
                         decay_frac=0.0, init_tokens=1024, device=device, autocast=autocast)  # fmt: skip
        return train({"x": x}, cfgs, tc, callback=lambda p: None)

    a, b = run("cpu"), run("cuda")
    fvu_a, fvu_b = a.last_metrics["s"]["fvu"], b.last_metrics["s"]["fvu"]
    assert b.saes["s"].W_enc.device.type == "cuda"
    if autocast == "off":
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(b.saes["s"], n).cpu(), getattr(a.saes["s"], n),
                                       rtol=1e-9, atol=1e-9)  # fmt: skip
        assert fvu_b == pytest.approx(fvu_a, rel=1e-6)  # metrics are float32 sums
    else:  # parameters, gradients and Adam state stay float32 under autocast
        assert b.saes["s"].W_enc.dtype == torch.float32
        assert fvu_b == pytest.approx(fvu_a, abs=5e-2)


def test_leace_fit_float64_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 16, generator=g)
    z = torch.randint(0, 3, (500,), generator=g)
    x[:, 0] += z
    a = LeaceFitter.fit(x, z)
    b = LeaceFitter.fit(x.cuda(), z.cuda())
    assert b.mean_x.dtype == torch.float64 and b.mean_x.device.type == "cuda"
    torch.testing.assert_close(b.eraser.P.cpu(), a.eraser.P, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_model_split_over_two_gpus_captures_and_steers_like_one(gpt2, tok):
    from accelerate import dispatch_model

    one = _on(gpt2, tok, "cuda:0")
    device_map = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.drop": 0,
                  "transformer.h.0": 0, "transformer.h.1": 1, "transformer.h.2": 1,
                  "transformer.ln_f": 1, "lm_head": 0}  # fmt: skip
    split = from_hf(dispatch_model(copy.deepcopy(gpt2), device_map=device_map),
                    copy.deepcopy(tok), "split")  # fmt: skip
    iv = AddVector(torch.randn(64, generator=torch.Generator().manual_seed(4)), 4.0, "resid_post.1")
    sites = "resid_post.0,resid_post.2"
    with steer(one, copy.deepcopy(iv)):
        a = capture(one, TEXTS, sites)
    with steer(split, copy.deepcopy(iv)):
        b = capture(split, TEXTS, sites)
    for s in sites.split(","):
        torch.testing.assert_close(b[s].cpu(), a[s].cpu(), **F32)
