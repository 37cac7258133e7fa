"""Initialisation: streamed statistics, effective rank, tied and active-subspace inits.

References: ``torch.cov`` in float64, :meth:`Subspace.from_pca` (an independent PCA on the raw
rows), and closed-form eigenvalue ratios.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.capture.store import ActivationStore, StoreWriter
from steerlab.saes.evals import evaluate
from steerlab.saes.init import (
    ActivationStats,
    StatsFitter,
    activation_stats,
    effective_rank,
    fit_encoder_scale_,
    init_active_subspace_,
    init_random_,
    init_tied_,
    initialize_,
)
from steerlab.saes.sae import SaeConfig, build_sae
from steerlab.saes.train import TrainConfig, train
from steerlab.subspace import Subspace


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster for tiny matrices
    yield
    torch.set_num_threads(n)


def low_rank(n: int, d: int, r: int, seed: int, offset: float = 5.0) -> torch.Tensor:
    """Rows in an ``r``-dim affine subspace of ``R^d`` (plus 1e-4 isotropic noise)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    z = torch.randn(n, r, generator=g, dtype=torch.float64) * torch.linspace(3, 1, r).double()
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    noise = 1e-4 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return (z @ U.T + offset * mu / mu.norm() + noise).float()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 79), max_size=5))
def test_stats_fitter_equals_torch_cov(seed, cuts):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 6, generator=g, dtype=torch.float64) * 4 + 100  # far from the origin
    fitter = StatsFitter(6, keep=10)
    bounds = [0, *sorted(set(cuts)), 80]
    for a, b in zip(bounds, bounds[1:]):
        fitter.update(x[a:b])
    s = fitter.finalize()
    assert s.n == 80
    # pairwise updates in float64: agreement to ~1e-12 relative on data of scale 100
    torch.testing.assert_close(s.mean, x.mean(0), atol=1e-10, rtol=0)
    torch.testing.assert_close(s.cov, torch.cov(x.T), atol=1e-9, rtol=0)
    assert torch.equal(s.sample, x[:10].float())


def test_stats_reject_nonfinite():
    with pytest.raises(ValueError, match="NaN or inf"):
        StatsFitter(2).update(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="at least 2"):
        StatsFitter(2).update(torch.zeros(1, 2)).finalize()
    x = torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [2.0, 3.0], [4.0, 5.0]])
    f = StatsFitter(2, skip_nonfinite=True).update(x)
    assert (f.n, f.n_skipped) == (3, 1)
    torch.testing.assert_close(f.finalize().mean, torch.tensor([2.0, 3.0]).double())


def test_effective_rank_closed_form():
    # eigenvalues 4, 3, 2, 1 (sum 10): cumulative ratios 0.4, 0.7, 0.9, 1.0
    stats = ActivationStats(torch.zeros(4, dtype=torch.float64),
                            torch.diag(torch.tensor([1.0, 4.0, 2.0, 3.0])).double(), 100)  # fmt: skip
    assert [stats.effective_rank(v) for v in (0.3, 0.4, 0.5, 0.7, 0.89, 0.9, 0.95, 1.0)] == [
        1, 1, 2, 2, 3, 3, 4, 4,
    ]  # fmt: skip
    x = low_rank(500, 16, 5, seed=0)
    assert effective_rank(x, var=0.99) == 5
    # agrees with the independent PCA of Subspace.from_pca on the raw rows
    for var in (0.5, 0.9, 0.99):
        assert effective_rank(x, var) == Subspace.from_pca(x, var=var).k


