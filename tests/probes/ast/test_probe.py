"""Tests for the AST-Probe: leaf features, the probe, its loss, training, evaluation and views.

Independent references: a brute-force double loop for the pairwise ranking loss and a manual
log-softmax for the cross-entropies; a hand-set probe on features built so that the exact
answer is linear (it must give F1 = 1, which checks the whole decode path); Hugging Face's own
``output_hidden_states`` for the pooled leaf vectors; and :func:`labelled_f1` on the gold trees.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.datasets.corpora import stdlib_dir
from steerlab.probes.ast.data import (
    AstSnippet,
    extract_snippets,
    leaf_token_alignment,
    straddling_tokens,
)
from steerlab.probes.ast.features import (
    LeafFeatures,
    cached_leaf_features,
    capture_leaf_features,
    encode_leaves,
    layer_sites,
    random_init_model,
    snippet_from_code,
    subsample_splits,
)
from steerlab.probes.ast.probe import (
    AstProbe,
    AstProbeConfig,
    AstProbeOutput,
    ProbeData,
    ast_probe_loss,
    evaluate_ast_probe,
    fit_ast_probe,
    predict_trees,
    split_data,
)
from steerlab.probes.ast.trees import EMPTY, Tree, labelled_f1

PROPS = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def snippets() -> list[AstSnippet]:
    """Real functions with 4..40 leaves from small standard-library modules."""
    out = []
    for name in ("textwrap.py", "shlex.py", "string.py", "json/decoder.py", "ast.py"):
        found, _ = extract_snippets((stdlib_dir() / name).read_text(), name)
        out += [s for s in found if 4 <= len(s.leaf_spans) <= 40]
    return out


# --------------------------------------------------------------------------- synthetic features


def _planted(snippets, c_labels, u_labels, *, kappa=2.0, eps=0.3):
    """Leaf vectors in which an exact probe is linear (see test_hand_set_probe_is_exact).

    Coordinates: [0] a walk whose steps are ``±sqrt(d_i)``; then a cumulative one-hot block
    with steps ``kappa·e_{c_i}``; then ``eps·e_{u_i}``. For ``p = h`` the step
    ``p_i − p_{i−1}`` has squared norm ``d_i + kappa² + (0 or 2 eps²)``: the order of ``d``
    survives since ``2 eps² < 1`` and the ``d`` are integers.
    """
    nc, nu = len(c_labels), len(u_labels)
    ci, ui = {x: i for i, x in enumerate(c_labels)}, {x: i for i, x in enumerate(u_labels)}
    rows = []
    for s in snippets:
        t = s.targets()
        n = len(t.leaves)
        h = torch.zeros(n, 1 + nc + nu, dtype=torch.float64)
        for i in range(n):
            if i:
                h[i, : 1 + nc] = h[i - 1, : 1 + nc]
                h[i, 0] += (-1) ** i * math.sqrt(t.d[i - 1])
                h[i, 1 + ci[t.c[i - 1]]] += kappa
            h[i, 1 + nc + ui[t.u[i]]] = eps
        rows.append(h)
    x = torch.cat(rows)
    offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    return x, offsets


def _labels(snippets):
    c = sorted({x for s in snippets for x in s.targets().c})
    u = sorted({x for s in snippets for x in s.targets().u})
    return c, u


def test_hand_set_probe_is_exact(snippets):
    c_labels, u_labels = _labels(snippets)
    x, offsets = _planted(snippets, c_labels, u_labels)
    nc, d = len(c_labels), x.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    probe = AstProbe(
        B=eye,
        C=eye[:, 1 : 1 + nc],
        U=eye[:, 1 + nc :],
        mean=torch.zeros(d, dtype=torch.float64),
        scale=torch.ones(d, dtype=torch.float64),
        c_labels=tuple(c_labels),
        u_labels=tuple(u_labels),
    )
    data = ProbeData.from_features(x, offsets, snippets)
    ev = evaluate_ast_probe(probe, data)
    # every predicted tree equals its gold AST: exact scores, no tolerance needed
    assert ev.f1 == ev.precision == ev.recall == 1.0
    assert ev.c_accuracy == ev.u_accuracy == 1.0
    trees = predict_trees(probe, data)
    assert trees == [s.tree for s in snippets]
    # predict() on one snippet agrees, with the leaf texts as leaf labels
    s = snippets[3]
    tree = probe.predict(x[int(offsets[3]) : int(offsets[4])], s.targets().leaves)
    assert tree == s.tree


@pytest.fixture
def one_thread():
    """Tiny matrices: a second intra-op thread only adds synchronisation, which on a loaded
    2-core machine made this training six times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_recovers_planted_structure(snippets, one_thread):
    """Hidden by a random rotation and padded with noise dimensions, the planted structure is
    still linear: a trained probe must rebuild held-out trees almost perfectly."""
    small = [s for s in snippets if len(s.leaf_spans) <= 24][:40]
    c_labels, u_labels = _labels(small)
    x, offsets = _planted(small, c_labels, u_labels)
    gen = torch.Generator().manual_seed(0)
    d = x.shape[1] + 8
    noise = 0.05 * torch.randn(x.shape[0], 8, generator=gen, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    h = (torch.cat([x, noise], 1) @ Q.T).float()
    n_train = 28
    seen = {x for s in small[:n_train] for t in [s.targets()] for x in t.c + t.u}
    # held-out snippets whose labels were all seen in training (others can never be right)
    test_ids = [
        i
        for i in range(n_train, len(small))
        if {x for t in [small[i].targets()] for x in t.c + t.u} <= seen
    ]
    assert len(test_ids) >= 3
    train = ProbeData.from_features(h, offsets, small[:n_train])
    test = ProbeData.from_features(h, offsets, [small[i] for i in test_ids], test_ids)
    # the planted walk has the margin's scale already: no normalisation (``scale`` would shrink
    # it, and λ = 5 keeps B from stretching it back within this few steps)
    cfg = AstProbeConfig(
        rank=x.shape[1],
        lr=1e-2,
        max_epochs=40,
        patience=40,
        lr_patience=40,
        batch_size=4,
        normalize="none",
    )
    fit = fit_ast_probe(train, test, cfg)
    ev = evaluate_ast_probe(fit.probe, test)
    assert ev.f1 > 0.9, ev.f1  # a few hinge violations remain after 280 steps
    assert fit.history[-1]["train_loss"] < 0.1 * fit.history[0]["train_loss"]
    B = fit.probe.B.double()
    # λ = 5 holds B close to orthonormal columns
    assert (B.T @ B - torch.eye(B.shape[1], dtype=torch.float64)).abs().max() < 0.2


# --------------------------------------------------------------------------- loss


def _brute_rank(dh, d, n):
    total, pairs = 0.0, 0
    for b in range(len(n)):
        m = int(n[b]) - 1
        for i in range(m):
            for j in range(m):
                if d[b, i] > d[b, j]:
                    total += max(0.0, 1.0 - float(dh[b, i] - dh[b, j]))
                    pairs += 1
    return total / max(pairs, 1)


def test_loss_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    b, L, nc, nu = 3, 7, 4, 3
    n = torch.tensor([7, 4, 1])
    dh = torch.randn(b, L - 1, generator=gen, dtype=torch.float64) * 2
    d = torch.randint(1, 5, (b, L - 1), generator=gen).double()
    c = torch.randint(0, nc, (b, L - 1), generator=gen)
    u = torch.randint(0, nu, (b, L), generator=gen)
    for k in range(b):  # padding and an unknown label are -1
        c[k, int(n[k]) - 1 :] = -1
        u[k, int(n[k]) :] = -1
    c[0, 2] = -1
    sc = torch.randn(b, L - 1, nc, generator=gen, dtype=torch.float64)
    su = torch.randn(b, L, nu, generator=gen, dtype=torch.float64)
    parts = ast_probe_loss(AstProbeOutput(dh, sc, su), d, c, u, n)
    assert parts.rank.item() == pytest.approx(_brute_rank(dh, d, n), rel=1e-12)  # float64 sums
    logp_c, logp_u = sc.log_softmax(-1), su.log_softmax(-1)
    want_c = -torch.stack(
        [logp_c[k, i, c[k, i]] for k in range(b) for i in range(L - 1) if c[k, i] >= 0]
    ).mean()
    want_u = -torch.stack(
        [logp_u[k, i, u[k, i]] for k in range(b) for i in range(L) if u[k, i] >= 0]
    ).mean()
    assert parts.c.item() == pytest.approx(want_c.item(), rel=1e-12)
    assert parts.u.item() == pytest.approx(want_u.item(), rel=1e-12)
    assert parts.total.item() == pytest.approx((parts.rank + parts.c + parts.u).item())


def test_loss_with_nothing_to_score_is_zero_not_nan():
    out = AstProbeOutput(torch.zeros(1, 0), torch.zeros(1, 0, 2), torch.zeros(1, 1, 2))
    parts = ast_probe_loss(
        out,
        torch.zeros(1, 0),
        torch.zeros(1, 0, dtype=torch.long),
        torch.full((1, 1), -1),
        torch.tensor([1]),
    )
    assert parts.total.item() == pytest.approx(0.0, abs=1e-12)  # sums over nothing are 0, not NaN


@PROPS
@given(st.lists(st.integers(1, 9), min_size=2, max_size=12), st.floats(-50, 50))
def test_rank_loss_vanishes_iff_order_has_unit_margins(d, shift):
    d = torch.tensor([d], dtype=torch.float64)
    n = torch.tensor([d.shape[1] + 1])
    zeros = torch.zeros(1, d.shape[1], 1, dtype=torch.float64)
    out = AstProbeOutput(d + shift, zeros, torch.zeros(1, d.shape[1] + 1, 1, dtype=torch.float64))
    u = torch.zeros(1, d.shape[1] + 1, dtype=torch.long)
    c = torch.zeros(1, d.shape[1], dtype=torch.long)
    # integer gold distances shifted by a constant keep every margin >= 1; the shift is a
    # float64 addition, so a margin can come out 1 - eps and leave a hinge of a few ulps
    # (hypothesis found d=[1, 2], shift=2.2e-16 -> 2.2e-16): zero up to 1e-12.
    assert ast_probe_loss(out, d, c, u, n).rank.item() == pytest.approx(0.0, abs=1e-12)
    if len(set(d[0].tolist())) > 1:  # reversed order violates every strict pair
        rev = AstProbeOutput(-d, zeros, out.u_scores)
        assert ast_probe_loss(rev, d, c, u, n).rank.item() >= 1.0


# --------------------------------------------------------------------------- artifact and subspace


def _random_probe(d=12, r=5, gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    return AstProbe(
        B=torch.randn(d, r, generator=gen),
        C=torch.randn(r, 3, generator=gen),
        U=torch.randn(r, 2, generator=gen),
        mean=torch.randn(d, generator=gen),
        scale=torch.rand(d, generator=gen) + 0.5,
        c_labels=("a", "b", EMPTY),
        u_labels=(EMPTY, "x"),
        meta={"site": "resid_post.3"},
    )


def test_probe_save_load_round_trip(tmp_path):
    probe = _random_probe()
    probe.save(tmp_path / "p")
    back = AstProbe.load(tmp_path / "p")
    h = torch.randn(2, 6, 12)
    a, b = probe(h), back(h)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert back.c_labels == probe.c_labels and back.u_labels == probe.u_labels
    assert back.meta == probe.meta


def test_forward_matches_the_equations():
    probe = _random_probe()
    h = torch.randn(6, 12, dtype=torch.float64)
    out = probe(h)
    p = ((h - probe.mean.double()) * probe.scale.double()) @ probe.B.double()
    want_d = torch.stack([(p[i] - p[i - 1]).pow(2).sum() for i in range(1, 6)])
    torch.testing.assert_close(out.d.double(), want_d, rtol=1e-5, atol=1e-5)  # float32 probe
    torch.testing.assert_close(out.u_scores.double(), p @ probe.U.double(), rtol=1e-5, atol=1e-5)


def test_subspace_spans_the_scaled_projection():
    probe = _random_probe()
    sub = probe.subspace()
    assert sub.k == probe.rank
    B = sub.basis.double()
    torch.testing.assert_close(B.T @ B, torch.eye(sub.k, dtype=torch.float64), atol=1e-6, rtol=0)
    W = probe.B.double() * probe.scale.double()[:, None]
    # W's columns lie in the subspace: projecting them changes nothing (float32 basis)
    torch.testing.assert_close(B @ (B.T @ W), W, atol=1e-5, rtol=1e-5)
    assert sub.principal_angles(sub).abs().max() < 1e-3


def test_bad_input_raises_clear_errors(snippets):
    with pytest.raises(ValueError, match="rank"):
        AstProbeConfig(rank=0)
    with pytest.raises(ValueError, match="normalize"):
        AstProbeConfig(normalize="whiten")  # type: ignore[arg-type]
    c, u = _labels(snippets)
    x, offsets = _planted(snippets, c, u)
    data = ProbeData.from_features(x.float(), offsets, snippets)
    with pytest.raises(ValueError, match="exceeds d_model"):
        fit_ast_probe(data, data, AstProbeConfig(rank=x.shape[1] + 1))
    j = next(j for j, s in enumerate(snippets) if len(s.leaf_spans) != len(snippets[0].leaf_spans))
    with pytest.raises(ValueError, match="other snippets"):  # snippet j against 0's features
        ProbeData.from_features(x, offsets, [snippets[j]], [0])
    with pytest.raises(ValueError, match="no usable function"):
        snippet_from_code("def f(:\n    return")
    with pytest.raises(ValueError, match="no usable function"):
        snippet_from_code("x = 1")
    with pytest.raises(ValueError, match=r"\[\.\.\., leaf, 12\]"):
        _random_probe()(torch.randn(3, 7))


def test_snippets_without_leaves_are_a_counted_skip(snippets):
    empty = AstSnippet(code="", tree=Tree("module"), leaf_spans=[], path="<x>", name="e", line=1)
    c, u = _labels(snippets[:4])
    x, offsets = _planted(snippets[:4], c, u)
    offsets = torch.cat([offsets[:3], offsets[2:3], offsets[3:]])  # an empty range at index 2
    data = ProbeData.from_features(
        x, offsets, [snippets[0], snippets[1], empty, snippets[2], snippets[3]]
    )
    assert data.n_skipped == 1 and len(data.targets) == 4
    with pytest.raises(ValueError, match="no snippet with leaves"):
        ProbeData.from_features(x, torch.zeros(2, dtype=torch.long), [empty])


# --------------------------------------------------------------------------- leaf features


def test_layer_sites_and_subsample():
    assert layer_sites(2) == ["resid_pre.0", "resid_post.0", "resid_post.1"]
    with pytest.raises(ValueError):
        layer_sites(0)

    class DS:
        train, dev, test = list(range(10)), list(range(3)), list(range(5))

    a = subsample_splits(DS, 4, None, 99, seed=1)
    assert len(a["train"]) == 4 and a["dev"] == DS.dev and a["test"] == DS.test
    assert a == subsample_splits(DS, 4, None, 99, seed=1)


@pytest.mark.parametrize("tokenization", ["leaves", "text"])
def test_leaf_vectors_match_hf_hidden_states(model, snippets, tmp_path, tokenization):
    """Mean of each leaf's tokens in HF's own ``output_hidden_states``, one snippet at a time,
    on the tokens of that tokenization (leaf by leaf, or the whole string)."""
    sn = sorted(snippets, key=lambda s: len(s.code))[:3]
    sites = ["resid_pre.0", "resid_post.1"]
    feats = capture_leaf_features(model, sn, sites, batch_size=2, dtype=torch.float32,
                                  tokenization=tokenization)  # fmt: skip
    assert feats.n_snippets == 3 and feats.n_leaves == sum(len(s.leaf_spans) for s in sn)
    assert feats.meta["tokenization"] == tokenization
    tok = model.tokenizer
    for i, s in enumerate(sn):
        if tokenization == "leaves":
            enc = encode_leaves(model, [s])
            ids, offsets = enc.input_ids, enc.offsets[0]
        else:
            e = tok(s.code, return_offsets_mapping=True, add_special_tokens=False,
                    return_tensors="pt")  # fmt: skip
            ids, offsets = e["input_ids"], e["offset_mapping"][0]
            if model.add_bos:  # steerlab's BOS policy (steerlab.tokens)
                ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)
                offsets = torch.cat([torch.zeros(1, 2, dtype=torch.long), offsets])
        with torch.no_grad():
            hs = model.model(input_ids=ids, output_hidden_states=True).hidden_states
        groups = leaf_token_alignment(s.leaf_spans, offsets)
        for site, k in (("resid_pre.0", 0), ("resid_post.1", 2)):
            want = torch.stack([hs[k][0, g].mean(0) for g in groups])
            # batched with right padding vs alone: float32 kernels differ in summation order
            torch.testing.assert_close(feats.snippet(i, site), want, rtol=1e-4, atol=1e-4)
    feats.save(tmp_path / "f")
    back = LeafFeatures.load(tmp_path / "f", sites=["resid_post.1"])
    assert back.sites == ["resid_post.1"] and torch.equal(
        back["resid_post.1"], feats["resid_post.1"]
    )
    assert torch.equal(back.offsets, feats.offsets) and back.meta == feats.meta


@pytest.fixture(scope="module")
def minilm():
    """The embedded bidirectional encoder (all-MiniLM-L6-v2, WordPiece with [CLS]/[SEP])."""
    from steerlab.models import load_model

    return load_model("minilm-l6", device="cpu")


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_no_token_straddles_two_leaves(model, minilm, snippets, which):
    """Leaf-by-leaf tokens never overlap two leaves, every leaf gets a token, and the tokens
    are the source text with its spacing (byte-level BPE decodes back to it exactly)."""
    h = model if which == "smollm2" else minilm
    enc = encode_leaves(h, snippets)
    shared = 0
    for b, s in enumerate(snippets):
        real = enc.attention_mask[b].bool()
        off = enc.offsets[b][real]
        assert straddling_tokens(s.leaf_spans, off) == []
        groups = leaf_token_alignment(s.leaf_spans, off, straddling="refuse")
        assert all(groups)  # raises above if a leaf had no token
        ids = enc.input_ids[b][real & ~enc.special_mask[b]]
        if which == "smollm2":
            text = h.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
            assert text == s.code
        else:  # WordPiece drops whitespace and lower-cases: every token is inside one leaf
            spans = off[~enc.special_mask[b][real]]
            assert all(any(a <= i and j <= e for a, e in s.leaf_spans) for i, j in spans.tolist())
        # the same snippet tokenised as one string: BPE merges such as "()" straddle leaves
        whole = h.tokenizer(s.code, add_special_tokens=False, return_offsets_mapping=True)
        shared += len(straddling_tokens(s.leaf_spans, whole["offset_mapping"]))
    added = enc.special_mask.sum(1)
    n_added = int(h.add_bos) if which == "smollm2" else 2  # steerlab's BOS, or [CLS] and [SEP]
    assert bool((added == n_added).all())
    if which == "smollm2":
        assert shared > 0  # so the check above is not vacuous for this tokenizer


def test_straddling_tokens_are_refused_on_request():
    # "f():" with leaves f ( ) : and the BPE tokens "f" "()" ":" (as one string tokenises it)
    leaves, offsets = [(0, 1), (1, 2), (2, 3), (3, 4)], [(0, 1), (1, 3), (3, 4)]
    assert leaf_token_alignment(leaves, offsets) == [[0], [1], [1], [2]]
    with pytest.raises(ValueError, match="straddle two leaves"):
        leaf_token_alignment(leaves, offsets, straddling="refuse")
    with pytest.raises(ValueError, match="straddling"):
        leaf_token_alignment(leaves, offsets, straddling="drop")


def test_feature_cache_is_reused_and_invalidated(model, snippets, tmp_path, monkeypatch):
    sites = ["resid_pre.0"]
    a = cached_leaf_features(model, snippets[:2], tmp_path / "c", sites)
    import steerlab.probes.ast.features as af

    def boom(*args, **kwargs):
        raise AssertionError("recaptured although the cache matches")

    monkeypatch.setattr(af, "capture_leaf_features", boom)
    b = cached_leaf_features(model, snippets[:2], tmp_path / "c", sites)
    assert torch.equal(a["resid_pre.0"], b["resid_pre.0"])
    with pytest.raises(AssertionError, match="recaptured"):  # other snippets: a new key
        cached_leaf_features(model, snippets[1:3], tmp_path / "c", sites)


def test_feature_cache_in_parts_equals_one_pass(model, snippets, tmp_path):
    sn, sites = snippets[:3], ["resid_pre.0"]
    whole = capture_leaf_features(model, sn, sites, dtype=torch.float32)
    parts = cached_leaf_features(model, sn, tmp_path / "p", sites, part_size=2, dtype=torch.float32)
    # embeddings only: the same rows whichever batch a snippet was in
    assert torch.equal(parts["resid_pre.0"], whole["resid_pre.0"])
    assert torch.equal(parts.offsets, whole.offsets)
    assert parts.meta["key"] == whole.meta["key"]
    assert parts.meta["straddling_tokens"] == whole.meta["straddling_tokens"]
    assert not (tmp_path / "p" / "parts").exists()


def test_no_leaf_snippet_is_skipped_in_capture(model, snippets):
    empty = AstSnippet(code="", tree=Tree("module"), leaf_spans=[], path="<x>", name="e", line=1)
    feats = capture_leaf_features(model, [snippets[0], empty], ["resid_pre.0"])
    assert feats.meta["no_leaves"] == 1
    assert feats.snippet(1, "resid_pre.0").shape == (0, model.d_model)


def test_random_init_model_is_seeded_and_differs(model):
    a, b = random_init_model(model, seed=0), random_init_model(model, seed=0)
    wa = a.model.model.layers[3].mlp.up_proj.weight
    assert torch.equal(wa, b.model.model.layers[3].mlp.up_proj.weight)
    assert not torch.equal(wa, model.model.model.layers[3].mlp.up_proj.weight)
    assert a.model_id != model.model_id and a.n_layers == model.n_layers
    assert a.tokenizer_fingerprint() == model.tokenizer_fingerprint()


def test_split_data_checks_the_total(snippets):
    c, u = _labels(snippets[:5])
    x, offsets = _planted(snippets[:5], c, u)
    feats = LeafFeatures({"s": x.float()}, offsets)
    out = split_data(feats, "s", {"train": snippets[:3], "test": snippets[3:5]})
    assert len(out["train"].targets) == 3 and len(out["test"].targets) == 2
    assert out["test"].trees[1] == snippets[4].tree
    with pytest.raises(ValueError, match="splits hold"):
        split_data(feats, "s", {"train": snippets[:3]})


# --------------------------------------------------------------------------- views


def test_views_build_figures(snippets):
    from steerlab.views.ast import f1_by_layer, f1_by_rank, pick_example, tree_pair

    runs = [
        {"depth": k, "site": f"s{k}", "f1": 0.1 * k, "dev_f1": 0.1 * k, "rank": 8 << k}
        for k in range(4)
    ]
    fig = f1_by_layer(runs, runs[:2], 0.05, reference={"paper": 0.75})
    assert len(fig.data) == 3
    assert len(f1_by_rank(runs, d_model=64).data) == 2
    s = snippets[0]
    fig = tree_pair(s.tree, s.tree, s.leaves, code=s.code)
    colours = [c for tr in fig.data if tr.mode == "markers+text" for c in tr.marker.color]
    assert "#d62728" not in colours  # identical trees: every constituent matched
    scores = [labelled_f1(s.tree, s.tree)] * 3
    assert pick_example(scores, [5, 12, 50]) == 1
