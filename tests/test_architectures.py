"""Every architecture family steerlab maps, on tiny randomly initialised models built offline.

Each family is built from its own config class (3 blocks, d_model 64, the embedded SmolLM2
tokenizer's vocabulary; no weights, no hub) and wrapped with :func:`steerlab.models.from_hf`.
For each one, against independent references:

- the site map: every kind resolves, or is refused with a :class:`SiteError` naming the family
  (parallel attention+MLP blocks have no ``resid_mid``), by every backend and by ``steer()``;
- ``capture`` equals HF's ``output_hidden_states`` (``resid_pre.L = hidden_states[L]``,
  ``resid_post.L = hidden_states[L+1]``; the last entry is after the final norm in decoders)
  and hand-written forward hooks on the innermost modules (``o_proj``, ``down_proj``, dropout
  outputs, the gate product recomputed), and the residual identities of the block form;
- an ``AddVector`` under ``steer()`` at every site kind moves exactly the chosen positions by
  ``α v̂`` and nothing upstream or (in causal models) earlier in the sequence;
- greedy generation with and without the KV cache gives the same tokens, unsteered and steered;
- the TransformerLens bridge and nnsight give the hf backend's captures and steered logits,
  where those libraries support the family (BERT: neither does; see ``_PEER_REFUSALS``).

The coverage table in docs/architectures.md summarises these checks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import transformers as tf
from torch import Tensor

from steerlab.capture import capture
from steerlab.interventions import AddVector, apply_nnsight, last_n, steer
from steerlab.models import ModelHandle, from_hf
from steerlab.sites import (
    ARCHITECTURES,
    SITE_KINDS,
    SiteError,
    block_path,
    final_norm,
    hf_location,
    site_kinds,
    site_width,
)

N_LAYERS, D, D_MLP = 3, 64, 128
L = 1  # the middle block: sites are read and written here
TEXTS = ["The weather today is quite nice and warm.", "Once upon a time there"]
N_NEW = 6  # generated tokens per prompt


# --- the families, as read from transformers' modeling code --------------------------------


def _decoder(cfg_cls: type, **kw) -> Callable[[int, dict], tf.PretrainedConfig]:
    def make(vocab: int, ids: dict) -> tf.PretrainedConfig:
        return cfg_cls(
            vocab_size=vocab, hidden_size=D, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **ids, **kw,
        )  # fmt: skip

    return make


def _gpt2(vocab: int, ids: dict) -> tf.PretrainedConfig:
    return tf.GPT2Config(vocab_size=vocab, n_positions=128, n_embd=D, n_layer=N_LAYERS, n_head=4,
                         n_inner=D_MLP, **ids)  # fmt: skip


def _neox(parallel: bool) -> Callable[[int, dict], tf.PretrainedConfig]:
    def make(vocab: int, ids: dict) -> tf.PretrainedConfig:
        return tf.GPTNeoXConfig(
            vocab_size=vocab, hidden_size=D, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
            num_attention_heads=4, max_position_embeddings=128, use_parallel_residual=parallel,
            **ids,
        )  # fmt: skip

    return make


def _gptj(vocab: int, ids: dict) -> tf.PretrainedConfig:
    return tf.GPTJConfig(vocab_size=vocab, n_embd=D, n_layer=N_LAYERS, n_head=4, n_inner=D_MLP,
                         n_positions=128, rotary_dim=8, **ids)  # fmt: skip


def _bert(cfg_cls: type) -> Callable[[int, dict], tf.PretrainedConfig]:
    def make(vocab: int, ids: dict) -> tf.PretrainedConfig:
        return cfg_cls(
            vocab_size=vocab,
            hidden_size=D,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            intermediate_size=D_MLP,
            max_position_embeddings=160,
            pad_token_id=ids["pad_token_id"],
        )  # fmt: skip  (RoBERTa's positions start after pad_token_id: leave room for it)

    return make


class _Rec:
    """A hand-written hook: records a module's input or output (first element of a tuple)."""

    def __init__(self, module: torch.nn.Module, io: str, hooks: list) -> None:
        self.t: Tensor | None = None
        if io == "in":
            hooks.append(module.register_forward_pre_hook(self._in, with_kwargs=True))
        else:
            hooks.append(module.register_forward_hook(self._out))

    def _in(self, _m, args, kwargs) -> None:
        self.t = args[0] if args else next(iter(kwargs.values()))

    def _out(self, _m, _a, out) -> None:
        self.t = out[0] if isinstance(out, tuple) else out

    def __call__(self) -> Tensor:
        assert self.t is not None
        return self.t


