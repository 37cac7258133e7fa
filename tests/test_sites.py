import copy

import pytest

from steerlab.sites import (
    ARCHITECTURES,
    SITE_KINDS,
    SiteError,
    all_sites,
    check_site,
    final_norm,
    hf_location,
    layout_of,
    parse_site,
    parse_sites,
    resid_mid_is_written_via_attn_out,
    site_kinds,
    site_width,
    supported_architectures,
)


def test_parse_and_names():
    s = parse_site("resid_post.6", n_layers=30)
    assert (s.kind, s.layer, s.name) == ("resid_post", 6, "resid_post.6")
    assert s.tl_name() == "blocks.6.hook_resid_post"
    assert parse_site("mlp_post.-1", n_layers=30).name == "mlp_post.29"
    assert parse_site("mlp_post.2").tl_name() == "blocks.2.mlp.hook_post"


def test_execution_order_and_dedup():
    sites = parse_sites("resid_post.3,resid_pre.3,attn_out.3,mlp_out.2,resid_pre.3")
    assert [s.name for s in sites] == ["mlp_out.2", "resid_pre.3", "attn_out.3", "resid_post.3"]
    assert len(all_sites(2)) == 2 * len(SITE_KINDS)


@pytest.mark.parametrize("bad", ["resid.6", "resid_post", "resid_post.x", "foo.1", ""])
def test_unknown_site_lists_valid_ones(bad):
    with pytest.raises(SiteError, match="valid sites are"):
        parse_sites(bad, n_layers=30)


def test_layer_out_of_range():
    with pytest.raises(SiteError, match=r"out of range.*30 layers.*0\.\.29"):
        parse_site("resid_post.30", n_layers=30)


def test_hf_locations_on_llama(model):
    assert hf_location(model, "resid_post.6").path == "model.layers.6"
    loc = hf_location(model, "mlp_post.6")
    assert (loc.path, loc.io) == ("model.layers.6.mlp.down_proj", "input")
    assert site_width(model, "mlp_post.6") == 1536
    assert site_width(model, "attn_out.6") == 576
    with pytest.raises(SiteError, match="valid sites"):
        hf_location(model, "resid_post.99")


def test_hf_locations_on_gpt2_and_bert(tiny_models):
    assert hf_location(tiny_models["gpt2"], "attn_out.1").path == "transformer.h.1.attn"
    assert hf_location(tiny_models["bert"], "mlp_post.0").path == "encoder.layer.0.intermediate"


def test_site_kinds_norms_and_resid_mid_writes(tiny_models):
    gpt2, bert = tiny_models["gpt2"], tiny_models["bert"]
    assert site_kinds(gpt2) == SITE_KINDS and site_kinds(bert) == SITE_KINDS
    assert final_norm(gpt2) is gpt2.model.transformer.ln_f
    assert final_norm(bert) is None  # post-LN: no norm after the last block
    # pre-LN GPT-2 reads resid_mid at ln_2's input, which feeds only the MLP: writes go through
    # attn_out; BERT's attention output is the residual itself
    assert resid_mid_is_written_via_attn_out(gpt2)
    assert not resid_mid_is_written_via_attn_out(bert)
    assert check_site(gpt2, "resid_mid.-1").name == "resid_mid.2"


def test_gpt_neox_layout_follows_use_parallel_residual():
    from transformers import GPTNeoXConfig

    parallel = layout_of("gpt_neox", GPTNeoXConfig(use_parallel_residual=True))
    sequential = layout_of("gpt_neox", GPTNeoXConfig(use_parallel_residual=False))
    assert (parallel.residual, "resid_mid" in parallel.sites) == ("parallel", False)
    assert sequential.sites["resid_mid"].path == "post_attention_layernorm"
    assert "parallel" in parallel.missing_reason("resid_mid")


def test_every_layout_maps_every_kind_or_is_parallel():
    for name, lay in ARCHITECTURES.items():
        missing = set(SITE_KINDS) - set(lay.sites)
        assert missing == ({"resid_mid"} if lay.residual == "parallel" else set()), name
    assert supported_architectures() == sorted(ARCHITECTURES)


def test_unsupported_architecture_lists_the_supported_ones(model):
    from transformers import OPTConfig, OPTForCausalLM

    from steerlab.capture import capture
    from steerlab.models import from_hf

    opt = OPTForCausalLM(OPTConfig(vocab_size=len(model.tokenizer), hidden_size=16, ffn_dim=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   word_embed_proj_dim=16, max_position_embeddings=32))  # fmt: skip
    h = from_hf(opt, copy.deepcopy(model.tokenizer), "tiny-opt")
    assert (h.architecture, h.is_causal) == ("opt", True)  # loads: it can still generate
    msg = r"no site map for architecture 'opt'.*supported: \[.*'gemma2'.*'gptj'.*'olmo2'"
    with pytest.raises(SiteError, match=msg):
        capture(h, "hello there", "resid_post.0")
    with pytest.raises(SiteError, match=msg):
        hf_location(h, "resid_pre.0")


def test_missing_site_error_names_family_and_alternatives(tiny_models):
    h = copy.copy(tiny_models["gpt2"])  # a GPT-J-shaped handle is not needed: the layout decides
    h.architecture = "gptj"
    with pytest.raises(SiteError, match=r"'resid_mid\.1' does not exist in tiny-gpt2 \(GPT-J"):
        check_site(h, "resid_mid.1")
    with pytest.raises(SiteError, match="use resid_pre"):
        site_width(h, "resid_mid.1")