def test_stats_from_store_match_the_tensor(tmp_path):
    x = low_rank(300, 8, 3, seed=1)
    with StoreWriter(tmp_path / "s", model_id="m", sites={"attn_out.2": 8}, shard_tokens=64) as w:
        for i in range(0, 300, 50):
            rows = torch.arange(i, i + 50)
            w.add({"attn_out.2": x[rows]}, rows, rows // 50, rows % 50, 1)
        w.finish()
    store = ActivationStore(tmp_path / "s")
    s = activation_stats(store, "attn_out.2", n_tokens=None, batch_size=64, exclude_sinks=False)
    X = x.double()
    assert s.n == 300
    # float32 rows, float64 sums: exact up to float64 round-off
    torch.testing.assert_close(s.mean, X.mean(0), atol=1e-10, rtol=0)
    torch.testing.assert_close(s.cov, torch.cov(X.T), atol=1e-10, rtol=0)
    assert activation_stats(store, "attn_out.2", n_tokens=100, batch_size=64).n == 100
    # by default the sink rows (here the first of each 50-row sequence) are left out
    keep = ~store.sink_mask()
    assert int((~keep).sum()) == 6
    s = activation_stats(store, "attn_out.2", n_tokens=None, batch_size=64)
    assert s.n == 294
    torch.testing.assert_close(s.mean, X[keep].mean(0), atol=1e-10, rtol=0)
    torch.testing.assert_close(s.cov, torch.cov(X[keep].T), atol=1e-10, rtol=0)
    with pytest.raises(KeyError, match="no site"):
        activation_stats(store, "resid_post.2")


def make_sae(d_in=16, d_sae=64, k=4, **kw):
    return build_sae(SaeConfig(d_in=d_in, d_sae=d_sae, k=k, **kw))


def test_tied_init():
    x = low_rank(400, 16, 16, seed=2)
    stats = activation_stats(x)
    sae = make_sae()
    rep = init_tied_(sae, stats, generator=torch.Generator().manual_seed(0))
    c = rep.encoder_scale
    assert c > 0
    torch.testing.assert_close(sae.W_enc, c * sae.W_dec.T)  # tied up to the fitted scale
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(sae.b_dec, x.double().mean(0).float())
    assert (sae.b_enc == 0).all()
    assert rep.effective_rank == stats.effective_rank(0.99) and rep.gamma == pytest.approx(
        stats.gamma
    )


def test_encoder_scale_is_least_squares_optimal():
    x = low_rank(400, 16, 6, seed=3)
    stats = activation_stats(x)
    sae = make_sae(init="tied")
    init_tied_(
        sae,
        ActivationStats(stats.mean, stats.cov, stats.n),
        generator=torch.Generator().manual_seed(0),
    )
    W0 = sae.W_enc.detach().clone()

    def mse(c):
        with torch.no_grad():
            sae.W_enc.copy_(c * W0)
            return float((sae.reconstruct(x) - x).double().pow(2).sum())

    with torch.no_grad():
        c = fit_encoder_scale_(sae, x)
    best = mse(c)
    # the closed-form c beats nearby scales: the MSE is a parabola in c with its minimum at c
    assert best <= mse(c * 1.05) and best <= mse(c * 0.95)
    with torch.no_grad():
        sae.b_enc.fill_(1.0)
    with pytest.raises(ValueError, match="b_enc = 0"):
        fit_encoder_scale_(sae, x)


def test_random_init():
    sae = make_sae()
    rep = init_random_(sae, generator=torch.Generator().manual_seed(0))
    assert rep.method == "random" and (sae.b_dec == 0).all()
    assert not torch.allclose(sae.W_enc, sae.W_dec.T)  # untied


@pytest.mark.parametrize(("var", "d", "want"), [(0.99, None, 5), (0.5, None, None), (None, 3, 3)])
def test_active_subspace_rows_inside_pca_span(var, d, want):
    x = low_rank(600, 16, 5, seed=4)
    stats = activation_stats(x)
    sae = make_sae(init="active_subspace")
    rep = init_active_subspace_(
        sae, stats, var=var, d=d, generator=torch.Generator().manual_seed(1)
    )
    ref = Subspace.from_pca(x, var=var or 0.99, k=d)  # independent PCA of the rows
    want = want or ref.k
    assert rep.d_active == want == ref.k
    # float32 rows carry ~1e-7 components outside the span: rank tolerance 1e-4
    rows = Subspace.from_vectors(sae.W_dec.detach().double(), rtol=1e-4)
    assert rows.k == want  # the 64 rows span exactly a d-dim subspace...
    angles = rows.principal_angles(ref)
    # ... the PCA one: float32 rows and a float32 PCA basis, so angles are ~1e-3 at most
    assert angles.max() < 1e-3
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(sae.W_enc, rep.encoder_scale * sae.W_dec.T)
    torch.testing.assert_close(sae.b_dec, x.double().mean(0).float())
    assert rep.explained_variance == pytest.approx(
        sum(ref.meta["explained_variance_ratio"]), abs=1e-6
    )


def test_initialize_dispatch():
    x = low_rank(200, 16, 4, seed=5)
    stats = activation_stats(x)
    for method in ("random", "tied", "active_subspace"):
        sae = make_sae(init=method)
        assert initialize_(sae, stats).method == method
    with pytest.raises(ValueError, match="needs activation statistics"):
        initialize_(make_sae(init="active_subspace"))
    with pytest.raises(ValueError, match="unknown init"):
        initialize_(make_sae(), stats, method="kaiming")


def sparse_low_rank(n, d, r, n_atoms, s, seed, offset=3.0):
    """Sparse codes over ``n_atoms`` unit atoms that all lie in an ``r``-dim subspace."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0].float()
    A = torch.randn(n_atoms, r, generator=g)
    D = (A / A.norm(dim=1, keepdim=True)) @ U.T
    idx = torch.rand(n, n_atoms, generator=g).topk(s, dim=1).indices
    codes = torch.zeros(n, n_atoms).scatter_(1, idx, torch.rand(n, s, generator=g) + 0.5)
    mu = torch.randn(d, generator=g)
    return codes @ D + offset * mu / mu.norm()


def test_active_subspace_init_has_fewer_dead_latents():
    # "attention-like" data: 64 atoms in an 8-dim subspace of R^64, with a mean offset. After
    # equal steps, ASI leaves far fewer latents dead than random or tied init (Wang et al.).
    x = sparse_low_rank(8192, 64, 8, 64, 3, seed=0)
    configs = [
        SaeConfig(d_in=64, d_sae=128, k=4, init=i) for i in ("random", "tied", "active_subspace")
    ]
    # Gao et al.'s lr (2.3e-3 at width 128), constant after the warm-up: the setting these
    # measurements were made at (the default, scaled down from width 4608, would be 0.057 here)
    tc = TrainConfig(batch_size=256, max_tokens=256 * 40, warmup_steps=5, dead_tokens=2048,
                     auxk_alpha=0.0, base_lr=2e-4, decay_frac=0.0)  # fmt: skip
    res = train(x, configs, tc)
    dead = {c.init: evaluate(res.saes[c.name], x).dead_frac for c in configs}
    fvu = {c.init: evaluate(res.saes[c.name], x).fvu for c in configs}
    assert res.init_reports[configs[2].name]["d_active"] == 8
    # Measured: dead 0.85 / 0.40 / 0.08 and FVU 1.08 / 0.33 / 0.10 (random / tied / ASI).
    assert dead["active_subspace"] < 0.2
    assert (
        dead["active_subspace"] < dead["tied"] / 2 and dead["active_subspace"] < dead["random"] / 2
    )
    assert fvu["active_subspace"] < fvu["tied"] < fvu["random"]
