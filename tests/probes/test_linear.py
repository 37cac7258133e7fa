"""Tests for steerlab.probes.linear: ridge against its float64 closed form and sklearn, logistic
against sklearn's LogisticRegression (same objective), CV and held-out scores against manual
refits, Hewitt & Liang control tasks, and bad input. Small synthetic data only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from steerlab.probes.linear import (
    LinearProbe,
    ProbeConfig,
    control_labels,
    fit_logistic,
    fit_probe,
    fit_ridge,
    selectivity,
)
from steerlab.probes.pls import split_ids


def _cls(n=300, d=12, k=2, seed=0):
    X, y = make_classification(n, d, n_informative=4, n_classes=k, random_state=seed)
    X = X * np.linspace(0.1, 10, d) + 3.0  # uneven scales: the standardiser matters
    return torch.tensor(X), torch.tensor(y)


def test_ridge_matches_float64_closed_form_and_sklearn():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 10, generator=g, dtype=torch.float64) * torch.arange(1, 11) + 2
    y = X @ torch.randn(10, generator=g, dtype=torch.float64) + torch.randn(
        80, generator=g, dtype=torch.float64
    )
    alpha = 3.5
    p = fit_ridge(X, y, alpha)
    # closed form on standardised X (population σ), intercept unpenalised
    mu, sd = X.mean(0), X.std(0, correction=0)
    Xs = (X - mu) / sd
    w = torch.linalg.solve(Xs.T @ Xs + alpha * torch.eye(10, dtype=torch.float64),
                           Xs.T @ (y - y.mean()))  # fmt: skip
    # eigh-based and solve-based inverses of a well-conditioned 10x10: round-off ~1e-13
    torch.testing.assert_close(p.weight[0], w / sd, atol=1e-11, rtol=0)
    torch.testing.assert_close(p(X)[:, 0], y.mean() + Xs @ w, atol=1e-10, rtol=0)
    sk = Ridge(alpha=alpha).fit(StandardScaler().fit_transform(X.numpy()), y.numpy())
    np.testing.assert_allclose(p.weight[0].numpy() * sd.numpy(), sk.coef_, atol=1e-10)
    # unstandardised: plain centred ridge
    q = fit_ridge(X, y, alpha, standardize=False)
    sk2 = Ridge(alpha=alpha).fit(X.numpy(), y.numpy())
    np.testing.assert_allclose(q.weight[0].numpy(), sk2.coef_, atol=1e-10)


@pytest.mark.parametrize("k", [2, 3])
def test_logistic_matches_sklearn(k):
    X, y = _cls(k=k)
    C = 0.3
    p = fit_logistic(X, y, C, max_iter=2000, tol=1e-11)
    sc = StandardScaler().fit(X.numpy())
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(sc.transform(X.numpy()), y)
    W = p.weight.numpy() * sc.scale_  # back to standardised units
    # both solve the same strictly convex problem; L-BFGS stops at |grad| <= 1e-11 of the mean
    # loss, so the coefficients agree to ~1e-6 relative
    np.testing.assert_allclose(W, sk.coef_, atol=1e-6 * np.abs(sk.coef_).max())
    assert (p.predict(X).numpy() == sk.predict(sc.transform(X.numpy()))).all()
    logits = p(X).numpy()
    np.testing.assert_allclose(logits, sk.decision_function(sc.transform(X.numpy())).reshape(
        logits.shape), atol=1e-5)  # fmt: skip


def test_cv_choice_equals_manual_refits():
    X, y = _cls(n=200)
    cfg = ProbeConfig(C_grid=(0.01, 1.0), n_folds=3, max_iter=1000, tol=1e-10)
    res = fit_probe(X, y, cfg)
    split = split_ids(torch.arange(200), n_folds=3, test_fraction=cfg.test_fraction)
    tr = split != 3
    manual = []
    for C in cfg.C_grid:
        accs = []
        for f in range(3):
            fit, val = tr & (split != f), split == f
            accs.append(
                fit_logistic(X[fit], y[fit], C, max_iter=1000, tol=1e-10).score(X[val], y[val])
            )
        manual.append(np.mean(accs))
    np.testing.assert_allclose(res.cv_scores, manual, atol=1e-12)
    assert res.strength == cfg.C_grid[int(np.argmax(manual))]
    ref = fit_logistic(X[tr], y[tr], res.strength, max_iter=1000, tol=1e-10)
    assert res.test_score == pytest.approx(ref.score(X[~tr], y[~tr]))
    assert res.n_train + res.n_test == 200


def test_ridge_cv_and_r2():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 8, generator=g, dtype=torch.float64)
    y = X[:, 0] * 3 + 0.1 * torch.randn(300, generator=g, dtype=torch.float64)
    res = fit_probe(X, y, ProbeConfig(kind="ridge"))
    assert res.strength == 0.1  # nearly noiseless: the weakest penalty wins
    assert res.test_score > 0.99
    d = res.probe.direction
    assert abs(float(d[0])) > 0.99
    assert res.probe.subspace().k == 1


def test_control_labels_one_per_type_and_empirical_distribution():
    types = torch.arange(4000) % 500
    labels = torch.cat([torch.zeros(3000), torch.ones(1000)]).long()
    c = control_labels(types, labels, seed=3)
    for t in range(0, 500, 37):
        assert c[types == t].unique().numel() == 1
    # 500 types drawn with p(1) = 0.25: the share of types labelled 1 is within 4 sd
    share = float(c[:500].double().mean())
    assert abs(share - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 500)
    assert torch.equal(c, control_labels(types, labels, seed=3))


def test_selectivity_separates_representation_from_memorisation():
    g = torch.Generator().manual_seed(0)
    n, n_types = 3000, 150
    types = torch.randint(0, n_types, (n,), generator=g)
    # the label is a linear function of x (context), independent of the type, and x carries no
    # type identity: the task is learnable, the control task is not
    X = torch.randn(n, 10, generator=g, dtype=torch.float64)
    labels = (X[:, 0] > 0).long()
    s = selectivity(X, labels, types, ProbeConfig(C_grid=(1.0,), n_folds=0))
    assert s.task.test_score > 0.95
    assert s.control.test_score < s.majority + 0.1
    assert s.selectivity > 0.3
    # now x is a one-hot of the type: the control task is memorised as well as the task
    E = torch.eye(n_types, dtype=torch.float64)[types]
    lab2 = (types % 2).long()
    s2 = selectivity(E, lab2, types, ProbeConfig(C_grid=(10.0,), n_folds=0))
    assert s2.task.test_score > 0.95 and s2.control.test_score > 0.95
    assert abs(s2.selectivity) < 0.05


def test_save_load(tmp_path):
    X, y = _cls(n=100)
    p = fit_logistic(X, y)
    p.save(tmp_path / "p")
    back = LinearProbe.load(tmp_path / "p")
    torch.testing.assert_close(back(X), p(X), atol=0, rtol=0)
    assert back.meta == p.meta


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 1000), st.floats(0.1, 50.0))
def test_logistic_invariant_to_feature_rescaling(seed, a):
    """With the standardiser, positive per-feature rescaling does not change the logits."""
    X, y = _cls(n=80, d=8, seed=seed)
    s = a * torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    p1 = fit_logistic(X, y, 1.0, tol=1e-10, max_iter=1000)
    p2 = fit_logistic(X * s, y, 1.0, tol=1e-10, max_iter=1000)
    torch.testing.assert_close(p2(X * s), p1(X), atol=1e-5, rtol=1e-5)


def test_bad_input():
    X, y = _cls(n=60)
    with pytest.raises(ValueError, match="single class"):
        fit_logistic(X, torch.zeros(60, dtype=torch.long))
    with pytest.raises(ValueError, match="single class"):
        fit_probe(X, torch.zeros(60, dtype=torch.long))
    with pytest.raises(ValueError, match="constant"):
        fit_ridge(X, torch.ones(60, dtype=torch.float64))
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_probe(bad, y)
    with pytest.raises(ValueError, match="labels"):
        fit_logistic(X, y[:10])
    with pytest.raises(ValueError, match="kind"):
        ProbeConfig(kind="svm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logistic"):
        selectivity(X, y, y, ProbeConfig(kind="ridge"))
    with pytest.raises(ValueError, match="types has"):
        control_labels(torch.arange(5), y)