# Each function hooks one block the way its modeling file computes it and returns, per kind,
# how to get the reference tensor after a forward. They use the innermost modules (projections,
# dropouts, the gate product recomputed), not the modules steerlab's site map hooks.
Hand = Callable[[torch.nn.Module, list], dict[str, Callable[[], Tensor]]]


def _hand_llama(b, hooks):  # Llama, Mistral, Qwen2/3, Gemma, SmolLM3
    o, mid = _Rec(b.self_attn.o_proj, "out", hooks), _Rec(b.post_attention_layernorm, "in", hooks)
    g, u, d = (_Rec(m, "out", hooks) for m in (b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj))
    return {"attn_out": o, "resid_mid": mid, "mlp_post": lambda: b.mlp.act_fn(g()) * u(),
            "mlp_out": d}  # fmt: skip


def _hand_phi3(b, hooks):  # fused gate_up_proj; residual adds go through resid_*_dropout
    a, mid = _Rec(b.resid_attn_dropout, "out", hooks), _Rec(b.post_attention_layernorm, "in", hooks)
    gu, m = _Rec(b.mlp.gate_up_proj, "out", hooks), _Rec(b.resid_mlp_dropout, "out", hooks)

    def post():
        gate, up = gu().chunk(2, dim=-1)
        return up * b.mlp.activation_fn(gate)

    return {"attn_out": a, "resid_mid": mid, "mlp_post": post, "mlp_out": m}


def _hand_sandwich(mid_module: str) -> Hand:  # Gemma 2/3 (pre-FF norm), OLMo 2 (none)
    def hand(b, hooks):
        o, d = _Rec(b.self_attn.o_proj, "out", hooks), _Rec(b.mlp.down_proj, "out", hooks)
        mid = _Rec(b.get_submodule(mid_module), "in", hooks)
        g, u = _Rec(b.mlp.gate_proj, "out", hooks), _Rec(b.mlp.up_proj, "out", hooks)
        # the branch outputs are normalised before the residual add: apply the norms by hand
        return {"attn_out": lambda: b.post_attention_layernorm(o()), "resid_mid": mid,
                "mlp_post": lambda: b.mlp.act_fn(g()) * u(),
                "mlp_out": lambda: b.post_feedforward_layernorm(d())}  # fmt: skip

    return hand


def _hand_gpt2(b, hooks):
    return {"attn_out": _Rec(b.attn.resid_dropout, "out", hooks),
            "resid_mid": _Rec(b.ln_2, "in", hooks), "mlp_post": _Rec(b.mlp.act, "out", hooks),
            "mlp_out": _Rec(b.mlp.dropout, "out", hooks)}  # fmt: skip


def _hand_neox(parallel: bool) -> Hand:
    def hand(b, hooks):
        out = {"attn_out": _Rec(b.post_attention_dropout, "out", hooks),
               "mlp_post": _Rec(b.mlp.act, "out", hooks),
               "mlp_out": _Rec(b.post_mlp_dropout, "out", hooks)}  # fmt: skip
        if not parallel:
            out["resid_mid"] = _Rec(b.post_attention_layernorm, "in", hooks)
        return out

    return hand


def _hand_gptj(b, hooks):
    return {"attn_out": _Rec(b.attn.resid_dropout, "out", hooks),
            "mlp_post": _Rec(b.mlp.act, "out", hooks),
            "mlp_out": _Rec(b.mlp.dropout, "out", hooks)}  # fmt: skip


def _hand_bert(b, hooks):  # post-LN: the sums happen inside *Output modules, before LayerNorm
    return {"attn_out": _Rec(b.attention.output.dropout, "out", hooks),
            "resid_mid": _Rec(b.intermediate.dense, "in", hooks),
            "mlp_post": _Rec(b.output.dense, "in", hooks),
            "mlp_out": _Rec(b.output.dropout, "out", hooks)}  # fmt: skip


SEQ, PAR, POST_LN = "sequential", "parallel", "post_ln"


