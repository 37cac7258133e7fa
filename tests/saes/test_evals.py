"""SAE metrics against closed forms on tiny data (float64 references written out here)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.capture.store import ActivationStore, StoreWriter
from steerlab.saes.evals import (
    MetricsFitter,
    ce_loss_recovered,
    density_histogram,
    evaluate,
    fvu,
    loss_recovered,
)
from steerlab.saes.sae import SaeConfig, build_sae

# Sums of a few hundred float64 terms: relative round-off far below 1e-10.
TOL64 = 1e-10


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster for tiny matrices
    yield
    torch.set_num_threads(n)


def test_fvu_closed_form_tiny():
    # x = [[0, 0], [2, 0], [4, 6]]: mean (2, 2); Σ‖x − x̄‖² = (4+4) + (0+4) + (4+16) = 32
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 6.0]])
    x_hat = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 4.0]])  # Σ‖x − x̂‖² = 1 + 0 + 4 = 5
    m = MetricsFitter(2).update(x[:1], x_hat[:1]).update(x[1:], x_hat[1:]).finalize()
    assert m.fvu == pytest.approx(5 / 32, abs=TOL64)
    assert m.explained_variance == pytest.approx(27 / 32, abs=TOL64)
    assert m.mse_per_token == pytest.approx(5 / 3, abs=TOL64)  # summed over d, mean over tokens
    assert m.mse_per_element == pytest.approx(5 / 6, abs=TOL64)
    assert fvu(x, x_hat) == pytest.approx(5 / 32, abs=TOL64)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(1, 59), max_size=6),
    offset=st.floats(-1e3, 1e3),
)
def test_fvu_streaming_equals_one_shot_about_the_mean(seed, cuts, offset):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64) * 3 + offset
    x_hat = x + 0.3 * torch.randn(60, 5, generator=g, dtype=torch.float64)
    fitter = MetricsFitter(5)
    bounds = [0, *sorted(set(cuts)), 60]
    for a, b in zip(bounds, bounds[1:]):
        fitter.update(x[a:b], x_hat[a:b])
    m = fitter.finalize()
    ref = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()  # about the *global* mean
    # offset up to 1e3 on data of scale 3: float64 cancellation error ~1e-16 · (1e3/3)² ≈ 1e-11
    assert m.fvu == pytest.approx(float(ref), rel=1e-9)
    # adding a constant to x and x̂ cannot change FVU (SAELens #659 measured variance about 0)
    m2 = MetricsFitter(5).update(x + 50, x_hat + 50).finalize()
    assert m2.fvu == pytest.approx(m.fvu, rel=1e-9)


def test_per_batch_ratios_are_not_averaged():
    # two batches with very different variances: the mean of per-batch FVUs differs from FVU
    x1, x2 = torch.zeros(4, 1).double(), torch.tensor([[0.0], [10.0], [0.0], [10.0]]).double()
    x1 += torch.tensor([[0.0], [1.0], [0.0], [1.0]]).double()
    e = torch.full((4, 1), 0.5, dtype=torch.float64)
    m = MetricsFitter(1).update(x1, x1 + e).update(x2, x2 + e).finalize()
    x, xh = torch.cat([x1, x2]), torch.cat([x1 + e, x2 + e])
    assert m.fvu == pytest.approx(fvu(x, xh), abs=TOL64)
    assert m.fvu != pytest.approx((fvu(x1, x1 + e) + fvu(x2, x2 + e)) / 2)


def test_sparsity_metrics_closed_form():
    # 4 latents, 5 tokens; counts per latent over two batches: [5, 1, 0, 0] + [0, 2, 0, 0]
    fitter = MetricsFitter(2, d_sae=4, dense_threshold=0.5)
    x = torch.randn(5, 2, dtype=torch.float64)
    fitter.update(x[:3], x[:3], counts=torch.tensor([3, 1, 0, 0]))
    fitter.update(x[3:], x[3:], counts=torch.tensor([2, 2, 0, 0]))
    m = fitter.finalize()
    assert m.fvu == 0 and m.explained_variance == 1
    assert m.l0 == pytest.approx(8 / 5)
    assert torch.equal(m.density, torch.tensor([1.0, 0.6, 0.0, 0.0]))
    assert m.dead_frac == 0.5
    assert m.dense_frac == 0.5  # densities 1.0 and 0.6 are above 0.5


def test_density_histogram():
    density = torch.tensor([0.0, 0.0, 1e-3, 1e-3, 1e-1, 1.0, 1e-9])
    h = density_histogram(density, bins=8, lo=-8.0)  # bins of width 1 in log10
    assert h.n_dead == 2
    assert h.counts.sum() == 5  # the 1e-9 latent is clamped into the first bin
    assert h.edges[0] == -8 and h.edges[-1] == 0
    assert h.counts[0] == 1  # 1e-9 (clamped to -8)
    assert h.counts[5] == 2  # log10 = -3 -> bin [-3, -2)
    assert h.counts[7] == 2  # -1 and 0 (the upper edge belongs to the last bin)


def test_ce_loss_recovered_formula():
    r = ce_loss_recovered(clean=2.0, spliced=2.5, zero_abl=7.0, mean_abl=4.0)
    assert r.vs_zero == pytest.approx((7.0 - 2.5) / (7.0 - 2.0))
    assert r.vs_mean == pytest.approx((4.0 - 2.5) / (4.0 - 2.0))
    assert ce_loss_recovered(2.0, 2.0, 7.0).vs_zero == 1.0  # perfect SAE
    assert ce_loss_recovered(2.0, 7.0, 7.0).vs_zero == 0.0  # no better than ablation
    assert math.isnan(ce_loss_recovered(2.0, 2.5, 7.0).vs_mean)  # no mean-ablation loss
    assert math.isnan(ce_loss_recovered(2.0, 2.5, 2.0).vs_zero)  # zero denominator
    kl = ce_loss_recovered(0.0, 0.1, 1.0)  # KL score: clean KL is 0
    assert kl.vs_zero == pytest.approx(0.9)


def test_loss_recovered_calls_loss_fn_with_replacements():
    torch.manual_seed(0)
    sae = build_sae(SaeConfig(d_in=4, d_sae=8, k=2, dtype="float64"))
    h = torch.randn(3, 5, 4, dtype=torch.float64) + 1.0
    mean = h.reshape(-1, 4).mean(0)
    calls = []

    def loss_fn(replace):  # a stand-in "model": loss = mean ‖h' − target‖²
        calls.append(replace)
        hp = h if replace is None else replace(h)
        return float((hp - 2 * h).pow(2).mean())

    r = loss_recovered(loss_fn, sae, mean)
    assert calls[0] is None and len(calls) == 4
    assert r.clean == pytest.approx(float(h.pow(2).mean()))
    with torch.no_grad():
        assert r.spliced == pytest.approx(float((sae.reconstruct(h) - 2 * h).pow(2).mean()))
    assert r.zero_abl == pytest.approx(float((2 * h).pow(2).mean()))
    assert r.mean_abl == pytest.approx(float((mean - 2 * h).pow(2).mean()))
    assert r.vs_zero == pytest.approx((r.zero_abl - r.spliced) / (r.zero_abl - r.clean))


@pytest.mark.parametrize("arch", ["topk", "relu_l1"])
def test_evaluate_store_equals_tensor_and_closed_form(tmp_path, arch):
    torch.manual_seed(0)
    n, d = 50, 6
    x = torch.randn(n, d) * 2 + 1
    with StoreWriter(tmp_path / "s", model_id="tiny", sites={"a.0": d}, shard_tokens=16) as w:
        for i in range(0, n, 10):
            rows = torch.arange(i, i + 10)
            w.add({"a.0": x[i : i + 10]}, rows, rows // 5, rows % 5, n_sequences=2)
        w.finish()
    store = ActivationStore(tmp_path / "s")
    sae = build_sae(SaeConfig(d_in=d, d_sae=12, k=3, architecture=arch, site="a.0"))
    with torch.no_grad():
        sae.b_enc.fill_(-0.5)  # so some latents may stay dead over 50 tokens
    m_store = evaluate(sae, store, batch_size=7, exclude_sinks=False)
    m_tensor = evaluate(sae, x, batch_size=13)
    with torch.no_grad():
        z = sae.encode_dense(x).double()
        xh = sae.reconstruct(x).double()
    X = x.double()
    ref_fvu = float((X - xh).pow(2).sum() / (X - X.mean(0)).pow(2).sum())
    for m in (m_store, m_tensor):
        assert m.n_tokens == n
        # float32 SAE outputs, float64 sums: FVU agrees to float32 round-off
        assert m.fvu == pytest.approx(ref_fvu, rel=1e-5)
        assert m.l0 == pytest.approx(float((z > 0).sum(1).double().mean()))
        assert torch.equal(m.density, ((z > 0).sum(0).double() / n).float())
        assert m.dead_frac == pytest.approx(float(((z > 0).sum(0) == 0).double().mean()))
    assert evaluate(sae, x, n_tokens=20).n_tokens == 20
    # by default the store's sink rows (the first of each 5-row sequence) are left out
    keep = ~store.sink_mask()
    m = evaluate(sae, store, batch_size=7)
    assert m.sink_rows == int((~keep).sum()) >= 10 and m.n_tokens == int(keep.sum())
    # the same rows in other batch shapes: float32 SAE outputs differ by BLAS round-off only
    assert m.fvu == pytest.approx(evaluate(sae, x[keep]).fvu, rel=1e-5)
    assert torch.equal(m.density, evaluate(sae, x[keep]).density)
    with pytest.raises(KeyError, match="no site"):
        evaluate(sae, store, site="b.1")
