"""Tests for the numeric data (steerlab.probes.numeric), layer sweeps (steerlab.probes.sweep)
and the probe figures (steerlab.views.probes). Fast: synthetic activations, a tiny GPT-2 for
capture, and a handful of prompts on the embedded model."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
import torch

from steerlab.datasets.numeric import (
    ATTRIBUTES,
    comparison_prompts,
    load_entities,
    load_number_sentences,
    number_sentences,
    numeric_dir,
    year_comparisons,
)
from steerlab.probes.linear import ProbeConfig
from steerlab.probes.numeric import (
    answer_margins,
    comparison_margins,
    parse_number,
    recall_check,
    wilson_interval,
    yes_no_margin,
)
from steerlab.probes.pls import PLSConfig, fit_pls
from steerlab.probes.sweep import (
    TOKEN_CLASSES,
    capture_layers,
    code_token_task,
    format_table,
    pls_sweep,
    probe_sweep,
    selectivity_sweep,
)
from steerlab.views.probes import flip_rates, layer_curves, pls_components


@pytest.mark.parametrize("attr", sorted(ATTRIBUTES))
def test_curated_tables(attr):
    e = load_entities(attr)
    assert len(e.names) == len(set(e.names)) >= 100
    assert torch.isfinite(e.values).all() and (e.values > 0).all()
    if attr == "atomic_number":
        assert e.values.tolist() == list(range(1, 119))
        assert e.names[25] == "iron"
    if attr == "birth_year":
        assert e.values[e.names.index("Albert Einstein")] == 1879
        assert (e.values <= 2025).all()
    if attr == "population":  # stored in millions, returned in people; probed as log10
        assert e.values[e.names.index("France")] == pytest.approx(68e6)
        assert e.targets[e.names.index("France")] == pytest.approx(math.log10(68e6))


def test_number_sentences_file_is_the_generator_output():
    rows = load_number_sentences()
    assert rows == number_sentences()  # the committed JSONL is reproducible
    years = [r for r in rows if r.kind == "year"]
    assert len(years) >= 500
    for r in rows[:200]:
        assert r.text[r.span[0] : r.span[1]] == f"{r.value:g}"
    assert load_number_sentences(kind="quantity") == [r for r in rows if r.kind == "quantity"]


def test_bad_span_in_data_file_names_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "In 1999 it rained.", "value": 1999, "start": 0, "end": 2, '
                 '"kind": "year", "template": 0}\n')  # fmt: skip
    with pytest.raises(ValueError, match=r"bad.jsonl:1: span \(0, 2\) covers 'In'"):
        load_number_sentences(f)


def test_parse_number():
    assert parse_number(" 1879, in Germany") == 1879
    assert parse_number(" about 67 million people") == 67e6
    assert parse_number(" 1,412 million") == 1412e6
    assert parse_number(" 2.5 billion.") == 2.5e9
    assert math.isnan(parse_number(" unknown"))


def test_comparison_prompts():
    e = load_entities("birth_year")
    cmp = comparison_prompts(e, per_entity=3, min_gap=20, seed=1)
    assert len(cmp) == 3 * len(e.names)
    for c in cmp[:100]:
        assert c.text[slice(*c.span_a)] == e.names[c.a]
        assert c.text[slice(*c.span_b)] == e.names[c.b]
        assert c.text.endswith("Answer:")
        assert c.yes == bool(e.values[c.a] < e.values[c.b])  # "Was a born before b?"
        assert abs(float(e.values[c.a] - e.values[c.b])) > 20
    share = sum(c.yes for c in cmp) / len(cmp)
    assert 0.4 < share < 0.6
    pop = comparison_prompts(load_entities("population"), per_entity=2)
    c = pop[0]
    assert c.yes == bool(
        load_entities("population").values[c.a] > load_entities("population").values[c.b]
    )  # "Does a have a larger population than b?"
    with pytest.raises(ValueError, match="needs"):
        comparison_prompts(e, template="Is {b} older than {a}?")


def test_wilson_interval():
    # textbook values (Wilson 1927; Agresti & Coull 1998, Table 1 style), z = 1.96
    lo, hi = wilson_interval(0, 10)
    # k = 0: the lower bound is 0 in exact arithmetic; centre − half may leave a few ulps
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(81, 263)
    assert (lo, hi) == pytest.approx((0.2553, 0.3662), abs=1e-3)


def test_recall_and_yes_no_on_the_embedded_model(model):
    e = load_entities("birth_year").subset(
        [n in ("Albert Einstein", "Isaac Newton") for n in load_entities("birth_year").names]
    )
    r = recall_check(model, e)
    assert len(r.completions) == 2
    assert bool(r.correct[e.names.index("Albert Einstein")])  # greedy: " 1879, ..."
    m = yes_no_margin(model, ["Is the sky blue? Answer:", "Was Isaac Newton born before "
                              "Albert Einstein? Answer:"])  # fmt: skip
    assert m.shape == (2,) and torch.isfinite(m).all()


def test_year_comparisons_prompts_spans_and_answer_tokens(model):
    years, cmp = year_comparisons(model, 40, seed=3)
    tok = model.tokenizer
    assert len(cmp) == 40 and 10 < sum(c.yes for c in cmp) < 30  # a is later about half the time
    for c in cmp:
        xa, xb = c.text[slice(*c.span_a)], c.text[slice(*c.span_b)]
        assert (xa, xb) == (years.names[c.a], years.names[c.b])
        assert float(xa) == float(years.values[c.a]) and c.yes == (int(xa) > int(xb))
        assert c.text.startswith(model.chat(f"Which year is later, {xa} or {xb}?"))
        assert c.text.endswith("The later year is " + xa[0])
        assert xa[1] != xb[1]
        assert c.answer_ids == tuple(tok(d, add_special_tokens=False)["input_ids"][0]
                                     for d in (xa[1], xb[1]))  # fmt: skip
    # the same seed gives the same prompts; the default Yes/No readout is unchanged
    assert [c.text for c in year_comparisons(model, 40, seed=3)[1]] == [c.text for c in cmp]


def test_comparison_margins_equal_the_logits_of_single_forwards(model):
    """Batched, padded margins equal logit(positive) − logit(negative) of one unpadded forward
    of each prompt (float32: ~1e-4); Yes/No comparisons give yes_no_margin."""
    _, cmp = year_comparisons(model, 5, seed=0)
    got = comparison_margins(model, cmp, batch_size=3)
    for c, g in zip(cmp, got.tolist()):
        ids = model.tokenizer(c.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if model.add_bos:
            ids = torch.cat([torch.tensor([[model.tokenizer.bos_token_id]]), ids], 1)
        with torch.no_grad():
            lg = model.model(input_ids=ids).logits[0, -1].float()
        assert g == pytest.approx(float(lg[c.answer_ids[0]] - lg[c.answer_ids[1]]), abs=2e-3)
    people = load_entities("birth_year")
    yn = comparison_prompts(people.subset([i < 4 for i in range(len(people.names))]), per_entity=1)
    with pytest.raises(ValueError, match="mask of 301"):
        people.subset(range(4))
    torch.testing.assert_close(comparison_margins(model, yn),
                               yes_no_margin(model, [c.text for c in yn]))  # fmt: skip


def test_year_comparisons_bad_input(model):
    with pytest.raises(ValueError, match="1000 <= lo < hi <= 1999"):
        year_comparisons(model, 4, lo=1900, hi=2020)
    with pytest.raises(ValueError, match="two centuries"):
        year_comparisons(model, 4, lo=1800, hi=1899)
    with pytest.raises(ValueError, match="{a} before {b}"):
        year_comparisons(model, 4, question="Is {b} later than {a}?")
    with pytest.raises(ValueError, match="n must be"):
        year_comparisons(model, 0)

    class MergingTokenizer:  # GPT-2-style BPE: "1850" is one token
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7] if text.isdigit() else [1, 2]}

    class Handle:
        tokenizer = MergingTokenizer()

    with pytest.raises(ValueError, match="one digit per token"):
        year_comparisons(Handle(), 4)
    with pytest.raises(ValueError, match="prompts but"):
        answer_margins(model, ["a", "b"], [1], [2])


def test_capture_layers_one_pass_and_span_errors(tiny_models):
    h = tiny_models["gpt2"]
    sents = number_sentences(6, 0, seed=3)
    cap = capture_layers(h, [s.text for s in sents], [s.span for s in sents], layers=[0, 2])
    assert set(cap.acts) == {0, 2}
    assert cap.acts[0].shape == (6, 64)
    assert cap.doc_ids.tolist() == list(range(6))
    with pytest.raises(ValueError, match="matches no token"):
        capture_layers(h, ["In 1999 it rained."], [(40, 44)], layers=[0])


def test_sweeps_on_synthetic_layers():
    g = torch.Generator().manual_seed(0)
    n, d = 240, 16
    y = torch.rand(n, generator=g, dtype=torch.float64) * 1000 + 1000
    signal = (y - y.mean()) / y.std()
    acts = {L: torch.randn(n, d, generator=g) + L * signal[:, None].float() * torch.ones(d)
            for L in range(3)}  # fmt: skip
    rows = pls_sweep(acts, y, PLSConfig(max_components=3))
    assert [r["layer"] for r in rows] == [0, 1, 2]
    assert rows[0]["r2"] < 0.2 < 0.9 < rows[2]["r2"]  # layer 0 carries no signal
    ridge = probe_sweep(acts, y, ProbeConfig(kind="ridge"))
    assert ridge[2]["score"] > 0.9
    labels = (signal > 0).long()
    types = torch.arange(n) % 40
    sel = selectivity_sweep(acts, labels, types, ProbeConfig(C_grid=(1.0,), n_folds=0))
    assert sel[2]["selectivity"] > sel[0]["selectivity"]
    table = format_table(rows, ["layer", "r2", "n_components"])
    assert table.splitlines()[0].split() == ["layer", "r2", "n_components"]


def test_code_token_task_labels():
    task = code_token_task(5, max_files=12)
    assert len(task.texts) == 5
    for text, spans, labels, words in zip(task.texts, task.spans, task.labels, task.words):
        assert len(spans) == len(labels) == len(words)
        for (s, e), w in zip(spans, words):
            assert text[s:e] == w
        first = words.index("def")
        assert TOKEN_CLASSES[labels[first]] == "keyword"
        assert TOKEN_CLASSES[labels[first + 1]] == "definition"


def test_figures():
    rows = [{"layer": i, "r2": i / 10, "selectivity": 0.1} for i in range(4)]
    fig = layer_curves({"years": rows, "people": rows}, ["r2", "selectivity"])
    assert isinstance(fig, go.Figure) and len(fig.data) == 4
    with pytest.raises(KeyError, match="acc"):
        layer_curves(rows, ["acc"])
    fig = pls_components(torch.randn(5, 3), torch.arange(5.0), list("abcde"), value_name="year")
    assert "a<br>year = 0" in fig.data[0].text[0]
    with pytest.raises(ValueError, match="k >= 2"):
        pls_components(torch.randn(5, 1), torch.arange(5.0), list("abcde"))
    flips = [{"direction": d, "alpha": a, "flip_rate": 0.1, "ci_low": 0.05, "ci_high": 0.2,
              "flips": 3, "n": 30} for d in ("pls", "random") for a in (-2, 2)]  # fmt: skip
    fig = flip_rates(flips)
    # no line across α = 0, where nothing was measured (steerlab.views.common.gap_at_zero)
    assert len(fig.data) == 2 and list(fig.data[0].x) == [-2, None, 2]


def test_data_readme_states_sources():
    text = (numeric_dir().parent / "README.md").read_text()
    for f in ("birth_years.csv", "populations.csv", "elements.csv", "numbers_in_text.jsonl"):
        assert f in text
    assert "Wikipedia" in text


# --- the causal test on a tiny model ------------------------------------------------------------


def _tiny_comparisons():
    e = load_entities("birth_year")
    e = e.subset([i < 6 for i in range(len(e.names))])
    return e, comparison_prompts(e, per_entity=1, seed=0)


@pytest.mark.parametrize("entity", ["a", "b"])
def test_steered_margins_edit_exactly_the_entity_token(tiny_models, entity):
    """An AddVector at X's (or Y's) last token equals a hand-written hook that adds the same
    vector at the token found by tokenising the prompt prefix (float32 forward: ~1e-5)."""
    from steerlab.interventions import AddVector
    from steerlab.probes.numeric_causal import steered_margins

    h = tiny_models["gpt2"]
    _, cmp = _tiny_comparisons()
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, generator=g)
    got = steered_margins(h, cmp, lambda pos: AddVector(v, 3.0, "resid_post.1", pos),
                          entity=entity, batch_size=4)  # fmt: skip
    want = []
    block = h.model.transformer.h[1]
    for c in cmp:
        end = (c.span_a if entity == "a" else c.span_b)[1]
        idx = len(h.tokenizer(c.text[:end], add_special_tokens=False)["input_ids"]) - 1

        def hook(_m, _a, out, idx=idx):
            hs = out[0] if isinstance(out, tuple) else out
            hs = hs.clone()
            hs[:, idx] += 3.0 * v / v.norm()
            return (hs, *out[1:]) if isinstance(out, tuple) else hs

        handle = block.register_forward_hook(hook)
        try:
            want.append(yes_no_margin(h, [c.text])[0])
        finally:
            handle.remove()
    torch.testing.assert_close(got, torch.stack(want), atol=1e-4, rtol=1e-4)


def test_flip_experiment_alpha_zero_flips_nothing(tiny_models):
    from steerlab.probes.numeric_causal import flip_experiment

    h = tiny_models["gpt2"]
    _, cmp = _tiny_comparisons()
    exp = flip_experiment(h, cmp, torch.ones(64), 1, [0.0, 50.0], n_random=2, batch_size=4)
    rows = {(r["direction"], r["alpha"]): r for r in exp.rows}
    assert rows[("pls", 0.0)]["flips"] == 0 and rows[("random", 0.0)]["flips"] == 0
    assert rows[("random", 0.0)]["n"] == 2 * len(cmp)
    assert 0 <= rows[("pls", 50.0)]["ci_low"] <= rows[("pls", 50.0)]["flip_rate"]
    assert 0.0 <= exp.accuracy <= 1.0 and exp.baseline.shape == (len(cmp),)


def test_flip_experiment_second_entity_reverses_the_prediction(tiny_models):
    """Raising b's value is lowering a's relative to it: the predicted answer of entity b at
    +α is entity a's at −α (so the prompts that can flip the predicted way, ``eligible``,
    swap), and a given baseline is used as is."""
    from steerlab.probes.numeric_causal import flip_experiment

    h = tiny_models["gpt2"]
    _, cmp = _tiny_comparisons()
    v = torch.ones(64)
    a = flip_experiment(h, cmp, v, 1, [-5.0, 5.0], n_random=0, batch_size=4)
    b = flip_experiment(h, cmp, v, 1, [-5.0, 5.0], n_random=0, entity="b",
                        baseline=a.baseline, batch_size=4)  # fmt: skip
    ea = {r["alpha"]: r["eligible"] for r in a.rows}
    eb = {r["alpha"]: r["eligible"] for r in b.rows}
    assert eb[5.0] == ea[-5.0] and eb[-5.0] == ea[5.0]
    assert ea[5.0] + ea[-5.0] == len(cmp)  # each prompt is eligible one way or the other
    assert torch.equal(b.baseline, a.baseline)
    with pytest.raises(ValueError, match="entity"):
        flip_experiment(h, cmp, v, 1, [1.0], n_random=0, entity="c")
    with pytest.raises(ValueError, match="baseline"):
        flip_experiment(h, cmp, v, 1, [1.0], n_random=0, baseline=a.baseline[:2])


def test_set_value_experiment_runs_per_example(tiny_models):
    from steerlab.probes.numeric_causal import set_value_experiment

    h = tiny_models["gpt2"]
    e, cmp = _tiny_comparisons()
    x = torch.randn(6, 64, dtype=torch.float64)
    y = torch.tensor([1600.0, 1700, 1800, 1900, 1650, 1750], dtype=torch.float64)
    probe = fit_pls(x, y, PLSConfig(n_components=2, test_fraction=0.3)).probe
    out = set_value_experiment(h, cmp, probe, 1, e, offset=100, batch_size=4)
    assert out["n"] == len(cmp) and out["k"] == 2
    assert 0 <= out["agree_after"] <= out["n"]
    # a baseline passed in (e.g. FlipExperiment.baseline) gives the same result
    m0 = comparison_margins(h, cmp)
    assert set_value_experiment(h, cmp, probe, 1, e, offset=100, batch_size=4, baseline=m0) == out
    with pytest.raises(ValueError, match="baseline must have shape"):
        set_value_experiment(h, cmp, probe, 1, e, offset=100, baseline=m0[:2])


def test_steered_greedy_matches_generate_and_edits_the_entity(model):
    """Unsteered, the cache-free decoding equals HF ``generate`` (greedy_complete); with an
    edit at the entity's last token it equals a hand-written hook at that token."""
    from steerlab.interventions import AddVector
    from steerlab.probes.numeric import greedy_complete
    from steerlab.probes.numeric_causal import steered_greedy

    names = ["Albert Einstein", "Isaac Newton", "Marie Curie"]
    prompts = [f"{n} was born in the year" for n in names]
    sp = [(0, len(n)) for n in names]
    assert steered_greedy(model, prompts, sp, None, max_new_tokens=4) == greedy_complete(
        model, prompts, max_new_tokens=4
    )
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    got = steered_greedy(model, prompts[:1], sp[:1],
                         lambda pos: AddVector(v, 40.0, "resid_post.3", pos), max_new_tokens=4)  # fmt: skip
    idx = len(model.tokenizer(names[0], add_special_tokens=False)["input_ids"]) - 1
    idx += int(model.add_bos)

    def hook(_m, _a, out):
        hs = (out[0] if isinstance(out, tuple) else out).clone()
        if hs.shape[1] > idx:  # the full prompt pass, not a cached decoding step
            hs[:, idx] += 40.0 * v / v.norm()
        return (hs, *out[1:]) if isinstance(out, tuple) else hs

    handle = model.model.model.layers[3].register_forward_hook(hook)
    try:
        want = greedy_complete(model, prompts[:1], max_new_tokens=4)
    finally:
        handle.remove()
    assert got == want


def test_value_shift_experiment_alpha_zero_moves_nothing(tiny_models):
    from steerlab.probes.numeric_causal import value_shift_experiment

    h = tiny_models["gpt2"]
    e, _ = _tiny_comparisons()
    out = value_shift_experiment(h, e, torch.ones(64), 1, [0.0, 50.0], n_random=2,
                                 max_new_tokens=3, batch_size=4)  # fmt: skip
    rows = {(r["direction"], r["alpha"]): r for r in out["rows"]}
    zero = rows[("pls", 0.0)]
    assert zero["directed"] == 0 and zero["changed"] == 0
    assert rows[("random", 0.0)]["n"] + rows[("random", 0.0)]["unparsed"] == 2 * len(e.names)
    assert len(out["baseline"]) == len(e.names)
