"""TopK and ReLU-L1 SAEs: selection, sparse vs dense paths, decoder-norm utilities, losses.

References are independent float64 computations written out here (dense matmuls, explicit
sorting, the projection formula), so tolerances are float64 round-off unless stated.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.saes.kernels import SparseDecode, TopKEncode
from steerlab.saes.sae import (
    SAE_CLASSES,
    ReluSae,
    SaeConfig,
    TopKSae,
    build_sae,
    lr_for_width,
    sae_class,
)

# float64 round-off on sums of a few hundred terms of size ~1: far below 1e-10.
TOL64 = 1e-10


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: multi-threaded BLAS on tiny matrices is 50x slower than one thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_sae(arch="topk", d_in=16, d_sae=64, k=4, seed=0, dtype="float64") -> TopKSae | ReluSae:
    torch.manual_seed(seed)
    sae = build_sae(SaeConfig(d_in=d_in, d_sae=d_sae, k=k, architecture=arch, dtype=dtype))
    with torch.no_grad():  # non-trivial biases so every term of the equations is exercised
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae


def test_config_validation():
    with pytest.raises(ValueError, match="k must satisfy"):
        SaeConfig(d_in=8, d_sae=16, k=16)
    with pytest.raises(ValueError, match="unknown architecture"):
        SaeConfig(d_in=8, d_sae=16, architecture="abstopk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        SaeConfig(d_in=8, d_sae=16, k=2, dtype="int8")
    with pytest.raises(ValueError, match="init_dim"):
        SaeConfig(d_in=8, d_sae=16, k=2, init_dim=9)
    with pytest.raises(ValueError, match="name"):
        SaeConfig(d_in=8, d_sae=16, k=2, name="a/b")
    cfg = SaeConfig(d_in=8, d_sae=16, k=2, site="resid_post.3")
    assert cfg.name == "resid_post.3.topk.w16.k2.tied"
    assert SaeConfig.from_dict({**cfg.to_dict(), "kind": "sae"}) == cfg
    # k is irrelevant for ReLU-L1, so any k is accepted there
    SaeConfig(d_in=8, d_sae=16, k=100, architecture="relu_l1")


def test_registry():
    # jumprelu, batchtopk and gated register from their own modules (steerlab.saes imports them)
    assert sorted(SAE_CLASSES) == ["batchtopk", "gated", "jumprelu", "relu_l1", "topk"]
    assert sae_class("topk") is TopKSae and sae_class("relu_l1") is ReluSae
    with pytest.raises(ValueError, match="unknown SAE architecture 'abstopk'"):
        sae_class("abstopk")


def test_lr_for_width():
    assert lr_for_width(2**14, 2e-4) == pytest.approx(2e-4)  # Gao et al.'s Adam lr
    assert lr_for_width(2**16, 2e-4) == pytest.approx(1e-4)  # 4x wider -> lr / 2
    assert lr_for_width(4608) == pytest.approx(3.0e-3, rel=0.01)  # the default: 3e-3 at 8 x 576


def test_topk_keeps_exactly_k():
    sae = make_sae(k=5)
    x = torch.randn(40, 16, dtype=torch.float64)
    acts, idx = sae.encode(x)
    assert acts.shape == idx.shape == (40, 5)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    ref_vals, _ = pre.sort(dim=-1, descending=True)
    for t in range(40):
        assert len(set(idx[t].tolist())) == 5  # k distinct latents
        got = pre[t, idx[t]].sort(descending=True).values
        assert torch.equal(got, ref_vals[t, :5])  # ... and they are the k largest
    # the encoder's fused addmm rounds differently from (x − b) W + b: float64 round-off
    torch.testing.assert_close(acts, pre.gather(1, idx).relu(), atol=TOL64, rtol=0)
    dense = sae.encode_dense(x)
    assert ((dense != 0).sum(-1) <= 5).all()
    # a strongly negative b_enc makes some kept pre-activations negative: ReLU zeroes them
    with torch.no_grad():
        sae.b_enc.fill_(-3.0)
    acts, _ = sae.encode(x)
    assert (acts == 0).any() and (acts >= 0).all()


def test_sparse_decode_equals_dense():
    sae = make_sae(k=6)
    x = torch.randn(3, 7, 16, dtype=torch.float64)  # leading dims are kept
    acts, idx = sae.encode(x)
    sparse = sae.decode(acts, idx)
    dense = sae.encode_dense(x) @ sae.W_dec + sae.b_dec  # reference: dense matmul
    assert sparse.shape == (3, 7, 16)
    torch.testing.assert_close(sparse, dense, atol=TOL64, rtol=0)
    torch.testing.assert_close(sae.reconstruct(x), dense, atol=TOL64, rtol=0)


def test_fused_encoder_matches_dense_autograd():
    sae = make_sae(k=5)
    x = torch.randn(50, 16, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        sae.zero_grad()
        acts, idx = sae.encode(x, fused=fused)
        w = torch.randn(acts.shape, generator=torch.Generator().manual_seed(1), dtype=acts.dtype)
        (acts * w).sum().backward()
        grads.append([p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.b_dec)])
        if fused:
            ref_idx = idx
        else:
            assert torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)
    for g_fused, g_dense in zip(*grads):
        torch.testing.assert_close(g_fused, g_dense, atol=TOL64, rtol=0)


def test_fused_encoder_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b_dec = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(5, 9, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=g, requires_grad=True)
    # gradcheck perturbs inputs by 1e-6; random data has no near-ties at that scale
    assert torch.autograd.gradcheck(
        lambda xx, bd, w, bb: TopKEncode.apply(xx, bd, w, bb, 3)[0], (x, b_dec, W, b)
    )


def test_sparse_decoder_backward_matches_dense_autograd():
    sae = make_sae(k=5)
    x = torch.randn(40, 16, dtype=torch.float64)
    acts, idx = sae.encode(x)
    w = torch.randn(40, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for sparse in (True, False):
        sae.zero_grad()
        a = acts.detach().clone().requires_grad_()
        if sparse:
            out = sae.decode(a, idx)
        else:  # reference: scatter into the dense code and decode with a dense matmul
            out = torch.zeros(40, sae.d_sae, dtype=a.dtype).scatter(1, idx, a) @ sae.W_dec
            out = out + sae.b_dec
        (out * w).sum().backward()
        grads.append([a.grad.clone(), sae.W_dec.grad.clone(), sae.b_dec.grad.clone()])
    for g_sparse, g_dense in zip(*grads):
        torch.testing.assert_close(g_sparse, g_dense, atol=TOL64, rtol=0)


def test_sparse_decoder_gradcheck():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.rand(6, 9, generator=g).topk(3, dim=1).indices
    W = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: SparseDecode.apply(a, idx, w), (acts, W))


def test_remove_parallel_gradient_closed_form():
    sae = make_sae()
    g = torch.randn_like(sae.W_dec)
    sae.W_dec.grad = g.clone()
    sae.remove_gradient_parallel_to_decoder_directions_()
    d = sae.W_dec.detach()
    ref = g - (g * d).sum(1, keepdim=True) * d  # rows of d are unit norm
    torch.testing.assert_close(sae.W_dec.grad, ref, atol=TOL64, rtol=0)
    assert (sae.W_dec.grad * d).sum(1).abs().max() < TOL64


def test_decoder_rows_unit_norm_after_a_step():
    sae = make_sae(dtype="float32")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(64, 16)
    out = sae(x)
    out.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions_()
    opt.step()
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() > 1e-4  # Adam moved the rows off the sphere
    sae.set_decoder_norm_to_unit_norm_()
    # float32 normalisation: |‖row‖ − 1| within a few eps
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-6


def _fvu64(x, y):
    return (x - y).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30), arch=st.sampled_from(["topk", "relu_l1"]))
def test_forward_fvu_closed_form(seed, n, arch):
    sae = make_sae(arch, seed=seed)
    x = torch.randn(n, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = sae(x)
    torch.testing.assert_close(out.fvu, _fvu64(x, out.sae_out), atol=TOL64, rtol=TOL64)
    assert float(out.l0) == pytest.approx(float((sae.encode_dense(x) > 0).sum(-1).double().mean()))


def test_auxk_loss_closed_form():
    sae = make_sae(d_in=16, d_sae=64, k=4)
    x = torch.randn(30, 16, dtype=torch.float64)
    assert sae(x).auxk_loss == 0  # no dead mask, no AuxK
    for n_dead in (3, 20):  # fewer and more dead latents than k_aux = d_in / 2 = 8
        dead = torch.zeros(64, dtype=torch.bool)
        dead[torch.randperm(64, generator=torch.Generator().manual_seed(n_dead))[:n_dead]] = True
        out = sae(x, dead_mask=dead)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        pre = pre.masked_fill(~dead, -torch.inf)
        k_aux = min(8, n_dead)
        vals, idx = pre.topk(k_aux, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals)  # no ReLU, as in sparsify
        e_hat = z @ sae.W_dec  # no bias: it reconstructs a residual
        e = x - out.sae_out
        ref = min(n_dead / 8, 1.0) * (e_hat - e).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        torch.testing.assert_close(out.auxk_loss, ref, atol=TOL64, rtol=TOL64)
        out.auxk_loss.backward()  # gradient reaches the dead latents' encoder columns
        assert sae.W_enc.grad[:, dead].abs().sum() > 0
        assert sae.W_enc.grad[:, ~dead].abs().sum() == 0
        sae.zero_grad()


def test_relu_sae_losses_closed_form():
    sae = make_sae("relu_l1")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1, dtype=torch.float64) + 0.5)  # non-unit rows
    x = torch.randn(25, 16, dtype=torch.float64)
    out = sae(x)
    z = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).clamp_min(0)
    assert out.latent_indices is None
    torch.testing.assert_close(out.latent_acts, z, atol=TOL64, rtol=0)
    torch.testing.assert_close(out.sae_out, z @ sae.W_dec + sae.b_dec, atol=TOL64, rtol=0)
    rms = ((x - x.mean(0)).pow(2).sum(1).mean()).sqrt()
    ref_l1 = (z * sae.W_dec.norm(dim=1)).sum(1).mean() / rms
    torch.testing.assert_close(out.l1_loss, ref_l1, atol=TOL64, rtol=TOL64)
    # scale-free: x, b_dec and b_enc times c give latents times c and the same FVU and penalty
    c = 7.0
    with torch.no_grad():
        sae.b_dec.mul_(c)
        sae.b_enc.mul_(c)
    out2 = sae(x * c)
    torch.testing.assert_close(out2.latent_acts, out.latent_acts * c, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out2.l1_loss, out.l1_loss, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out2.fvu, out.fvu, atol=1e-9, rtol=1e-9)


def test_latent_counts():
    sae = make_sae(k=3)
    x = torch.randn(20, 16, dtype=torch.float64)
    out = sae(x)
    ref = (sae.encode_dense(x) > 0).sum(0)
    assert torch.equal(sae.latent_counts(out), ref)
    relu = make_sae("relu_l1")
    out = relu(x)
    assert torch.equal(relu.latent_counts(out), (relu.encode_dense(x) > 0).sum(0))


def test_forward_rejects_bad_shapes():
    sae = make_sae()
    with pytest.raises(ValueError, match=r"\[batch, 16\]"):
        sae(torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="k must be"):
        sae.encode(torch.randn(4, 16, dtype=torch.float64), k=65)
