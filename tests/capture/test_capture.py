"""Capture checked against the HF model itself and across the three backends."""

import logging

import pytest
import torch

from steerlab.capture import capture, capture_to_store
from steerlab.capture.store import ActivationStore, StoreMismatchError
from steerlab.datasets.corpora import chunk_tokens, prose_corpus
from steerlab.sites import SiteError, block_list

TEXTS = [
    "In 1969 the first people walked on the Moon.",
    "Short one.",
    "def add(a, b):\n    return a + b  # the year 2024",
]
ALL_KINDS = "resid_pre.{L},attn_out.{L},resid_mid.{L},mlp_post.{L},mlp_out.{L},resid_post.{L}"


def assert_close_scaled(got, ref, rel=2e-6):
    """Float32 results of differently batched matmuls differ by reassociation error, which
    scales with the activations' magnitude (SmolLM2's residual has "massive activation" dims of
    size ~1e2-1e3), and padded batches take another attention kernel: allow rel * max|ref|
    absolute error (float32 eps is 1.2e-7; sums over 576-1536 terms through 30 layers reach
    ~10-100 eps)."""
    tol = rel * float(ref.abs().max()) + 1e-6
    err = float((got - ref).abs().max())
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


def hidden_states(h, text):
    x = h.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        return h.model(**x, output_hidden_states=True).hidden_states


def test_hf_matches_output_hidden_states(model):
    sites = [f"resid_pre.{L}" for L in range(model.n_layers)] + ["resid_post.29"]
    cap = capture(model, TEXTS, sites)
    for d, text in enumerate(TEXTS):
        hs = hidden_states(model, text)
        rows = cap.doc_ids == d
        for L in range(model.n_layers):
            # the same modules on the same tokens; only batched-matmul reassociation differs
            assert_close_scaled(cap[f"resid_pre.{L}"][rows], hs[L][0], rel=1e-5)
        # hidden_states[-1] is after the final norm in HF; the block output is resid_post.29
    assert cap.positions[cap.doc_ids == 0].tolist() == list(range(int((cap.doc_ids == 0).sum())))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_residual_identities(model, tiny_models, arch):
    h = model if arch == "llama" else tiny_models[arch]
    cap = capture(h, TEXTS, ALL_KINDS.format(L=1))
    a = cap.acts
    # resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out, exactly as the
    # block computes them (float32 addition of the same tensors)
    torch.testing.assert_close(a["resid_mid.1"], a["resid_pre.1"] + a["attn_out.1"])
    torch.testing.assert_close(a["resid_post.1"], a["resid_mid.1"] + a["mlp_out.1"])
    down = h.model.model.layers[1].mlp.down_proj if arch == "llama" else None
    if down is not None:
        torch.testing.assert_close(down(a["mlp_post.1"]), a["mlp_out.1"], atol=1e-5, rtol=1e-5)


