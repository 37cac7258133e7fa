"""JumpReLU, BatchTopK and gated SAEs: encode/decode against float64 references written here
from the papers' equations, BatchTopK's training selection, and a round trip of every
architecture through steerlab's and SAELens's layouts."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.saes import NormalizedSae, Sae, SaeConfig, build_sae, load_sae
from steerlab.saes.batchtopk import batch_topk
from steerlab.saes.io.saelens import SAELENS_CFG, load_saelens, save_saelens

ARCHS = ["topk", "relu_l1", "jumprelu", "batchtopk", "gated"]
# Same float64 operations in a different order (matmul blocking): round-off near 1e-15.
ATOL64 = 1e-12


def random_sae(arch: str, d_in: int = 8, d_sae: int = 24, k: int = 3, dtype: str = "float64",
               seed: int = 0) -> Sae:  # fmt: skip
    """An SAE with every tensor random (thresholds of both signs, where the class has them)."""
    g = torch.Generator().manual_seed(seed)
    sae = build_sae(SaeConfig(d_in=d_in, d_sae=d_sae, k=k, architecture=arch, dtype=dtype,
                              site="resid_post.5", model_id="tiny"))  # fmt: skip
    with torch.no_grad():
        for name, p in sae.state_dict().items():
            if name == "threshold" and p.ndim == 0:
                p.fill_(0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return sae


def params(sae: Sae) -> dict[str, torch.Tensor]:
    return {n: t.detach().double() for n, t in sae.state_dict().items()}


def test_jumprelu_matches_the_paper():
    sae = random_sae("jumprelu")
    p = params(sae)
    p["threshold"][:4] = -0.2  # a negative threshold: the ReLU still zeroes negatives
    with torch.no_grad():
        sae.threshold.copy_(p["threshold"])
    x = torch.randn(50, 8, dtype=torch.float64)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    z_ref = torch.where((pre > p["threshold"]) & (pre > 0), pre, torch.zeros_like(pre))
    with torch.no_grad():
        z = sae.encode_dense(x)
        torch.testing.assert_close(z, z_ref, atol=ATOL64, rtol=0)
        torch.testing.assert_close(sae.reconstruct(x), z_ref @ p["W_dec"] + p["b_dec"],
                                   atol=ATOL64, rtol=0)  # fmt: skip
    assert 0 < int((z > 0).sum()) < z.numel()  # the test data exercises both sides


def test_gated_matches_the_paper():
    sae = random_sae("gated")
    p = params(sae)
    x = torch.randn(50, 8, dtype=torch.float64)
    u = (x - p["b_dec"]) @ p["W_enc"]
    gate = (u + p["b_enc"]) > 0  # b_enc is the gate bias
    mag = torch.clamp(u * torch.exp(p["r_mag"]) + p["b_mag"], min=0)
    z_ref = gate.double() * mag
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z_ref, atol=ATOL64, rtol=0)
        torch.testing.assert_close(sae.reconstruct(x), z_ref @ p["W_dec"] + p["b_dec"],
                                   atol=ATOL64, rtol=0)  # fmt: skip


def test_batchtopk_inference_is_a_fixed_threshold():
    sae = random_sae("batchtopk")
    p = params(sae)
    x = torch.randn(40, 8, dtype=torch.float64)
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    z_ref = torch.where(pre > 0.3, pre, torch.zeros_like(pre))  # θ = 0.3 > 0
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), z_ref, atol=ATOL64, rtol=0)
        out = sae(x)  # under no_grad the threshold decides even in training mode
    torch.testing.assert_close(out.latent_acts, z_ref, atol=ATOL64, rtol=0)
    assert float(sae.threshold) == 0.3  # unchanged: no training step happened


def test_batchtopk_training_keeps_k_per_token_on_average_and_learns_the_threshold():
    sae = random_sae("batchtopk", k=3)
    with torch.no_grad():
        sae.threshold.fill_(-1.0)  # not estimated yet
    p = params(sae)
    x = torch.randn(40, 8, dtype=torch.float64)
    a = ((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]).clamp_min(0)
    kept = a.flatten().sort(descending=True).values[: 3 * 40]
    assert kept[-1] > 0  # enough positive activations for an exact count
    out = sae.train()(x)  # gradients on, training mode: batch TopK
    z = out.latent_acts.detach()
    assert int((z > 0).sum()) == 3 * 40
    # the kept entries are exactly the 3·40 largest of ReLU(pre), with their values
    torch.testing.assert_close(z.flatten().sort(descending=True).values[: 3 * 40], kept,
                               atol=ATOL64, rtol=0)  # fmt: skip
    assert abs(float(sae.threshold) - float(kept[-1])) < ATOL64  # first estimate taken as is
    out2 = sae(x * 1.5)
    m2 = float(out2.latent_acts.detach()[out2.latent_acts.detach() > 0].min())
    expected = 0.999 * float(kept[-1]) + 0.001 * m2
    assert abs(float(sae.threshold) - expected) < ATOL64
    out2.fvu.backward()  # the training loss is differentiable
    assert sae.W_enc.grad is not None and torch.isfinite(sae.W_enc.grad).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(2, 9), st.integers(0, 2**31 - 1))
def test_batch_topk_property(batch, k, d_sae, seed):
    a = torch.randn(batch, d_sae, generator=torch.Generator().manual_seed(seed)).relu()
    z = batch_topk(a, k)
    kept = z != 0
    assert int(kept.sum()) <= min(k * batch, a.numel())
    assert torch.equal(z[kept], a[kept])  # values are copied, never changed
    if kept.any() and (~kept).any():
        assert float(a[kept].min()) >= float(a[~kept].max())  # no dropped entry beats a kept one


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_round_trips_through_steerlab_and_saelens(tmp_path, arch):
    sae = random_sae(arch, dtype="float32")
    x = torch.randn(30, 8)
    path = sae.save(tmp_path / "own")
    back = load_sae(path)
    assert type(back) is type(sae) and back.cfg == sae.cfg
    for n, t in sae.state_dict().items():
        assert torch.equal(back.state_dict()[n], t), n  # stored verbatim
    sl = save_saelens(sae, tmp_path / "sl")
    cfg = json.loads((sl / SAELENS_CFG).read_text())
    assert cfg["architecture"] == {"relu_l1": "standard", "batchtopk": "jumprelu"}.get(arch, arch)
    back2 = load_sae(sl)
    assert type(back2) is type(sae)  # a BatchTopK comes back through its steerlab metadata
    with torch.no_grad():
        # the layouts store the same float32 numbers; only TopK decodes sparsely vs densely
        torch.testing.assert_close(back2.reconstruct(x), sae.reconstruct(x), atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_normalized_sae_matches_saelens_runtime_norm(tmp_path, mode):
    inner = random_sae("relu_l1")
    norm = NormalizedSae(inner, mode)
    p = params(inner)
    x = torch.randn(20, 8, dtype=torch.float64) * 3 + 1
    # SAELens's run_time_activation_norm_fn_in / _out, written out from its source
    if mode == "constant_norm_rescale":
        c = 8**0.5 / x.norm(dim=-1, keepdim=True)
        xn, undo = x * c, lambda y: y / c
    else:
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        xn, undo = (x - mu) / (std + 1e-5), lambda y: y * std + mu
    z = ((xn - p["b_dec"]) @ p["W_enc"] + p["b_enc"]).clamp_min(0)
    with torch.no_grad():
        torch.testing.assert_close(norm.encode_dense(x), z, atol=ATOL64, rtol=0)
        torch.testing.assert_close(norm.reconstruct(x), undo(z @ p["W_dec"] + p["b_dec"]),
                                   atol=ATOL64, rtol=0)  # fmt: skip
    path = save_saelens(norm, tmp_path / "sl")
    assert json.loads((path / SAELENS_CFG).read_text())["normalize_activations"] == mode
    back = load_saelens(path)
    assert isinstance(back, NormalizedSae) and back.mode == mode
    with torch.no_grad():
        assert torch.equal(back.reconstruct(x), norm.reconstruct(x))