@dataclass(frozen=True)
class Family:
    model_cls: type
    config: Callable[[int, dict], tf.PretrainedConfig]
    blocks: str  # full path of the block list
    norm: str | None  # full path of the final norm (hidden_states[-1] is after it)
    form: str  # SEQ | PAR | POST_LN
    hand: Hand


def _llama_like(model_cls: type, cfg_cls: type, hand: Hand = _hand_llama, **kw) -> Family:
    return Family(model_cls, _decoder(cfg_cls, **kw), "model.layers", "model.norm", SEQ, hand)


_NEOX = ("gpt_neox.layers", "gpt_neox.final_layer_norm")
_SANDWICH = _hand_sandwich("pre_feedforward_layernorm")  # Gemma 2 and 3
FAMILIES: dict[str, Family] = {
    "gpt2": Family(tf.GPT2LMHeadModel, _gpt2, "transformer.h", "transformer.ln_f", SEQ, _hand_gpt2),
    "gpt_neox": Family(tf.GPTNeoXForCausalLM, _neox(True), *_NEOX, PAR, _hand_neox(True)),
    "gpt_neox_sequential": Family(
        tf.GPTNeoXForCausalLM, _neox(False), *_NEOX, SEQ, _hand_neox(False)
    ),
    "gptj": Family(tf.GPTJForCausalLM, _gptj, "transformer.h", "transformer.ln_f", PAR, _hand_gptj),
    "llama": _llama_like(tf.LlamaForCausalLM, tf.LlamaConfig),
    "mistral": _llama_like(tf.MistralForCausalLM, tf.MistralConfig),
    "qwen2": _llama_like(tf.Qwen2ForCausalLM, tf.Qwen2Config),
    "qwen3": _llama_like(tf.Qwen3ForCausalLM, tf.Qwen3Config, head_dim=16),
    "gemma": _llama_like(tf.GemmaForCausalLM, tf.GemmaConfig, head_dim=16),
    "gemma2": _llama_like(tf.Gemma2ForCausalLM, tf.Gemma2Config, _SANDWICH, head_dim=16),
    "gemma3_text": _llama_like(tf.Gemma3ForCausalLM, tf.Gemma3TextConfig, _SANDWICH, head_dim=16),
    "phi3": _llama_like(tf.Phi3ForCausalLM, tf.Phi3Config, _hand_phi3),
    "olmo2": _llama_like(tf.Olmo2ForCausalLM, tf.Olmo2Config, _hand_sandwich("mlp.gate_proj")),
    "smollm3": _llama_like(tf.SmolLM3ForCausalLM, tf.SmolLM3Config),
    "bert": Family(tf.BertModel, _bert(tf.BertConfig), "encoder.layer", None, POST_LN, _hand_bert),
    "roberta": Family(
        tf.RobertaModel, _bert(tf.RobertaConfig), "encoder.layer", None, POST_LN, _hand_bert
    ),
}
CAUSAL = [f for f in FAMILIES if FAMILIES[f].form != POST_LN]

# A peer library's missing support, with the reason (the only allowed skips in this file).
_PEER_REFUSALS = {
    "transformer_lens": {
        "bert": "TransformerLens 4.3's BERT adapter wraps BertForMaskedLM (it reads model.bert); "
        "steerlab holds the bare encoder (BertModel), which the bridge cannot boot",
        "roberta": "TransformerLens 4.3's RoBERTa adapter wraps RobertaForMaskedLM; steerlab "
        "holds the bare encoder (RobertaModel)",
    },
    "nnsight": {
        "bert": "nnsight 0.8's LanguageModel builds a text-generation pipeline around the model, "
        "which fails for an encoder (BertModel)",
        "roberta": "nnsight 0.8's LanguageModel builds a text-generation pipeline around the "
        "model, which fails for an encoder (RobertaModel)",
    },
}


def test_every_mapped_architecture_is_tested():
    mapped = {f if f != "gpt_neox_sequential" else "gpt_neox" for f in FAMILIES}
    assert mapped == set(ARCHITECTURES)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: every op is too small to split, and two intra-op threads only
    spin-wait on a loaded 2-core machine (generation measured tens of times slower that way)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tok(model):
    return copy.deepcopy(model.tokenizer)