def test_bert_sites(tiny_models):
    h = tiny_models["bert"]
    cap = capture(h, TEXTS, ALL_KINDS.format(L=1) + ",resid_post.0")
    a = cap.acts
    layer = h.model.encoder.layer[1]
    torch.testing.assert_close(a["resid_pre.1"], a["resid_post.0"])
    # post-LN: resid_mid = LN(attn_out + resid_pre), resid_post = LN(mlp_out + resid_mid)
    ln1 = layer.attention.output.LayerNorm
    torch.testing.assert_close(a["resid_mid.1"], ln1(a["attn_out.1"] + a["resid_pre.1"]))
    ln2 = layer.output.LayerNorm
    torch.testing.assert_close(a["resid_post.1"], ln2(a["mlp_out.1"] + a["resid_mid.1"]))
    # [CLS]/[SEP] are special and masked out of "all"
    assert int((cap.doc_ids == 1).sum()) == len(
        h.tokenizer("Short one.", add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_backends_agree(model, backend):
    sites = ALL_KINDS.format(L=6) + ",resid_pre.2"
    ref = capture(model, TEXTS, sites)
    got = capture(model, TEXTS, sites, backend=backend)
    assert torch.equal(got.token_ids, ref.token_ids) and torch.equal(got.doc_ids, ref.doc_ids)
    for s in ref.sites:
        # TransformerLens's bridge reimplements the block; it differs from HF by ~2e-4 on
        # residuals of max ~1e2-1e3 (relative ~1e-6), so compare relative to the scale
        assert_close_scaled(got[s], ref[s], rel=1e-5)


def _hook_ids(m):
    # transformers 5 itself installs persistent hooks for output_hidden_states, so compare
    # the hook sets before and after rather than expecting none
    return {
        (n, k)
        for n, mod in m.named_modules()
        for k in [*mod._forward_hooks, *mod._forward_pre_hooks]
    }


def test_forward_stops_after_last_site(model):
    before = _hook_ids(model.model)
    calls = []
    hook = block_list(model)[7].register_forward_hook(lambda *a: calls.append(1))
    try:
        capture(model, TEXTS, "resid_post.6")
        assert calls == []
        capture(model, TEXTS, "resid_pre.7")
        assert calls == []  # resid_pre.7 is the *input* of block 7, which then need not run
        capture(model, TEXTS, "attn_out.7")
        assert len(calls) == 0
    finally:
        hook.remove()
    assert _hook_ids(model.model) == before


def test_padding_invariance(model):
    batched = capture(model, TEXTS, "resid_post.4", batch_size=3)
    for d, text in enumerate(TEXTS):
        alone = capture(model, [text], "resid_post.4")
        assert_close_scaled(batched["resid_post.4"][batched.doc_ids == d], alone["resid_post.4"])


def test_last_and_mask_positions(model):
    last = capture(model, TEXTS, "resid_post.3", positions="last")
    lengths = [len(model.tokenizer(t, add_special_tokens=False).input_ids) for t in TEXTS]
    assert last.positions.tolist() == [n - 1 for n in lengths]
    ids = model.tokenizer(TEXTS[0], return_tensors="pt", add_special_tokens=False).input_ids
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, [1, 3]] = True
    m = capture(model, ids, "resid_post.3", positions=mask)
    assert m.positions.tolist() == [1, 3]


def test_character_spans_select_the_number(model):
    text = TEXTS[0]
    start = text.index("1969")
    cap = capture(model, [text], "resid_post.3", positions=[(start, start + 4)])
    pieces = model.tokenizer.convert_ids_to_tokens(cap.token_ids.tolist())
    assert "".join(pieces) == "1969" and (cap.span_ids == 0).all()
    last = capture(
        model, [text], "resid_post.3", positions=[(start, start + 4)], span_tokens="last"
    )
    assert last.positions.tolist() == [cap.positions.max().item()]
    with pytest.raises(ValueError, match="matches no token"):
        capture(model, [text], "resid_post.3", positions=[(500, 510)])


def test_bos_is_masked_out_of_all(model):
    from steerlab.models import load_model

    h = load_model(add_bos=True)
    cap = capture(h, TEXTS[:1], "resid_post.2")
    plain = capture(model, TEXTS[:1], "resid_post.2")
    assert cap.positions.min() == 1 and len(cap) == len(plain)
    assert cap.meta["tokenizer"]["add_bos"] is True


def test_truncation_warns(model, caplog):
    with caplog.at_level(logging.WARNING):
        cap = capture(model, ["word " * 50], "resid_post.1", max_length=16)
    assert len(cap) == 16 and "truncated" in caplog.text and cap.meta["n_truncated"] == 1


@pytest.mark.parametrize(
    ("inputs", "kwargs", "err", "match"),
    [
        ([], {}, ValueError, "no input"),
        ([""], {}, ValueError, "empty"),
        (["x"], {"backend": "pyvene"}, ValueError, "choose one of"),
        (["x"], {"positions": "middle"}, ValueError, "unknown position rule"),
        (["x", "y"], {"positions": [(0, 1)]}, ValueError, "one per text"),
    ],
)
def test_bad_input(model, inputs, kwargs, err, match):
    with pytest.raises(err, match=match):
        capture(model, inputs, "resid_post.1", **kwargs)


def test_bad_site_lists_valid(model):
    with pytest.raises(SiteError, match="valid sites are"):
        capture(model, ["x"], "resid_post.30")


def test_store_round_trip_equals_in_memory(model, tmp_path):
    chunks = chunk_tokens(model.tokenizer, prose_corpus(), seq_len=32, n_tokens=32 * 12)
    store = capture_to_store(
        model, chunks, "resid_post.2,attn_out.2", tmp_path / "s", batch_size=4, shard_tokens=100
    )
    ref = capture(model, chunks.input_ids, "resid_post.2,attn_out.2", batch_size=4)
    assert store.n_tokens == len(ref) == 12 * 32 and store.n_shards == 3
    store.verify()
    got = store[torch.arange(len(store))]
    for s in ("resid_post.2", "attn_out.2"):
        torch.testing.assert_close(got[s], ref[s], atol=0, rtol=0)
    assert torch.equal(got["token_ids"].long(), ref.token_ids)
    assert store.manifest["fingerprints"]["corpus"] == chunks.fingerprint
    # a rerun with other sites must not touch the finished store
    with pytest.raises(StoreMismatchError, match="sites"):
        capture_to_store(model, chunks, "resid_post.3", tmp_path / "s")
    ActivationStore(tmp_path / "s").verify()
