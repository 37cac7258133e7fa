"""Tests for steerlab.erasure.inlp: the accuracy-vs-rank curve, the projection's algebra, the
stopping rule, and bad input. Synthetic float64 data; identities hold to ~1e-13."""

from __future__ import annotations

import pytest
import torch

import steerlab.artifacts
from steerlab.erasure.inlp import InlpConfig, InlpEraser, inlp
from steerlab.erasure.leace import erasure_report

ATOL = 1e-10  # float64 projector identities for d <= 20


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spread(seed: int, d: int = 20, n: int = 2000):
    """Binary concept spread over many directions under anisotropic noise: each classifier
    removes its Σ⁻¹Δμ direction, and the mean difference left in the complement keeps the
    concept decodable, so the accuracy falls over several iterations."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    noise = torch.randn(n, d, generator=g, dtype=torch.float64)
    X = noise * torch.linspace(0.3, 3, d, dtype=torch.float64) + (2 * y[:, None] - 1) * 0.5
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    return X @ Q + 3.0, y


def _check_projection(eraser: InlpEraser, d: int, r: int) -> None:
    P, Q = eraser.P, eraser.Q
    assert torch.allclose(P, P.T, atol=ATOL, rtol=0)
    assert torch.allclose(P @ P, P, atol=ATOL, rtol=0)
    assert torch.allclose(Q @ Q, Q, atol=ATOL, rtol=0)
    assert eraser.edit_rank == r
    assert int(torch.linalg.matrix_rank(Q)) == d - r  # the paper's nullspace projection
    U = eraser.proj_left
    assert torch.allclose(U.T @ U, torch.eye(r, dtype=U.dtype), atol=ATOL, rtol=0)


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_accuracy_falls_with_rank(classifier):
    X, y = _spread(0)
    n_iter = 6
    eraser = inlp(X, y, InlpConfig(n_iter=n_iter, classifier=classifier, epsilon=0.0))
    acc = eraser.accuracies
    ranks = [h["rank"] for h in eraser.meta["history"]]
    assert ranks == list(range(n_iter + 1))  # one direction per binary classifier
    _check_projection(eraser, 20, n_iter)
    assert acc[0] > 0.95 and acc[-1] < acc[0] - 0.2
    # decreasing, up to the noise of a 400-sample dev accuracy (sd ~ 0.025)
    assert all(b <= a + 0.03 for a, b in zip(acc, acc[1:]))


def test_stops_at_majority():
    # one planted direction in isotropic noise: after removing it nothing is left
    g = torch.Generator().manual_seed(1)
    X = torch.randn(1500, 10, generator=g, dtype=torch.float64)
    w = torch.randn(10, generator=g, dtype=torch.float64)
    y = (X @ w > 0).long()
    eraser = inlp(X, y, InlpConfig(n_iter=8, epsilon=0.05))
    assert eraser.rank < 8  # stopped early
    assert eraser.accuracies[-1] <= eraser.meta["majority"] + 0.05
    rep = erasure_report(eraser, X[:1000], y[:1000], X[1000:], y[1000:])
    assert abs(rep.accuracy - rep.majority) <= 0.05


def test_multiclass_adds_c_minus_1_directions():
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (1500,), generator=g)
    means = torch.randn(3, 12, generator=g, dtype=torch.float64) * 2
    X = torch.randn(1500, 12, generator=g, dtype=torch.float64) + means[y]
    eraser = inlp(X, y, InlpConfig(n_iter=2, epsilon=0.0))
    # multinomial logistic: softmax ignores a shared row, so each classifier spans C − 1 = 2
    assert [h["rank"] for h in eraser.meta["history"]][:2] == [0, 2]
    _check_projection(eraser, 12, eraser.rank)
    assert eraser.accuracies[0] > 0.9 and eraser.accuracies[1] < eraser.accuracies[0]
    svm = inlp(X, y, InlpConfig(n_iter=1, classifier="svm", epsilon=0.0))
    assert svm.rank == 3  # one-vs-rest: C rows


def test_linear_and_affine_maps(tmp_path):
    X, y = _spread(3, d=8, n=600)
    lin = inlp(X, y, InlpConfig(n_iter=2, affine=False, epsilon=0.0))
    torch.testing.assert_close(lin(X), X - X @ lin.P)  # the paper's x P_N
    aff = inlp(X[:400], y[:400], InlpConfig(n_iter=2, epsilon=0.0), x_dev=X[400:], z_dev=y[400:])
    torch.testing.assert_close(aff(X[:400]).mean(0), X[:400].mean(0))  # the training mean stays
    assert torch.allclose(aff.subspace.erase(X), aff(X), atol=ATOL, rtol=0)
    aff.save(tmp_path / "i")
    loaded = steerlab.artifacts.load(tmp_path / "i")
    assert type(loaded) is InlpEraser and loaded.accuracies == aff.accuracies
    assert torch.equal(loaded(X), aff(X))


def test_strong_regularisation_finds_the_mean_difference():
    # as C -> 0 the L2 penalty dominates and the logistic weights tend to the loss gradient at
    # w = 0, Σ (y_i − ȳ) x_i = n p (1 − p) (μ₁ − μ₀) for centred x: the class-mean difference
    X, y = _spread(5)
    eraser = inlp(X, y, InlpConfig(n_iter=3, C=1e-6, epsilon=None))
    Xc = X - X.mean(0)
    diff = Xc[y == 1].mean(0) - Xc[y == 0].mean(0)
    u = eraser.proj_left[:, 0]
    cos = float(u @ diff / diff.norm())
    # first-order in C: the deviation from the limit is O(C · ‖X‖²) ~ 1e-6 · 2000 · 10 here
    assert abs(cos) > 0.999
    # epsilon=None runs every iteration, even though a classifier this weak predicts one class
    assert [h["rank"] for h in eraser.meta["history"]] == [0, 1, 2, 3]
    assert all("converged" in h for h in eraser.meta["history"])


@pytest.mark.parametrize(
    "kw,match",
    [({"n_iter": 0}, "n_iter"), ({"classifier": "mlp"}, "classifier"), ({"C": 0.0}, "C")],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        InlpConfig(**kw)


def test_bad_input():
    X, y = _spread(4, d=6, n=100)
    with pytest.raises(ValueError, match="single class"):
        inlp(X, torch.ones(100, dtype=torch.long))
    with pytest.raises(ValueError, match="more classes than samples"):
        inlp(X[:4], torch.tensor([0, 9, 1, 2]))
    with pytest.raises(ValueError, match="width mismatch"):
        inlp(X, y, x_dev=X[:, :4], z_dev=y)
    bad = X.clone()
    bad[5, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        inlp(bad, y)
    with pytest.raises(ValueError, match="labels but x has"):
        inlp(X, y[:10])