@pytest.fixture(scope="module")
def handles(tok, tmp_path_factory):
    """family -> handle, built on first use. Each model is also saved (config + safetensors),
    as a loaded model would be, so the TransformerLens bridge can load its own copy."""
    cache: dict[str, ModelHandle] = {}
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id}  # fmt: skip

    def get(name: str) -> ModelHandle:
        if name not in cache:
            fam = FAMILIES[name]
            torch.manual_seed(0)
            m = fam.model_cls(fam.config(len(tok), ids))
            path = tmp_path_factory.mktemp(name)
            m.save_pretrained(path)
            h = from_hf(m, copy.deepcopy(tok), f"tiny-{name}")
            h.source = str(path)
            cache[name] = h
        return cache[name]

    return get


def _batch(h: ModelHandle, side: str = "right") -> tuple[Tensor, Tensor]:
    seqs = [h.tokenizer(t, add_special_tokens=False).input_ids for t in TEXTS]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), h.tokenizer.pad_token_id)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[b, sl], am[b, sl] = torch.tensor(s), 1
    return ids, am


def _forward(h: ModelHandle, ids: Tensor, am: Tensor, **kw):
    if h.is_causal:
        kw["use_cache"] = False
    with torch.inference_mode():
        return h.model(input_ids=ids, attention_mask=am, **kw)


def _close(got: Tensor, ref: Tensor, rel: float, what: str) -> None:
    """``max |got - ref| <= rel * max |ref|`` (float32 round-off scales with the values)."""
    err, scale = float((got - ref).abs().max()), float(ref.abs().max())
    assert err <= rel * scale + 1e-12, f"{what}: max abs error {err:.3g} > {rel:g} * {scale:.3g}"


def _sites(h: ModelHandle, layer: int = L) -> list[str]:
    return [f"{k}.{layer}" for k in site_kinds(h)]


# --- the site map --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_site_map_and_refusals(handles, name):
    h, fam = handles(name), FAMILIES[name]
    assert block_path(h) == fam.blocks
    norm = final_norm(h)
    assert norm is (None if fam.norm is None else h.model.get_submodule(fam.norm))
    expected = [k for k in SITE_KINDS if k != "resid_mid" or fam.form != PAR]
    assert list(site_kinds(h)) == expected
    for kind in SITE_KINDS:
        if kind in expected:
            assert hf_location(h, f"{kind}.{L}").path.startswith(f"{fam.blocks}.{L}")
            assert site_width(h, f"{kind}.{L}") == (D_MLP if kind == "mlp_post" else D)
            continue
        # parallel blocks: a clear refusal naming the family, from every entry point
        family = ARCHITECTURES[h.architecture].name
        msg = rf"resid_mid\.{L}.*{family}.*parallel.*use resid_pre"
        with pytest.raises(SiteError, match=msg):
            hf_location(h, f"{kind}.{L}")
        for backend in ("hf", "transformer_lens", "nnsight"):
            with pytest.raises(SiteError, match=msg):
                capture(h, TEXTS, f"{kind}.{L}", backend=backend)
        with pytest.raises(SiteError, match=msg):
            steer(h, AddVector(torch.ones(D), 1.0, f"{kind}.{L}"))


# --- capture against HF ------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_capture_matches_hidden_states_and_hand_hooks(handles, name):
    h, fam = handles(name), FAMILIES[name]
    ids, am = _batch(h)
    sites = [s for layer in range(N_LAYERS) for s in _sites(h, layer)]
    cap = capture(h, ids, sites, attention_mask=am)
    real = am.bool()
    hooks: list = []
    try:
        ref = fam.hand(h.model.get_submodule(f"{fam.blocks}.{L}"), hooks)
        out = _forward(h, ids, am, output_hidden_states=True)
    finally:
        for hk in hooks:
            hk.remove()
    hs = out.hidden_states
    # The same float32 ops on the same padded batch as HF's own forward: agreement to a few
    # ulps (1e-6 relative); a wrong tensor (a missing norm, residual or branch) is off by O(1).
    rel = 1e-6
    for layer in range(N_LAYERS):
        _close(cap[f"resid_pre.{layer}"], hs[layer][real], rel, f"resid_pre.{layer}")
        last = layer == N_LAYERS - 1
        post = cap[f"resid_post.{layer}"]
        if last and fam.norm is not None:  # decoders return the last state after the final norm
            with torch.inference_mode():
                post = h.model.get_submodule(fam.norm)(post)
        _close(post, hs[layer + 1][real], rel, f"resid_post.{layer}")
    for kind, get in ref.items():
        with torch.inference_mode():
            want = get()[real]
        _close(cap[f"{kind}.{L}"], want, rel, f"{kind}.{L} vs the hand-written hook")
    _check_block(h, fam, {k: cap[f"{k}.{L}"] for k in site_kinds(h)}, "unsteered")


