import pytest

from steerlab.sites import (
    SITE_KINDS,
    SiteError,
    all_sites,
    hf_location,
    parse_site,
    parse_sites,
    site_width,
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
