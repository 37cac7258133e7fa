"""Tests for steerlab.probes.pls: the moment-based NIPALS against scikit-learn's
``StandardScaler → PLSRegression(scale=False)`` fitted directly, exact cross-validation against
sklearn refits, streaming == batch == store, the raw-space scaling convention, and bad input.

All data are float64 and small (n ≤ 400, d ≤ 40). Both implementations run the same float64
NIPALS recursion, so they agree to round-off ~ d·eps·cond; tolerances are stated per test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cross_decomposition import PLSRegression
from sklearn.preprocessing import StandardScaler

from steerlab.probes.pls import PLSConfig, PLSFitter, PLSProbe, fit_pls, fit_pls_store, split_ids

# same float64 recursion in both libraries: observed differences are <= 2e-14
ATOL = 1e-10


def _data(n=300, d=40, seed=0, noise=0.3, constant_feature=False):
    g = torch.Generator().manual_seed(seed)
    scales = torch.rand(d, generator=g, dtype=torch.float64) * 5 + 0.1
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * scales + torch.randn(
        d, generator=g, dtype=torch.float64
    )
    if constant_feature:
        X[:, 3] = 7.0
    beta = torch.randn(6, generator=g, dtype=torch.float64)
    y = X[:, :6] @ beta + noise * torch.randn(n, generator=g, dtype=torch.float64) + 1900
    return X, y


def _train_mask(n, cfg):
    split = split_ids(torch.arange(n), n_folds=cfg.n_folds, test_fraction=cfg.test_fraction,
                      seed=cfg.seed)  # fmt: skip
    return split, split != cfg.n_folds


def _sklearn(X, y, k):
    sc = StandardScaler().fit(X)
    return sc, PLSRegression(k, scale=False).fit(sc.transform(X), y)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("constant_feature", [False, True])
def test_matches_sklearn_pipeline(k, constant_feature):
    X, y = _data(constant_feature=constant_feature)
    cfg = PLSConfig(n_components=k, test_fraction=0.2)
    probe = PLSFitter.fit(X, y, cfg).probe()
    _, tr = _train_mask(len(X), cfg)
    sc, m = _sklearn(X[tr].numpy(), y[tr].numpy(), k)
    np.testing.assert_allclose(probe.mean.numpy(), sc.mean_, atol=ATOL)
    np.testing.assert_allclose(probe.scale.numpy(), sc.scale_, rtol=1e-12)
    np.testing.assert_allclose(probe.x_weights.numpy(), m.x_weights_, atol=ATOL)
    np.testing.assert_allclose(probe.x_loadings.numpy(), m.x_loadings_, atol=ATOL)
    np.testing.assert_allclose(probe.y_loadings.numpy(), m.y_loadings_.ravel(), atol=ATOL)
    np.testing.assert_allclose(probe.x_rotations.numpy(), m.x_rotations_, atol=ATOL)
    Xs = sc.transform(X.numpy())
    # predictions are O(1900): relative tolerance
    np.testing.assert_allclose(probe(X).numpy(), m.predict(Xs).ravel(), rtol=1e-12)
    np.testing.assert_allclose(probe.transform(X).numpy(), m.transform(Xs), atol=1e-9)
    # sklearn >= 1.5 coef_ is (n_targets, n_features) in standardised units: raw = coef/σ
    np.testing.assert_allclose(probe.coef.numpy(), m.coef_.ravel() / sc.scale_, atol=ATOL)


def test_cross_validation_equals_sklearn_refits():
    X, y = _data(n=200, d=25)
    cfg = PLSConfig(max_components=6, test_fraction=0.15, n_folds=4)
    cv = PLSFitter.fit(X, y, cfg).cv_r2()
    split, tr = _train_mask(len(X), cfg)
    sse, sst = np.zeros(6), 0.0
    for f in range(cfg.n_folds):
        fit, val = (split != f) & tr, split == f
        yv = y[val].numpy()
        sst += ((yv - yv.mean()) ** 2).sum()
        for k in range(1, 7):
            sc, m = _sklearn(X[fit].numpy(), y[fit].numpy(), k)
            sse[k - 1] += ((m.predict(sc.transform(X[val].numpy())).ravel() - yv) ** 2).sum()
    # sums of squares of O(1900)-sized values from moments: ~1e-9 relative
    np.testing.assert_allclose(cv, 1 - sse / sst, atol=1e-8)


def test_cv_choice_and_held_out_scores():
    X, y = _data()
    res = fit_pls(X, y, PLSConfig(max_components=8, test_fraction=0.2, cv_tol=0.0))
    assert res.n_components == int(np.argmax(res.cv_r2)) + 1
    _, tr = _train_mask(len(X), PLSConfig(test_fraction=0.2))
    te = ~tr
    pred = res.probe(X[te])
    err = (pred - y[te]).numpy()
    yt = y[te].numpy()
    assert res.test.n == int(te.sum())
    assert res.test.mae == pytest.approx(np.abs(err).mean(), rel=1e-10)
    assert res.test.r2 == pytest.approx(1 - (err**2).sum() / ((yt - yt.mean()) ** 2).sum(),
                                        abs=1e-8)  # fmt: skip
    assert res.test.r2 > 0.99  # y is linear in x with small noise
    # parsimony: a tolerance never picks more components than the best
    loose = fit_pls(X, y, PLSConfig(max_components=8, test_fraction=0.2, cv_tol=0.05))
    assert loose.n_components <= res.n_components


def test_streaming_equals_batch_and_groups_stay_together():
    X, y = _data(n=250)
    cfg = PLSConfig(n_components=4)
    one = PLSFitter.fit(X, y, cfg).probe()
    f = PLSFitter(X.shape[1], cfg)
    for chunk in torch.tensor_split(torch.arange(len(X)), [7, 8, 100, 181]):
        f.update(X[chunk], y[chunk])
    two = f.probe()
    # Chan's batched update is exact up to round-off of O(1900)-sized sums
    torch.testing.assert_close(two.x_weights, one.x_weights, atol=1e-10, rtol=0)
    torch.testing.assert_close(two(X), one(X), atol=1e-9, rtol=0)
    groups = torch.arange(len(X)) // 5
    split = split_ids(groups, n_folds=5, test_fraction=0.1)
    for g in groups.unique():
        assert split[groups == g].unique().numel() == 1


def test_store_fit_equals_memory_fit(tmp_path):
    from steerlab.capture.store import ActivationStore, StoreWriter

    X, y = _data(n=300, d=16)
    w = StoreWriter(tmp_path / "s", model_id="m", sites={"resid_post.0": 16}, shard_tokens=64)
    with w:
        for rows in torch.arange(300).split(50):
            w.add({"resid_post.0": X[rows].float()}, rows, rows, rows * 0, n_sequences=len(rows))
        w.finish()
    store = ActivationStore(tmp_path / "s")
    cfg = PLSConfig(max_components=5)
    a = fit_pls_store(store, "resid_post.0", y, cfg, batch_size=37)
    b = fit_pls(store.site("resid_post.0").to_tensor(torch.float64), y, cfg)
    assert a.n_components == b.n_components
    torch.testing.assert_close(a.probe.x_weights, b.probe.x_weights, atol=1e-10, rtol=0)
    assert a.test.mae == pytest.approx(b.test.mae, rel=1e-9)
    assert a.test.r2 == pytest.approx(b.test.r2, abs=1e-9)


def test_scaling_convention_gradient_is_w_over_sigma():
    X, y = _data(n=200, d=12)
    probe = PLSFitter.fit(X, y, PLSConfig(n_components=3)).probe()
    x = X[:5].clone().requires_grad_(True)
    probe.transform(x)[:, 0].sum().backward()
    grad = x.grad[0]
    # first score: r_1 = w_1, so its raw-space gradient is w_1/σ
    torch.testing.assert_close(grad, probe.x_weights[:, 0] / probe.scale, atol=1e-12, rtol=0)
    d = probe.direction
    torch.testing.assert_close(d, grad / grad.norm(), atol=1e-12, rtol=0)
    wrong = probe.x_weights[:, 0] * probe.scale  # the reference code's steering vector
    assert torch.dot(wrong / wrong.norm(), d).abs() < 0.9  # σ varies 50-fold here
    # prediction gradient is coef = R q / σ and lies in the subspace
    sub = probe.subspace()
    assert sub.k == 3
    coef = probe.coef
    torch.testing.assert_close(sub.component(coef + sub.origin), coef, atol=1e-10, rtol=0)
    # moving orthogonally to the subspace changes no score
    v = torch.randn(12, dtype=torch.float64)
    v = v - sub.basis @ (sub.basis.T @ v)
    torch.testing.assert_close(probe.transform(X + v), probe.transform(X), atol=1e-9, rtol=0)


def test_coords_for_value_is_least_squares_slope():
    X, y = _data(n=200, d=12)
    cfg = PLSConfig(n_components=2)
    probe = PLSFitter.fit(X, y, cfg).probe()
    _, tr = _train_mask(len(X), cfg)
    coords = probe.subspace().project(X[tr]).numpy()
    yt = y[tr].numpy()
    slope = np.array([np.polyfit(yt, coords[:, j], 1)[0] for j in range(2)])
    np.testing.assert_allclose(probe.coord_slope.numpy(), slope, rtol=1e-9)
    c = probe.coords_for_value(torch.tensor([1950.0, 1800.0], dtype=torch.float64))
    assert c.shape == (2, 2)
    torch.testing.assert_close(probe.coords_for_value(float(probe.y_mean)),
                               torch.zeros(2, dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("flip", [False, True])
def test_steering_direction_raises_the_prediction(flip):
    """Whatever the sign of the fitted weights (flip the target), ``u`` raises the prediction,
    and ``unit`` is the numpy standard deviation of the rows' coordinate along ``u``."""
    X, y = _data(n=200, d=12)
    probe = PLSFitter.fit(X, -y if flip else y, PLSConfig(n_components=2)).probe()
    u, unit = probe.steering_direction(X)
    assert float(u.norm()) == pytest.approx(1.0)
    assert abs(float(u @ probe.direction)) == pytest.approx(1.0)
    x0 = X[:5]
    assert bool((probe(x0 + 0.5 * u) > probe(x0)).all())
    coords = ((X - X.mean(0)) @ u).numpy()  # the spread does not depend on the origin
    assert unit == pytest.approx(float(np.std(coords, ddof=1)), rel=1e-9)
    with pytest.raises(ValueError):
        probe.steering_direction(X[:, :5])