def _check_block(
    h: ModelHandle, fam: Family, a: dict[str, Tensor], what: str, added: dict | None = None
) -> None:
    """The block form's identities between the captured sites of block L.

    ``added``: kind -> what a steering write added to that kind *after* the sum that makes it
    (a resid_post write, or BERT's resid_mid), subtracted where that kind is the sum's result.
    """
    added = added or {}

    def result(kind: str) -> Tensor:
        return a[kind] - added[kind] if kind in added else a[kind]

    # one float32 addition (or two, reassociated, in parallel blocks) of the same tensors the
    # block adds: a few ulps, 1e-6 relative
    if fam.form == SEQ:
        _close(a["resid_pre"] + a["attn_out"], result("resid_mid"), 1e-6, f"{what}: pre + attn")
        _close(a["resid_mid"] + a["mlp_out"], result("resid_post"), 1e-6, f"{what}: mid + mlp")
    elif fam.form == PAR:
        got = a["resid_pre"] + a["attn_out"] + a["mlp_out"]
        _close(got, result("resid_post"), 1e-6, f"{what}: pre + attn_out + mlp_out")
    else:  # post-LN: resid_mid = LN(resid_pre + attn_out), resid_post = LN(resid_mid + mlp_out)
        blk = h.model.get_submodule(f"{fam.blocks}.{L}")
        with torch.inference_mode():
            mid = blk.attention.output.LayerNorm(a["resid_pre"] + a["attn_out"])
            post = blk.output.LayerNorm(a["resid_mid"] + a["mlp_out"])
        # LayerNorm divides by each row's std: its relative round-off is ~1e-6, so 1e-5
        _close(mid, result("resid_mid"), 1e-5, f"{what}: LN(pre + attn_out)")
        _close(post, result("resid_post"), 1e-5, f"{what}: LN(mid + mlp_out)")


# --- steering ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_add_vector_moves_exactly_the_chosen_positions(handles, name):
    h, fam = handles(name), FAMILIES[name]
    ids, am = _batch(h)
    real = am.bool()
    n = am.sum(1)
    edited = torch.zeros_like(real)
    for b in range(len(n)):
        edited[b, n[b] - 2 : n[b]] = True  # last_n(2): the last two real tokens of each row
    first = [int(row.nonzero()[0]) for row in edited]
    alpha = 4.0
    h0 = _forward(h, ids, am, output_hidden_states=True).hidden_states
    sites = _sites(h)
    base = capture(h, ids, sites, attention_mask=am).acts
    rows = edited[real]
    # Unmoved tensors come from the same ops on the same inputs and are bitwise equal in
    # practice; 1e-6 relative tolerates a kernel that reassociates, while a leak of the
    # O(alpha) edit would be orders of magnitude larger.
    unmoved = 1e-6
    for site in sites:
        g = torch.Generator().manual_seed(1)
        v = torch.randn(site_width(h, site), generator=g)
        iv = AddVector(v, alpha, site, positions=last_n(2))
        with steer(h, iv):
            got = capture(h, ids, sites, attention_mask=am).acts
            h1 = _forward(h, ids, am, output_hidden_states=True).hidden_states
        # the edit itself: + alpha v/|v| at the chosen rows, to the round-off of adding O(alpha)
        # values (a resid_mid write goes through attn_out: resid_pre + (attn_out + delta))
        delta = alpha * v / v.norm()
        _close(got[site][rows], base[site][rows] + delta, 1e-6, f"{site}: edited rows")
        _close(got[site][~rows], base[site][~rows], unmoved, f"{site}: other rows moved")
        # the edit is in the residual stream, not in a side copy: the block's identities hold
        # between the steered tensors (a resid_post write, and BERT's resid_mid one, come
        # after the sum that makes that tensor)
        kind = site.split(".")[0]
        after_sum = kind == "resid_post" or (kind == "resid_mid" and fam.form == POST_LN)
        added = {kind: delta * rows[:, None]} if after_sum else {}
        _check_block(h, fam, {k: got[f"{k}.{L}"] for k in site_kinds(h)}, site, added)
        for layer in range(L + 1):  # blocks before L and the input of L: untouched
            _close(h1[layer], h0[layer], unmoved, f"{site}: hidden_states[{layer}]")
        final = h1[-1][edited] - h0[-1][edited]
        assert float(final.abs().max()) > 1e-3, f"{site}: the edit did not reach the output"
        if h.is_causal:  # later blocks: tokens before the first edited one cannot see it
            for layer in range(L + 1, N_LAYERS + 1):
                for b, f in enumerate(first):
                    _close(h1[layer][b, :f], h0[layer][b, :f], unmoved, f"{site}: earlier tokens")


