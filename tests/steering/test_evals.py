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
    LexicalFormality,
    ProjectionConcept,
    Sentiment,
    SweepConfig,
    prefix_ids,
    score_responses,
    strength_sweep,
)
from steerlab.steering.scores import (
    bootstrap_ci,
    continuation_scores,
    cosine,
    embed,
    fluency_score,
    harmonic_mean,
    keyword_hits,
    relevance_ratio,
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


# --- relevance and fluency formulas ------------------------------------------------------------


def test_relevance_ratio_closed_form():
    s = torch.tensor([0.30, 0.60, -0.2, 0.05], dtype=torch.float64)
    s0 = torch.tensor([0.60, 0.30, 0.5, 0.02], dtype=torch.float64)
    # 0.3/0.6; above the reference clips to 1; negative clips to 0; s0 below the floor -> floor
    want = torch.tensor([0.5, 1.0, 0.0, 0.05 / 0.1], dtype=torch.float64)
    torch.testing.assert_close(relevance_ratio(s, s0, floor=0.1), want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="floor"):
        relevance_ratio(s, s0, floor=0.0)
    with pytest.raises(ValueError, match="differ"):
        relevance_ratio(s, s0[:2])


def test_fluency_score_closed_form():
    nll = torch.tensor([2.0, 6.0, 0.0, 3.0], dtype=torch.float64)
    n = torch.tensor([2.0, 3.0, 0.0, 3.0], dtype=torch.float64)
    rep = torch.tensor([0.0, 0.5, 0.0, 0.25], dtype=torch.float64)
    ppl0 = math.e**1.5
    # ppl = e^1 (below PPL0: capped at 1), e^2, empty -> 0, e^1 with repetition 0.25
    want = torch.tensor([1.0, math.e**-0.5 * 0.5, 0.0, 0.75], dtype=torch.float64)
    torch.testing.assert_close(fluency_score(nll, n, rep, ppl0), want, rtol=1e-12, atol=0)


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


# Hand-made relevance set: each prompt with the answer a helpful assistant would give and an
# answer to a different question (fluent and on a definite topic, so only relevance differs).
RELEVANCE_SET = [
    ("What do you usually eat for breakfast?",
     "I usually have porridge with fruit and a cup of coffee in the morning.",
     "The train to the airport leaves every twenty minutes from platform four."),
    ("Tell me about your weekend.",
     "My weekend was relaxing: I went hiking on Saturday and saw friends on Sunday.",
     "Photosynthesis turns sunlight, water and carbon dioxide into glucose and oxygen."),
    ("Describe the weather today.",
     "It is cloudy and cool today, with a light rain expected this afternoon.",
     "My favourite board game is chess because every match is different."),
    ("What kind of music do you listen to?",
     "I mostly listen to jazz and some classical music while I work.",
     "To change a flat tyre, loosen the nuts, lift the car and swap the wheel."),
    ("How do you usually get to work?",
     "I usually take the bus to work, and on sunny days I cycle.",
     "The recipe needs two eggs, a cup of flour and a pinch of salt."),
    ("Tell me about the last book you read.",
     "The last book I read was a mystery novel about a detective in Venice.",
     "Our dentist recommends brushing twice a day and flossing every night."),
]  # fmt: skip


def test_relevance_prefers_the_ideal_answer_to_an_off_topic_one(encoder):
    prompts = [p for p, _, _ in RELEVANCE_SET]
    ideal = embed(encoder, [a for _, a, _ in RELEVANCE_SET])
    off = embed(encoder, [b for _, _, b in RELEVANCE_SET])
    q = embed(encoder, prompts)
    s_ideal, s_off = cosine(ideal, q), cosine(off, q)
    assert (s_ideal > s_off).all(), (s_ideal, s_off)
    # normalised by a reference that is the ideal answer itself: the ideal scores 1, the
    # off-topic answer less (strictly below 1 wherever its raw similarity is lower)
    r_ideal = relevance_ratio(s_ideal, s_ideal)
    r_off = relevance_ratio(s_off, s_ideal)
    assert torch.equal(r_ideal, torch.ones_like(r_ideal))
    assert (r_off < r_ideal).all()


def test_response_scores_do_not_depend_on_the_prompt(model, encoder):
    # fluency is scored after one generic prefix: the same response to two different prompts
    # gets the same NLL (bit-identical batches), while its similarity follows the prompt
    tok = model.tokenizer
    resp = torch.tensor(tok(" It rained all day, so I stayed home and read.")["input_ids"])
    q = embed(encoder, ["Describe the weather today.", "Explain how compilers optimise loops."])
    pre = prefix_ids(model, "Say something.")
    r = score_responses(model, encoder, q, [resp, resp], ["It rained all day."] * 2, pre)
    assert r.nll_sum[0] == r.nll_sum[1] and r.n_tokens.tolist() == [len(resp)] * 2
    assert r.similarity[0] > r.similarity[1]
    # the NLL is the model's own after the chat-rendered prefix
    seq = torch.cat([pre, resp])
    with torch.no_grad():
        logits = model.model(input_ids=seq[None]).logits[0].double()
    manual = sum(-logits[t - 1].log_softmax(-1)[seq[t]] for t in range(len(pre), len(seq)))
    # float32 logits of a batch of two vs one sequence agree to ~1e-5 per token
    assert float(r.nll_sum[0]) == pytest.approx(float(manual), abs=1e-3)
    assert tok.decode(pre).endswith("<|im_start|>assistant\n")


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
    lex = LexicalFormality(scale=1.0)
    raw = lex.score(["The committee approved the proposal.", "sure lol, gonna help ya"])
    assert raw.tolist() == pytest.approx([0.4, -0.8])  # see tests/steering/test_formality.py
    ref = torch.tensor([0.0, 0.2], dtype=torch.float64)  # mean 0.1, std sqrt(0.02)
    want = [min(1.0, (0.4 - 0.1) / math.sqrt(0.02)), 0.0]
    assert lex.normalise(raw, 1, ref).tolist() == pytest.approx(want)
    assert lex.normalise(raw, -1, ref).tolist() == pytest.approx([0.0, 1.0])


def test_sweep_config_validation():
    with pytest.raises(ValueError):
        SweepConfig(alphas=())
    with pytest.raises(ValueError):
        SweepConfig(alphas=(1.0, float("nan")))
    with pytest.raises(ValueError):
        SweepConfig(alphas=(1.0,), max_new_tokens=0)
    with pytest.raises(ValueError, match="fluency_prefix"):
        SweepConfig(alphas=(1.0,), fluency_prefix="  ")
    with pytest.raises(ValueError, match="relevance_floor"):
        SweepConfig(alphas=(1.0,), relevance_floor=0.0)


# --- one small sweep -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(model, encoder):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(model.d_model, generator=g)
    prompts = ["Describe a chair.", "What do you think of Mondays?", "Tell me about rain."]
    cfg = SweepConfig(alphas=(-40.0, 40.0), max_new_tokens=8, batch_size=4)
    return strength_sweep(model, prompts, lambda a: AddVector(v, a, "resid_post.10"),
                          Sentiment(), cfg, encoder=encoder)  # fmt: skip


def test_sweep_parts_follow_their_definitions(sweep, model, encoder):
    assert sweep.alphas == [-40.0, 0.0, 40.0]
    ref = sweep.points[1]
    assert ref.label == "unsteered"
    floor = sweep.config.relevance_floor
    torch.testing.assert_close(ref.relevance, (ref.similarity / ref.similarity.clamp_min(floor))
                               .clamp(0, 1))  # fmt: skip
    ppl0 = math.exp(float(ref.nll_sum.sum() / ref.n_tokens.sum()))
    assert sweep.ppl_reference == pytest.approx(ppl0)
    q = embed(encoder, sweep.prompts)
    for c in [*sweep.points, *sweep.baselines.values()]:
        ppl = (c.nll_sum / c.n_tokens).exp()
        want_f = (ppl0 / ppl).clamp(max=1) * (1 - c.repetition)
        torch.testing.assert_close(c.fluency, torch.where(c.n_tokens > 0, want_f, 0.0))
        torch.testing.assert_close(c.concept_raw, vader_compound(c.texts))
        # relevance: the response's similarity to its prompt over the unsteered response's
        sim = cosine(embed(encoder, c.texts), q)
        # batches of 4 vs one batch: padding moves float32 embeddings by ~1e-6
        torch.testing.assert_close(c.similarity, sim, rtol=0, atol=1e-5)
        want_r = (sim / ref.similarity.clamp_min(floor)).clamp(0, 1)
        torch.testing.assert_close(c.relevance, want_r, rtol=0, atol=1e-4)  # ratio of the above
        for pole in (1, -1):
            parts = torch.stack([(pole * c.concept_raw).clamp(0, 1), c.fluency, c.relevance], -1)
            want = torch.tensor([hmean(r) if min(r) > 0 else 0.0 for r in parts.tolist()],
                                dtype=torch.float64)  # fmt: skip
            torch.testing.assert_close(c.combined[pole], want)
    row = {r["label"]: r for r in sweep.table()}
    assert set(row) == {"alpha=-40", "unsteered", "alpha=+40", "prompt+1", "prompt-1"}
    assert row["unsteered"]["similarity"] == pytest.approx(float(ref.similarity.mean()))


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


# --- confidence intervals --------------------------------------------------------------------


def test_bootstrap_ci_matches_the_normal_interval_for_a_large_sample():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, generator=g, dtype=torch.float64)
    ci = bootstrap_ci(x, n_boot=4000)
    half = 1.959964 * float(x.std()) / math.sqrt(len(x))  # ≈ 0.098
    assert ci.mean == pytest.approx(float(x.mean()), abs=1e-12)
    # the bootstrap distribution of a mean of 400 normals is close to normal; with 4000
    # resamples its 2.5/97.5% quantiles sit within ~5% of the half-width of the normal ones
    assert ci.lo == pytest.approx(ci.mean - half, abs=0.1 * half)
    assert ci.hi == pytest.approx(ci.mean + half, abs=0.1 * half)


def test_bootstrap_ci_edge_cases():
    const = bootstrap_ci(torch.tensor([0.5, 0.5, float("nan"), 0.5]))
    # constant values: every resample mean is 0.5 up to summation round-off
    assert tuple(const) == pytest.approx((0.5, 0.5, 0.5), abs=1e-15)
    with pytest.raises(ValueError, match="non-NaN"):
        bootstrap_ci(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(torch.ones(3), level=1.0)
