"""In-model erasure on the embedded model: EraserEdit through steer() equals the eraser on
captured activations, leaves the model as it was, saves and loads; a fresh probe on activations
captured with in-model LEACE learns nothing; scrubbing fits each site on scrubbed activations;
the LM cost of an identity eraser is exactly zero.

Sites are early (resid_post.1-3) so that capture, which stops after the last site, runs a tenth
of the model; 160 gender sentences (data/erasure/gender.jsonl) keep each capture ~2 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from steerlab.capture import capture
from steerlab.datasets.corpora import chunk_tokens, prose_corpus
from steerlab.erasure.inlp import InlpConfig, inlp
from steerlab.erasure.leace import AffineEraser, LeaceEraser, probe_scores
from steerlab.erasure.rlace import RlaceConfig, rlace
from steerlab.erasure.scrub import EraserEdit, lm_cost, scrub
from steerlab.interventions import Intervention, load_intervention, steer

DATA = Path(__file__).parents[2] / "data" / "erasure" / "gender.jsonl"
SITE = "resid_post.3"
# EraserEdit computes in float64 (the LEACE factors' dtype) and rounds once to float32, as
# eraser(x.double()).float() does; the two agree to 1 float32 ulp of |h| <= ~50, i.e. 1e-5
ULP_ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small problems on a shared 2-core runner: one torch and one BLAS thread (sklearn's probes
    # ran 25x slower with an oversubscribed BLAS pool, measured)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def _rows(split: str, n: int) -> tuple[list[str], torch.Tensor]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    rows = [r for r in rows if r["split"] == split][:n]
    return [r["text"] for r in rows], torch.tensor([r["label"] for r in rows])


@pytest.fixture(scope="module")
def train():
    return _rows("train", 160)


@pytest.fixture(scope="module")
def test_rows():
    return _rows("test", 120)


@pytest.fixture(scope="module")
def acts(model, train):
    texts, _ = train
    return capture(model, texts, SITE, positions="last", batch_size=32)[SITE]


@pytest.fixture(scope="module")
def leace(acts, train):
    return LeaceEraser.fit(acts, train[1])


def _hook_state(module) -> dict:
    return {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
            for n, m in module.named_modules()}  # fmt: skip


def test_in_model_edit_equals_eraser_on_captured(model, train, acts, leace):
    texts, _ = train
    iv = EraserEdit(leace, SITE)
    with steer(model, iv):
        cap = capture(model, texts, ["resid_post.2", SITE], positions="last", batch_size=32)
    expected = leace(acts.double()).float()
    assert torch.allclose(cap[SITE], expected, rtol=0, atol=ULP_ATOL)
    assert not torch.allclose(cap[SITE], acts, atol=1e-2)  # the edit did something
    # upstream of the site nothing moves
    plain = capture(model, texts, "resid_post.2", positions="last", batch_size=32)
    assert torch.equal(cap["resid_post.2"], plain["resid_post.2"])


def test_in_model_edit_at_every_token(model, train, leace):
    texts = train[0][:16]
    before = capture(model, texts, SITE, positions="all", batch_size=16)[SITE]
    with steer(model, EraserEdit(leace, SITE, positions="all")):
        after = capture(model, texts, SITE, positions="all", batch_size=16)[SITE]
    assert torch.allclose(after, leace(before.double()).float(), rtol=0, atol=ULP_ATOL)


def test_algebra_form_equals_direct_edit(leace):
    # h + Bᵀ(f(h) − B h) with f(h) = B h − T R (h − μ): the intervention algebra's form
    iv = EraserEdit(leace, SITE)
    h = torch.randn(4, 7, leace.d_model, dtype=torch.float64) * 10
    B = iv.B.double()
    via_algebra = h + (iv.target(h) - h @ B.T) @ B
    # float64 on |h| ~ 40 and d = 576: round-off ~ d·eps·|h| ≈ 1e-11
    assert torch.allclose(iv.edit(h), via_algebra, atol=1e-9)
    assert torch.allclose(iv.edit(h), leace(h), atol=1e-12)


def test_model_restored_after_context(model, train, leace):
    ids = model.tokenizer(train[0][:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model.model(**ids).logits
    hooks = _hook_state(model.model)
    with pytest.raises(RuntimeError, match="boom"), steer(model, EraserEdit(leace, SITE)):
        with torch.no_grad():
            during = model.model(**ids).logits
        assert not torch.allclose(during, before, atol=1e-3)
        raise RuntimeError("boom")
    assert _hook_state(model.model) == hooks
    with torch.no_grad():
        assert torch.equal(model.model(**ids).logits, before)


def test_generate_with_and_without_cache(model, leace):
    ids = model.tokenizer(["Jennifer is a nurse. Tomorrow"], return_tensors="pt")
    kw = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False,
          "pad_token_id": model.tokenizer.pad_token_id}  # fmt: skip
    with steer(model, EraserEdit(leace, SITE)), torch.no_grad():
        cached = model.model.generate(**ids, use_cache=True, **kw)
        uncached = model.model.generate(**ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def _synthetic_erasers(d: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, d, generator=g, dtype=torch.float64)
    z = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    x[:, 2] += 3 * z  # a second informative direction
    return {
        "leace": LeaceEraser.fit(x, z),
        "leace_linear": LeaceEraser.fit(x, z, affine=False),
        "rlace": rlace(x, z, RlaceConfig(rank=2, max_iter=4, eval_every=2)),
        "inlp": inlp(x, z, InlpConfig(n_iter=2)),
    }, x


def test_save_load_round_trip(model, tmp_path):
    erasers, x = _synthetic_erasers(model.d_model)
    h = x.float()[None, :20]
    for name, e in erasers.items():
        iv = EraserEdit(e, "resid_post.5", positions="prompt:last_3")
        iv.save(tmp_path / name)
        back = load_intervention(tmp_path / name)
        assert isinstance(back, EraserEdit) and back.eraser_kind == iv.eraser_kind
        assert type(back.eraser) is type(e) and back.affine == (e.bias is not None)
        assert back.site == iv.site and back.positions == iv.positions
        assert torch.equal(back.edit(h), iv.edit(h))
        assert back.eraser.meta == e.meta
        assert isinstance(Intervention.load(tmp_path / name), EraserEdit)


def test_probe_on_in_model_leace_is_at_majority(model, train, test_rows, acts, leace):
    (texts, y), (texts_te, y_te) = train, test_rows
    with steer(model, EraserEdit(leace, SITE)):
        x_tr = capture(model, texts, SITE, positions="last", batch_size=32)[SITE]
        x_te = capture(model, texts_te, SITE, positions="last", batch_size=32)[SITE]
    x_te_plain = capture(model, texts_te, SITE, positions="last", batch_size=32)[SITE]
    _, acc_before = probe_scores(acts, y, x_te_plain, y_te)
    _, acc_after = probe_scores(x_tr, y, x_te, y_te)
    maj = float(torch.bincount(y_te).max()) / len(y_te)
    assert acc_before > 0.9  # gender is plainly decodable at layer 3 before erasure
    # after LEACE the class means of the training rows are equal (to float32 round-off), so
    # the regularised logistic probe has w ≈ 0: its held-out decision values are constant...
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_tr.double().numpy(), y.numpy())
    dec = clf.decision_function(x_te.double().numpy())
    assert dec.max() - dec.min() < 1e-2  # vs a spread of ~10 before erasure
    # ...and its accuracy is the majority rate up to which side of 0 the round-off falls:
    # within 3 binomial standard deviations sqrt(p(1-p)/n) <= 0.5/sqrt(120) ≈ 0.046
    assert abs(acc_after - maj) <= 3 * 0.5 / len(y_te) ** 0.5


def test_scrub_fits_each_site_on_scrubbed_activations(model, train):
    texts, y = train
    sites = ["resid_post.2", "resid_post.1"]  # any order: fitted in execution order
    res = scrub(model, texts, y, sites, batch_size=32)
    assert [iv.site for iv in res.interventions] == ["resid_post.1", "resid_post.2"]
    first = res.interventions[0]
    # by construction: site 1 is fitted on plain activations...
    plain1 = capture(model, texts, "resid_post.1", positions="last", batch_size=32)
    assert torch.equal(res.erasers["resid_post.1"].P, LeaceEraser.fit(plain1["resid_post.1"], y).P)
    # ...site 2 on activations captured with site 1's eraser applied
    with steer(model, first):
        scrubbed2 = capture(model, texts, "resid_post.2", positions="last", batch_size=32)
    expect = LeaceEraser.fit(scrubbed2["resid_post.2"], y)
    assert torch.equal(res.erasers["resid_post.2"].P, expect.P)
    assert torch.equal(res.erasers["resid_post.2"].bias, expect.bias)
    plain2 = capture(model, texts, "resid_post.2", positions="last", batch_size=32)
    unscrubbed = LeaceEraser.fit(plain2["resid_post.2"], y)
    assert not torch.allclose(unscrubbed.P, expect.P, atol=1e-3)  # the upstream erasure mattered


def test_scrub_per_token_labels(model, train):
    texts, y = train[0][:8], train[1][:8]
    res = scrub(model, texts, y, "resid_post.1", positions="all", batch_size=8)
    cap = capture(model, texts, "resid_post.1", positions="all", batch_size=8)
    per_row = y[cap.doc_ids]
    again = scrub(model, texts, per_row, "resid_post.1", positions="all", batch_size=8)
    assert torch.equal(res.erasers["resid_post.1"].P, again.erasers["resid_post.1"].P)
    with pytest.raises(ValueError, match="one per text"):
        scrub(model, texts, y[:5], "resid_post.1", batch_size=8)


@pytest.fixture(scope="module")
def prose(model):
    return chunk_tokens(model.tokenizer, prose_corpus(docstrings=False), seq_len=64, n_tokens=256)


def test_lm_cost_of_identity_is_zero(model, prose, leace):
    d = model.d_model
    identity = AffineEraser(torch.zeros(d, 1), torch.zeros(1, d), torch.randn(d))
    cost = lm_cost(model, prose, EraserEdit(identity, SITE))
    # h − 0 is h, so the two forwards agree bit for bit; 1e-12 only guards summation order
    assert cost.increase == pytest.approx(0.0, abs=1e-12)
    assert cost.ce_base == pytest.approx(cost.ce_edited, rel=1e-12)
    assert cost.n_tokens == prose.input_ids[:, 1:].numel()
    empty = lm_cost(model, prose, [], base=cost.ce_base)
    # the same unedited forward as the base, same kernels: equal up to summation order
    assert empty.increase == pytest.approx(0.0, abs=1e-12)
    # a closed form check of the base: HF's own loss over the same windows
    with torch.no_grad():
        hf = model.model(input_ids=prose.input_ids, labels=prose.input_ids).loss
    assert abs(cost.ce_base - float(hf)) < 1e-5  # float32 mean over 252 tokens
    real = lm_cost(model, prose, EraserEdit(leace, SITE), base=cost.ce_base)
    assert real.ce_edited != real.ce_base and abs(real.increase) < 5


def test_rank_zero_eraser_is_identity(model, leace):
    e = AffineEraser(leace.proj_left[:, :0], leace.proj_right[:0], leace.bias)
    iv = EraserEdit(e, SITE)
    h = torch.randn(2, 3, model.d_model)
    assert torch.equal(iv.edit(h), h)


def test_width_mismatch_is_a_clear_error(model, leace):
    small = AffineEraser(torch.eye(64)[:, :1], torch.eye(64)[:1], None)
    with pytest.raises(ValueError, match=r"width 64.*width 576"):
        steer(model, EraserEdit(small, SITE))
    with pytest.raises(ValueError, match=r"width 576.*width 1536"):
        steer(model, EraserEdit(leace, "mlp_post.3"))  # the MLP's hidden width
    with pytest.raises(ValueError, match="width 100"):
        EraserEdit(leace, SITE)(torch.randn(1, 2, 100))
    with pytest.raises(TypeError, match="AffineEraser"):
        EraserEdit(torch.eye(3), SITE)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        lm_cost(model, torch.zeros(3, dtype=torch.long), [])
