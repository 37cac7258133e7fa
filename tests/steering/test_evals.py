"""Each evaluation metric against a closed form or a hand computation, then one small sweep."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import hmean

from steerlab.interventions import AddVector
from steerlab.steering.evals import (
    KeywordConcept,
    ProjectionConcept,
    Sentiment,
    SweepConfig,
    strength_sweep,
)
from steerlab.steering.scores import (
    continuation_scores,
    cosine,
    embed,
    harmonic_mean,
    keyword_hits,
    repetition_rate,
    token_projections,
    vader_compound,
    words,
)

# --- VADER ----------------------------------------------------------------------------------


def test_vader_single_words_match_the_normalisation_formula():
    # VADER's compound for one lexicon word w is normalize(v_w) = v / sqrt(v² + 15)
    # (Hutto & Gilbert 2014, alpha = 15); the valences are read from the shipped lexicon.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lex = SentimentIntensityAnalyzer().lexicon
    got = vader_compound(["good", "bad", "horrible"])
    want = [round(v / math.sqrt(v * v + 15), 4) for v in (lex["good"], lex["bad"], lex["horrible"])]
    assert got.tolist() == pytest.approx(want, abs=1e-12)  # VADER rounds to 4 decimals
    assert got[0] == pytest.approx(0.4404) and got[1] == pytest.approx(-0.5423)


def test_vader_neutral_and_empty():
    assert vader_compound(["The book is on the table.", ""]).tolist() == [0.0, 0.0]
    pos, neg = vader_compound(["I love this wonderful day!", "I hate this awful day."])
    assert pos > 0.5 and neg < -0.5


# --- repetition and keywords -----------------------------------------------------------------


def test_repetition_rate_on_constructed_strings():
    # "a b c d a b c d": 5 four-grams, one of them (a b c d) repeats -> 1 - 4/5
    assert repetition_rate("a b c d a b c d", n=4) == pytest.approx(0.2)
    # one word five times: 4 bigrams, all equal -> 1 - 1/4
    assert repetition_rate("the the the the the", n=2) == pytest.approx(0.75)
    # punctuation is a token: [hi ! hi ! hi !] has bigrams (hi !)x3 and (! hi)x2 -> 1 - 2/5
    assert repetition_rate("Hi! Hi! Hi!", n=2) == pytest.approx(0.6)
    assert repetition_rate("all different words here now", n=2) == 0.0  # exact: 0 / n
    assert repetition_rate("too short", n=4) == 0.0  # exact: no n-gram at all
    assert words("Don't STOP!") == ["don", "'", "t", "stop", "!"]
    with pytest.raises(ValueError):
        repetition_rate("x", n=0)


def test_keyword_hits_whole_words_and_phrases():
    texts = ["The stock market rose.", "Stockholm is cold.", "A MARKET stall", ""]
    assert keyword_hits(texts, ["stock market"]).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert keyword_hits(texts, ["market", "cold"]).tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        keyword_hits(texts, ["  "])


# --- harmonic mean ---------------------------------------------------------------------------


def test_harmonic_mean_closed_forms():
    x = torch.tensor([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0], [0.0, 1.0, 1.0], [0.2, 0.4, 0.8]])
    # 3 / (2 + 1 + 1) = 0.75; 3 / (5 + 2.5 + 1.25) = 0.342857...
    torch.testing.assert_close(harmonic_mean(x), torch.tensor([1.0, 0.75, 0.0, 3 / 8.75],
                                                              dtype=torch.float64))  # fmt: skip
    with pytest.raises(ValueError):
        harmonic_mean(torch.tensor([-0.1, 1.0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=5))
def test_harmonic_mean_matches_scipy_and_is_below_the_mean(xs):
    h = float(harmonic_mean(torch.tensor(xs, dtype=torch.float64)))
    assert h == pytest.approx(hmean(xs), rel=1e-12)
    assert min(xs) - 1e-12 <= h <= sum(xs) / len(xs) + 1e-12


# --- perplexity and projections ----------------------------------------------------------------


def test_continuation_nll_matches_manual_log_softmax(model):
    tok = model.tokenizer
    prompts = [torch.tensor(tok(model.chat(p), add_special_tokens=False)["input_ids"])
               for p in ["Hello there.", "Name a colour, please."]]  # fmt: skip
    conts = [torch.tensor(tok(" It is a nice day.")["input_ids"]),
             torch.tensor(tok(" Blue")["input_ids"])]  # fmt: skip
    site = "resid_post.5"
    v = torch.randn(model.d_model)
    got = continuation_scores(model, prompts, conts, site=site, direction=v, batch_size=2)
    for p, c, nll, proj in zip(prompts, conts, got.nll, got.projections):
        seq = torch.cat([p, c])
        with torch.no_grad():
            out = model.model(input_ids=seq[None], output_hidden_states=True)
        logits = out.logits[0].double()
        manual = [-(logits[t - 1].log_softmax(-1)[seq[t]]) for t in range(len(p), len(seq))]
        # right padding in a batch of two vs one unpadded sequence: float32 logits agree to
        # ~1e-5, so NLLs agree well within 1e-3
        torch.testing.assert_close(nll, torch.stack(manual), atol=1e-3, rtol=0)
        acts = out.hidden_states[5 + 1][0].double()[len(p) :]  # HF: [embeddings, block 0, ...]
        torch.testing.assert_close(proj, acts @ (v.double() / v.norm()), atol=1e-3, rtol=1e-4)
    ppl = got.perplexity()
    torch.testing.assert_close(ppl, torch.stack([x.mean().exp() for x in got.nll]))
    empty = continuation_scores(model, prompts[:1], [torch.tensor([], dtype=torch.long)])
    assert len(empty.nll[0]) == 0 and math.isnan(float(empty.perplexity()[0]))


def test_token_projections(model):
    v = torch.randn(model.d_model)
    tp = token_projections(model, "Good morning, sunshine!", v, "resid_post.3")
    assert "".join(tp.tokens) == "Good morning, sunshine!" and len(tp.scores) == len(tp.tokens)


# --- embeddings ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    from steerlab.models import load_model

    return load_model("minilm-l6", device="cpu")


def test_embed_is_mean_pooling_of_the_last_layer(encoder):
    texts = ["A cat sat on the mat.", "Quantum chromodynamics describes the strong force."]
    got = embed(encoder, texts, batch_size=2)  # padded batch
    for t, e in zip(texts, got):
        enc = encoder.tokenizer(t, return_tensors="pt")  # [CLS] ... [SEP], no padding
        with torch.no_grad():
            h = encoder.model(**enc).last_hidden_state[0].double()
        mean = h.mean(0)  # every token attended: a plain mean
        # padding changes float32 attention sums by ~1e-6
        torch.testing.assert_close(e, mean / mean.norm(), atol=1e-5, rtol=0)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_cosine_orders_meaning(encoder):
    e = embed(encoder, ["The weather is lovely today.", "It is a sunny, pleasant day.",
                        "Compile the kernel with gcc."])  # fmt: skip
    sim = cosine(e[[0, 0]], e[[1, 2]])
    assert sim[0] > 0.5 > sim[1]
    assert float(cosine(e[:1], e[:1])) == pytest.approx(1.0)


# --- concept normalisations ------------------------------------------------------------------


def test_concept_normalisations():
    raw = torch.tensor([-0.8, 0.0, 0.5], dtype=torch.float64)
    s = Sentiment()
    assert s.normalise(raw, 1, raw).tolist() == [0.0, 0.0, 0.5]
    assert s.normalise(raw, -1, raw).tolist() == pytest.approx([0.8, 0.0, 0.0])
    k = KeywordConcept("weddings", ("wedding",))
    hits = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert k.normalise(hits, 1, hits).tolist() == [1.0, 0.0]
    assert k.normalise(hits, -1, hits).tolist() == [0.0, 1.0]
    assert "weddings" in k.system_prompt(1)
    p = ProjectionConcept("x", "resid_post.3", torch.ones(4), scale=2.0)
    ref = torch.tensor([1.0, 3.0], dtype=torch.float64)  # mean 2, std sqrt(2)
    got = p.normalise(torch.tensor([2.0, 2.0 + math.sqrt(2), 10.0, float("nan")],
                                   dtype=torch.float64), 1, ref)  # fmt: skip
    assert got.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0])


def test_sweep_config_validation():
    with pytest.raises(ValueError):
        SweepConfig(alphas=())
    with pytest.raises(ValueError):
        SweepConfig(alphas=(1.0, float("nan")))
    with pytest.raises(ValueError):
        SweepConfig(alphas=(1.0,), max_new_tokens=0)


# --- one small sweep -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(model, encoder):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(model.d_model, generator=g)
    prompts = ["Describe a chair.", "What do you think of Mondays?", "Tell me about rain."]
    cfg = SweepConfig(alphas=(-40.0, 40.0), max_new_tokens=8, batch_size=4)
    return strength_sweep(model, prompts, lambda a: AddVector(v, a, "resid_post.10"),
                          Sentiment(), cfg, encoder=encoder)  # fmt: skip


def test_sweep_parts_follow_their_definitions(sweep):
    assert sweep.alphas == [-40.0, 0.0, 40.0]
    ref = sweep.points[1]
    assert ref.label == "unsteered"
    torch.testing.assert_close(ref.relevance, torch.ones(3, dtype=torch.float64))
    ppl0 = math.exp(float(ref.nll_sum.sum() / ref.n_tokens.sum()))
    assert sweep.ppl_reference == pytest.approx(ppl0)
    for c in [*sweep.points, *sweep.baselines.values()]:
        ppl = (c.nll_sum / c.n_tokens).exp()
        want_f = (ppl0 / ppl).clamp(max=1) * (1 - c.repetition)
        torch.testing.assert_close(c.fluency, torch.where(c.n_tokens > 0, want_f, 0.0))
        torch.testing.assert_close(c.concept_raw, vader_compound(c.texts))
        for pole in (1, -1):
            parts = torch.stack([(pole * c.concept_raw).clamp(0, 1), c.fluency, c.relevance], -1)
            want = torch.tensor([hmean(r) if min(r) > 0 else 0.0 for r in parts.tolist()],
                                dtype=torch.float64)  # fmt: skip
            torch.testing.assert_close(c.combined[pole], want)
    row = {r["label"]: r for r in sweep.table()}
    assert set(row) == {"alpha=-40", "unsteered", "alpha=+40", "prompt+1", "prompt-1"}
    assert row["unsteered"]["relevance"] == pytest.approx(1.0)


def test_sweep_best_uses_a_holdout_split(sweep):
    best = sweep.best(1)
    assert best.alpha == 40.0 and best.selected_on == [0, 2] and best.reported_on == [1]
    assert best.steered == sweep.points[2].summary([1])
    assert best.baseline == sweep.baselines[1].summary([1])
    with pytest.raises(ValueError):
        sweep.best(0)
    r = sweep.monotone_range(min_fluency=0.0)
    assert (r.lo, r.hi) == (-40.0, 40.0) and len(r.concepts) == 3
    d = sweep.to_dict()
    assert d["texts"]["prompt+1"] == sweep.baselines[1].texts and len(d["table"]) == 5
