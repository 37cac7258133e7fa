"""Steering vectors: closed forms, sklearn, streaming, one-pass reading, artifacts, bad input,
and separability of the shipped sentiment pairs on the embedded model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.datasets.pairs import LabelledSet, load_pairs, make_pairs
from steerlab.interventions import AddVector, steer
from steerlab.positions import Positions, scored
from steerlab.sites import SiteError
from steerlab.steering.layer_sweep import separability, sweep_layers
from steerlab.steering.vectors import (
    SteeringVector,
    VectorConfig,
    VectorFitter,
    fit_vector,
    read_pairs,
)
from steerlab.subspace import Subspace

DATA = Path(__file__).resolve().parents[2] / "data" / "steering"
SITES = ["resid_post.1", "resid_post.4"]


def _pairs_acts(n=40, L=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(L, d, generator=g, dtype=torch.float64)
    base = torch.randn(n, L, d, generator=g, dtype=torch.float64) * 3
    noise = torch.randn(n, L, d, generator=g, dtype=torch.float64)
    return base + shift + noise, base - shift


# --------------------------------------------------------------------------- the fitter


def test_mean_diff_equals_float64_closed_form():
    pos, neg = _pairs_acts()
    sv = VectorFitter(SITES, 16).update(pos.float(), neg.float()).vector()
    expected = pos.float().double().mean(0) - neg.float().double().mean(0)
    # float64 accumulation of float32 rows: only the final cast to float32 rounds
    torch.testing.assert_close(sv.directions, expected.float(), rtol=0, atol=0)
    assert sv.layers == (1, 4) and sv.site_kind == "resid_post" and sv.method == "mean_diff"
    norms = torch.linalg.vector_norm(torch.cat([pos, neg]).float().double(), dim=-1).mean(0)
    torch.testing.assert_close(sv.norms, norms.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("center", [True, False])
def test_pca_diff_equals_sklearn_first_component(center):
    from sklearn.decomposition import PCA

    pos, neg = _pairs_acts()
    sv = VectorFitter(SITES, 16, "pca_diff", center=center).update(pos, neg).vector()
    diff = (pos - neg).numpy()
    for j in range(2):
        if center:  # repeng: PCA(n_components=1).fit(pos - neg)
            ref = PCA(n_components=1, svd_solver="full").fit(diff[:, j]).components_[0]
        else:  # uncentred: top right-singular vector of the differences
            ref = np.linalg.svd(diff[:, j], full_matrices=False)[2][0]
        v = sv.directions[j].double().numpy()
        # equal up to sign; eigh vs SVD in float64, then a float32 cast (eps 6e-8)
        assert abs(abs(v @ ref) - 1) < 1e-6
        assert np.linalg.norm(v) == pytest.approx(1, abs=1e-6)
        # oriented toward the positive side
        assert v @ diff[:, j].mean(0) > 0


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(1, 39), max_size=5, unique=True),
       method=st.sampled_from(["mean_diff", "pca_diff"]))  # fmt: skip
def test_streaming_equals_one_shot(cuts, method):
    pos, neg = _pairs_acts()
    one = VectorFitter(SITES, 16, method).update(pos, neg).vector()
    fit = VectorFitter(SITES, 16, method)
    bounds = [0, *sorted(cuts), 40]
    for a, b in zip(bounds, bounds[1:]):
        fit.update(pos[a:b], neg[a:b])
    many = fit.vector()
    # Welford / Chan updates are exact in exact arithmetic; float64 round-off is ~1e-15
    torch.testing.assert_close(many.directions, one.directions, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(many.norms, one.norms, rtol=1e-6, atol=0)


def test_labelled_mean_diff():
    x = torch.randn(30, 2, 16, dtype=torch.float64)
    y = torch.tensor([1, 0, 0] * 10)
    sv = VectorFitter(SITES, 16).update_labelled(x, y).vector()
    expected = x[y == 1].mean(0) - x[y == 0].mean(0)
    torch.testing.assert_close(sv.directions, expected.float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pca_diff needs paired differences"):
        VectorFitter(SITES, 16, "pca_diff").update_labelled(x, y)


def test_fitter_bad_input():
    pos, neg = _pairs_acts()
    fit = VectorFitter(SITES, 16)
    with pytest.raises(ValueError, match="unbalanced pairs: 40 positive vs 39"):
        fit.update(pos, neg[:-1])
    with pytest.raises(ValueError, match=r"expected \[n, 2, 16\]"):
        fit.update(pos[..., :8], neg[..., :8])
    bad = pos.clone()
    bad[3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit.update(bad, neg)
    with pytest.raises(ValueError, match="needs both"):
        fit.directions()  # nothing was added: an empty pair set
    with pytest.raises(ValueError, match="at least 2 pairs"):
        VectorFitter(SITES, 16, "pca_diff").update(pos[:1], neg[:1]).directions()
    with pytest.raises(SiteError, match="one site kind"):
        VectorFitter(["resid_post.1", "mlp_out.2"], 16)
    with pytest.raises(ValueError, match="unknown method"):
        VectorConfig(method="lda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot read a steering vector"):
        VectorConfig(positions=scored(torch.eye(16)[:1]))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the artifact


def _vector() -> SteeringVector:
    pos, neg = _pairs_acts()
    return (
        VectorFitter(SITES, 16, "pca_diff")
        .update(pos, neg)
        .vector("generation", "test-model", {"add_bos": False}, "abc123", {"model_type": "llama"})
    )


def test_save_load_round_trip(tmp_path):
    from steerlab.artifacts import load, read_cfg

    sv = _vector()
    sv.save(tmp_path / "v")
    assert read_cfg(tmp_path / "v")["kind"] == "steering_vector"
    for back in (SteeringVector.load(tmp_path / "v"), load(tmp_path / "v")):
        assert torch.equal(back.directions, sv.directions) and torch.equal(back.norms, sv.norms)
        assert back.to_config() == sv.to_config()
        assert back.positions == sv.positions


def test_intervention_strength_and_errors():
    sv = _vector()
    iv = sv.intervention("resid_post.4", 0.5, positions="generation")
    assert isinstance(iv, AddVector) and iv.site == "resid_post.4"
    unit = sv.direction(4)
    torch.testing.assert_close(iv.effective(), 0.5 * float(sv.norms[1]) * unit)
    raw = sv.intervention(1, 2.0, relative=False, normalize=False)
    torch.testing.assert_close(raw.effective(), 2.0 * sv.directions[0])
    assert [i.site for i in sv.interventions(1.0)] == SITES
    with pytest.raises(SiteError, match="no direction for layer 7"):
        sv.intervention(7, 1.0)
    with pytest.raises(SiteError, match="not mlp_out"):
        sv.intervention("mlp_out.4", 1.0)
    with pytest.raises(ValueError, match="no recorded activation norms"):
        SteeringVector.from_direction(unit, "resid_post.4").intervention(4, 1.0)


def test_artifact_bad_input():
    d = torch.randn(2, 16)
    d[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SteeringVector(d, (1, 4))
    with pytest.raises(ValueError, match="is zero"):
        SteeringVector(torch.zeros(2, 16), (1, 4))
    with pytest.raises(ValueError, match="one per row"):
        SteeringVector(torch.randn(2, 16), (1,))
    with pytest.raises(ValueError, match="positive finite"):
        SteeringVector(torch.randn(2, 16), (1, 4), norms=torch.tensor([1.0, -1.0]))


def test_from_direction_sources():
    v = torch.randn(16)
    a = SteeringVector.from_direction(v, SITES, norms=[2.0, 3.0])
    assert torch.equal(a.directions, torch.stack([v, v])) and a.method == "direction"
    b = SteeringVector.from_direction(Subspace.from_vectors(v), "resid_post.3")
    torch.testing.assert_close(b.direction(3), v / v.norm())

    class Probe:
        def direction(self):
            return v

    assert torch.equal(SteeringVector.from_direction(Probe(), [5]).directions[0], v)
    with pytest.raises(ValueError, match="rank-1"):
        SteeringVector.from_direction(Subspace.from_vectors(torch.randn(2, 16)), "resid_post.3")


def test_width_mismatch_leaves_model_unmodified(tiny_models):
    h = tiny_models["gpt2"]  # d_model 64
    sv = SteeringVector.from_direction(torch.randn(16), "resid_post.1", norms=[1.0])
    ids = torch.tensor([[5, 6, 7, 8]])
    before = h.model(ids).logits
    with pytest.raises(ValueError, match="width"):
        sv.check(h)
    with pytest.raises(ValueError, match="has width 16"), steer(h, sv.intervention(1, 1.0)):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in h.model.modules())
    assert torch.equal(h.model(ids).logits, before)


# --------------------------------------------------------------------------- reading


def _tiny_pairs():
    return make_pairs(
        ["It was wonderful.", "I loved it so much.", "Great fun!", "A delight."],
        ["It was awful.", "I hated it so much.", "Dull stuff!", "A bore."],
        ["How was it?", "Did you like it?", "The party?", "And the show?"],
    )


def test_read_rule_matches_hidden_states(tiny_models):
    """The mean over completion tokens equals HF's hidden_states, read independently."""
    h = tiny_models["gpt2"]
    pairs = _tiny_pairs()
    acts = read_pairs(h, pairs, [0, 1], positions="generation", batch_size=3)
    tok = h.tokenizer
    for i, p in enumerate(pairs):
        prompt = tok(p.prompt, add_special_tokens=False)["input_ids"]
        comp = tok(" " + p.positive, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hs = h.model(torch.tensor([prompt + comp]), output_hidden_states=True).hidden_states
        for j, layer in enumerate([0, 1]):
            # hidden_states[L + 1] is block L's output (the last one is after ln_f: not used)
            ref = hs[layer + 1][0, len(prompt) :].double().mean(0)
            torch.testing.assert_close(acts.pos[i, j], ref, rtol=1e-5, atol=1e-5)


def test_one_pass_equals_separate_captures(tiny_models):
    h = tiny_models["gpt2"]
    pairs = _tiny_pairs()
    together = fit_vector(h, pairs, [0, 1, 2], method="pca_diff", batch_size=2)
    for layer in (0, 1, 2):
        alone = fit_vector(h, pairs, [layer], method="pca_diff", batch_size=2)
        # the same float32 forward per example; only float64 summation order may differ
        torch.testing.assert_close(together.direction(layer), alone.direction(layer),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        torch.testing.assert_close(together.norms[layer], alone.norms[0], rtol=1e-6, atol=0)
    assert together.fingerprint == pairs.fingerprint()
    assert together.tokenizer == h.tokenizer_settings()
    assert together.positions == Positions(part="generation")


def test_fit_options_on_tiny_model(tiny_models):
    h = tiny_models["gpt2"]
    pairs = _tiny_pairs()
    chat = fit_vector(h, pairs, "resid_post.1", chat=True)
    assert chat.meta["chat"] is True
    bare = make_pairs(["so good", "lovely day"], ["so bad", "awful day"])
    sv = fit_vector(h, bare, [1])  # standalone texts: the last token by default
    assert str(sv.positions) == "prompt:last"
    with pytest.raises(ValueError, match=r"selects no token of pair 0 \(positive\)"):
        fit_vector(h, bare, [1], positions="generation")
    labelled = LabelledSet(("so good", "so bad", "fine day"), (1, 0, 1))
    lv = fit_vector(h, labelled, [1])
    assert lv.meta["n_pos"] == 2 and lv.meta["n_neg"] == 1
    with pytest.raises(ValueError, match="pca_diff needs contrast pairs"):
        fit_vector(h, labelled, [1], method="pca_diff")
    with pytest.raises(ValueError, match="cannot read a steering vector"):
        fit_vector(h, pairs, [1], positions=scored(torch.eye(64)[:1]))  # type: ignore[arg-type]
    with pytest.raises(SiteError):
        fit_vector(h, pairs, ["resid_post.9"])  # the tiny model has 3 layers


# --------------------------------------------------------------------------- the real model


def test_sentiment_vector_separates_held_out_texts(model, caplog):
    """Fit on 75% of data/steering/sentiment.jsonl, score the held-out 25% per layer."""
    caplog.set_level(logging.INFO)
    layers = [1, 4, 7, 10, 13]  # capture stops after layer 13 (of 30): keeps the test short
    sweep = sweep_layers(model, DATA / "sentiment.jsonl", layers, holdout=0.25, seed=0,
                         batch_size=32)  # fmt: skip
    report = ", ".join(f"L{s.split('.')[1]}={a:.3f}" for s, a in zip(sweep.sites, sweep.auroc))
    logging.getLogger(__name__).info("held-out AUROC per layer: %s; best %s", report, sweep.best)
    best = sweep.sites.index(sweep.best)
    # 28 held-out pairs; a linear read-out of sentiment is easy for a 135M chat model
    assert sweep.auroc[best] >= 0.95
    assert sweep.accuracy[best] >= 0.85
    assert sweep.ranking()[0] == sweep.best
    # the returned vector is the train-split fit; its separability is reproducible from it
    pairs = load_pairs(DATA / "sentiment.jsonl")
    _, test = pairs.split(0.25, seed=0)
    acts = read_pairs(model, test, sweep.sites, batch_size=32)
    again = separability(sweep.vector, acts.pos, acts.neg)
    assert again.auroc == pytest.approx(sweep.auroc, abs=1e-9)
