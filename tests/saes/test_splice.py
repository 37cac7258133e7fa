"""Splicing an SAE into the embedded model: the intervention, and CE/KL loss recovered."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steerlab.datasets.corpora import chunk_tokens, load_texts
from steerlab.interventions import load_intervention, steer
from steerlab.saes.sae import SaeConfig, TopKSae, build_sae
from steerlab.saes.splice import Replace, SaeSplice, spliced_losses
from steerlab.sites import hf_location

SITE = "resid_post.3"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is steadier for these forwards
    yield
    torch.set_num_threads(n)


def exact_sae(d: int, site: str = SITE) -> TopKSae:
    """A TopK SAE whose reconstruction is bit-exact: ``W_enc = [I, −I]``, ``W_dec = [I; −I]``,
    ``k = d``. Of each pair ``(x_i, −x_i)`` one is ``≥ 0``, so the top ``d`` pre-activations
    after ReLU are ``|x_i|`` on the right sign's row; every output coordinate is one product
    ``|x_i| · (±1)`` plus exact zeros."""
    sae = build_sae(SaeConfig(d_in=d, d_sae=2 * d, k=d, site=site))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae  # type: ignore[return-value]


@pytest.fixture(scope="module")
def windows(model):
    return chunk_tokens(model.tokenizer, load_texts("prose"), seq_len=24, n_tokens=72).input_ids


def test_exact_sae_reconstructs_bit_for_bit():
    x = torch.randn(50, 16) * 3
    assert torch.equal(exact_sae(16).reconstruct(x), x)


def test_exact_splice_leaves_logits_unchanged_and_recovers_all(model, windows):
    sae = exact_sae(model.d_model)
    ids = windows[:2]
    clean = model.model(input_ids=ids).logits
    with steer(model, SaeSplice(sae)):
        spliced = model.model(input_ids=ids).logits
    assert torch.equal(spliced, clean)
    res = spliced_losses(model, sae, windows, mean=torch.randn(model.d_model), batch_size=2)
    assert res.n_tokens == 3 * 23
    # exact: the splice returns h itself (torch.equal above), so both losses come from the same
    # logits through the same ops
    assert res.ce.spliced == res.ce.clean and res.kl.spliced == 0.0
    assert res.ce.vs_zero == 1.0 and res.ce.vs_mean == 1.0  # exact: (a − c) / (a − c)
    assert res.kl.vs_zero == 1.0 and res.kl.vs_mean == 1.0
    assert res.ce.zero_abl > res.ce.clean + 0.5  # zeroing the residual stream is ruinous


def test_zero_ablation_matches_a_manual_hook(model, windows):
    sae = exact_sae(model.d_model)
    res = spliced_losses(model, sae, windows, batch_size=3)
    assert math.isnan(res.ce.mean_abl) and math.isnan(res.ce.vs_mean)
    # independent computation: a plain forward hook that returns zeros at the block output
    module = hf_location(model, SITE).module

    def zero(_m, _a, out):
        return (torch.zeros_like(out[0]), *out[1:]) if isinstance(out, tuple) else out * 0

    with torch.no_grad():
        clean = model.model(input_ids=windows).logits[:, :-1].float()
        h = module.register_forward_hook(zero)
        try:
            abl = model.model(input_ids=windows).logits[:, :-1].float()
        finally:
            h.remove()
    y = windows[:, 1:].reshape(-1)
    ce_clean = F.cross_entropy(clean.flatten(0, 1).double(), y).item()
    ce_zero = F.cross_entropy(abl.flatten(0, 1).double(), y).item()
    kl_zero = F.kl_div(
        abl.flatten(0, 1).double().log_softmax(-1),
        clean.flatten(0, 1).double().log_softmax(-1),
        log_target=True,
        reduction="batchmean",
    ).item()
    # float32 log-softmax in the library vs float64 here: agreement to ~1e-6 relative
    assert res.ce.clean == pytest.approx(ce_clean, rel=1e-5)
    assert res.ce.zero_abl == pytest.approx(ce_zero, rel=1e-5)
    assert res.kl.zero_abl == pytest.approx(kl_zero, rel=1e-4)


def test_mean_ablation_baseline_and_a_real_sae(model, windows):
    torch.manual_seed(0)
    sae = build_sae(SaeConfig(d_in=model.d_model, d_sae=64, k=4, site=SITE))  # random: poor
    mu = torch.randn(model.d_model)
    res = spliced_losses(model, sae, windows, mean=mu, batch_size=3)
    # the same formula as steerlab.saes.evals, checked against its definition here
    c = res.ce
    assert c.vs_zero == pytest.approx((c.zero_abl - c.spliced) / (c.zero_abl - c.clean))
    assert c.vs_mean == pytest.approx((c.mean_abl - c.spliced) / (c.mean_abl - c.clean))
    assert res.kl.clean == 0.0 and res.kl.spliced > 0 and res.kl.mean_abl > 0  # KL(p‖p) = 0
    # the Replace intervention writes exactly the constant
    h = torch.randn(2, 5, model.d_model)
    assert torch.equal(Replace(mu, SITE)(h), mu.expand_as(h))


def test_positions_rule_limits_the_splice(model, windows):
    sae = build_sae(SaeConfig(d_in=model.d_model, d_sae=64, k=4, site=SITE))
    ids = windows[:1]
    clean = model.model(input_ids=ids).logits
    with torch.no_grad(), steer(model, SaeSplice(sae, positions="last")):
        out = model.model(input_ids=ids).logits
    assert torch.equal(out[:, :-1], clean[:, :-1])  # causal: earlier positions untouched
    assert not torch.equal(out[:, -1], clean[:, -1])


def test_save_load_round_trip(tmp_path, model):
    sae = build_sae(SaeConfig(d_in=model.d_model, d_sae=64, k=4, site=SITE))
    for iv in (SaeSplice(sae, positions="last"), Replace(torch.randn(model.d_model), SITE)):
        iv.save(tmp_path / iv.KIND)
        back = load_intervention(tmp_path / iv.KIND)
        assert type(back) is type(iv) and back.site == SITE
        h = torch.randn(1, 4, model.d_model)
        assert torch.equal(back(h), iv(h))


def test_bad_input(model):
    sae = build_sae(SaeConfig(d_in=model.d_model, d_sae=64, k=4))  # no site
    with pytest.raises(ValueError, match="site"):
        SaeSplice(sae)
    narrow = SaeSplice(build_sae(SaeConfig(d_in=8, d_sae=16, k=2, site=SITE)))
    with pytest.raises(ValueError, match="width"), steer(model, narrow):
        pass
    with pytest.raises(ValueError, match="input_ids"):
        spliced_losses(model, sae, torch.zeros(3, dtype=torch.long), site=SITE)
    with pytest.raises(ValueError, match="NaN"):
        Replace(torch.full((4,), float("nan")), SITE)