def test_covariance_direction_is_the_papers_and_the_raw_covariance():
    """``covariance_direction`` is El-Shangiti et al.'s ``x_weights_[:, 0] * scaler.scale_``
    (up to sign and norm), which is the raw covariance ``Cov(x, y)``; the gradient convention
    ``w/σ`` differs from it when the feature scales differ (they span 0.1–5 here)."""
    X, y = _data(n=300, d=20)
    cfg = PLSConfig(n_components=3, test_fraction=0.2)
    probe = PLSFitter.fit(X, y, cfg).probe()
    _, tr = _train_mask(len(X), cfg)
    sc, m = _sklearn(X[tr].numpy(), y[tr].numpy(), 3)
    v = m.x_weights_[:, 0] * sc.scale_
    v /= np.linalg.norm(v)
    c = probe.covariance_direction.numpy()
    assert abs(float(c @ v)) == pytest.approx(1.0, abs=1e-12)  # same float64 NIPALS weights
    Xt, yt = X[tr], y[tr]
    cov = ((Xt - Xt.mean(0)) * (yt - yt.mean())[:, None]).mean(0).numpy()
    assert abs(float(c @ cov) / np.linalg.norm(cov)) == pytest.approx(1.0, abs=1e-12)
    # the conventions differ: |cos(w·σ, w/σ)| well below 1 with scales spanning 50x
    assert abs(float(c @ probe.direction.numpy())) < 0.95
    u, unit = probe.steering_direction(X, convention="covariance")
    assert abs(float(u @ probe.covariance_direction)) == pytest.approx(1.0, abs=1e-12)
    assert float(u @ probe.coef) > 0  # signed to raise the prediction
    assert unit == pytest.approx(float(np.std(((X - X.mean(0)) @ u).numpy(), ddof=1)), rel=1e-9)
    with pytest.raises(ValueError, match="convention"):
        probe.steering_direction(X, convention="sigma")