def _generate(h: ModelHandle, ids: Tensor, am: Tensor, use_cache: bool) -> Tensor:
    with torch.inference_mode():
        out = h.model.generate(
            input_ids=ids, attention_mask=am, max_new_tokens=N_NEW, min_new_tokens=N_NEW,
            do_sample=False, use_cache=use_cache, pad_token_id=h.tokenizer.pad_token_id,
        )  # fmt: skip
    return out[:, ids.shape[1] :]


def _steering(h: ModelHandle) -> list[AddVector]:
    g = torch.Generator().manual_seed(2)
    mid = "resid_mid" if "resid_mid" in site_kinds(h) else "attn_out"
    return [
        AddVector(torch.randn(D, generator=g), 8.0, f"resid_post.{L}", positions="all"),
        AddVector(torch.randn(D, generator=g), 8.0, f"{mid}.{L + 1}", positions="generation"),
        AddVector(torch.randn(D_MLP, generator=g), 8.0, "mlp_post.0", positions="prompt"),
    ]


@pytest.mark.parametrize("name", CAUSAL)
def test_greedy_generation_same_with_and_without_kv_cache(handles, name):
    h = handles(name)
    ids, am = _batch(h, "left")
    plain = _generate(h, ids, am, use_cache=True)
    assert torch.equal(_generate(h, ids, am, use_cache=False), plain)
    with steer(h, _steering(h)):
        steered = _generate(h, ids, am, use_cache=True)
        assert torch.equal(_generate(h, ids, am, use_cache=False), steered)
    assert not torch.equal(steered, plain), "the steering changed no token: the check is vacuous"


# --- peer libraries ------------------------------------------------------------------------


def _peer(name: str, library: str) -> None:
    reason = _PEER_REFUSALS[library].get(name)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_peer_backends_match_hf(handles, name, backend):
    h = handles(name)
    _peer(name, backend)
    ids, am = _batch(h)
    sites = _sites(h, 0) + _sites(h)
    ref = capture(h, ids, sites, attention_mask=am)
    got = capture(h, ids, sites, attention_mask=am, backend=backend)
    assert torch.equal(got.token_ids, ref.token_ids) and torch.equal(got.doc_ids, ref.doc_ids)
    # TL's bridge runs eager attention where HF runs SDPA, and nnsight batches its inputs its
    # own way: float32 reassociation, ~1e-7 relative on these O(1) activations; 1e-5 bounds it
    for s in ref.sites:
        _close(got[s], ref[s], 1e-5, f"{backend} {s}")
    ivs = _steering(h)[:1] + _steering(h)[2:]  # the prompt-side edits: one forward, no generate
    with steer(h, ivs):
        hf = _forward(h, ids, am).logits
    real = am.bool()
    with torch.inference_mode():
        if backend == "transformer_lens":
            bridge = h.transformer_lens()
            with steer(h, ivs, backend="transformer_lens"):
                out = bridge(ids, attention_mask=am)
            plain = bridge(ids, attention_mask=am)
        else:
            lm = h.nnsight()
            with lm.trace({"input_ids": ids, "attention_mask": am}):
                apply_nnsight(lm, h, ivs)
                saved = lm.output.save()
            out = saved.logits if hasattr(saved, "logits") else saved["logits"]
            plain = _forward(h, ids, am).logits
    _close(out[real], hf[real], 1e-5, f"{backend} steered logits")
    assert float((out[real] - plain[real]).abs().max()) > 1e-3, "steering did nothing"