def test_save_load_round_trip(tmp_path):
    X, y = _data(n=120, d=10)
    res = fit_pls(X, y, PLSConfig(max_components=4), meta={"site": "resid_post.3"})
    res.probe.save(tmp_path / "p")
    back = PLSProbe.load(tmp_path / "p")
    assert back.meta == res.probe.meta
    torch.testing.assert_close(back(X), res.probe(X), atol=0, rtol=0)
    assert back.subspace().meta["site"] == "resid_post.3"
    assert back.to(dtype=torch.float32)(X.float()).dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 100.0), st.floats(-50.0, 50.0))
def test_predictions_invariant_to_feature_affine_maps(seed, a, b):
    """Standardising first makes the probe invariant to per-feature positive rescaling and
    shifts of x (up to round-off amplified by the rescaling)."""
    X, y = _data(n=60, d=6, seed=seed)
    g = torch.Generator().manual_seed(seed)
    scale = a * (torch.rand(6, generator=g, dtype=torch.float64) + 0.5)
    cfg = PLSConfig(n_components=2)
    p1 = PLSFitter.fit(X, y, cfg).probe()
    p2 = PLSFitter.fit(X * scale + b, y, cfg).probe()
    torch.testing.assert_close(p2(X * scale + b), p1(X), atol=1e-6, rtol=1e-9)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_messages():
    X, y = _data(n=50, d=8)
    with pytest.raises(ValueError, match="constant"):
        fit_pls(X, torch.full((50,), 3.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs at least 6 training samples"):
        PLSFitter.fit(X[:6], y[:6], PLSConfig(n_components=5, test_fraction=0.3)).probe()
    bad = X.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_pls(bad, y)
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_pls(bad, y)
    yb = y.clone()
    yb[0] = float("nan")
    with pytest.raises(ValueError, match="y contains NaN"):
        fit_pls(X, yb)
    with pytest.raises(ValueError, match="one target"):
        PLSFitter.fit(X, torch.stack([y, y], 1))
    with pytest.raises(ValueError, match="n_components"):
        PLSConfig(n_components=0)
    with pytest.raises(ValueError, match="exceeds the number of features"):
        PLSFitter.fit(X, y, PLSConfig(n_components=9)).probe()
    probe = PLSFitter.fit(X, y, PLSConfig(n_components=2)).probe()
    with pytest.raises(ValueError, match="width mismatch"):
        probe(torch.zeros(3, 5, dtype=torch.float64))
