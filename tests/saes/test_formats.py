"""SAEs on disk: steerlab and SAELens layouts round-trip per architecture; foreign options fold.

Round trips store float tensors verbatim, so outputs must be identical (torch.equal).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from steerlab import artifacts
from steerlab.saes.formats import (
    SAELENS_CFG,
    SAELENS_SPARSITY,
    SAELENS_WEIGHTS,
    load_sae,
    load_saelens,
    load_saelens_sparsity,
    save_sae,
    save_saelens,
)
from steerlab.saes.sae import Sae, SaeConfig, build_sae

ARCHS = ["topk", "relu_l1"]


def make_sae(arch: str) -> Sae:
    torch.manual_seed(0)
    cfg = SaeConfig(
        d_in=8, d_sae=24, k=3, architecture=arch, site="resid_post.5", model_id="tiny-model"
    )
    sae = build_sae(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if arch == "topk":
            sae.set_decoder_norm_to_unit_norm_()
    return sae


def assert_same_sae(a: Sae, b: Sae, x: torch.Tensor) -> None:
    assert type(a) is type(b)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, n), getattr(b, n)), n
    with torch.no_grad():
        assert torch.equal(a.reconstruct(x), b.reconstruct(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_steerlab_round_trip(tmp_path, arch):
    sae = make_sae(arch)
    path = sae.save(tmp_path / "sae")
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae.safetensors"]
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["kind"] == "sae" and cfg["architecture"] == arch
    loaded = Sae.load(path)
    assert loaded.cfg == sae.cfg
    assert_same_sae(sae, loaded, torch.randn(10, 8))
    assert_same_sae(sae, artifacts.load(path), torch.randn(4, 8))  # via the kind registry


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_round_trip(tmp_path, arch):
    sae = make_sae(arch)
    density = torch.tensor([0.0, 1.0, 0.5] + [0.01] * 21)
    path = save_saelens(sae, tmp_path / "sl", density=density, hook_name="blocks.5.hook_resid_post")
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [SAELENS_CFG, SAELENS_WEIGHTS, SAELENS_SPARSITY]
    )
    cfg = json.loads((path / SAELENS_CFG).read_text())
    assert cfg["architecture"] == {"topk": "topk", "relu_l1": "standard"}[arch]
    for key in ("d_in", "d_sae", "dtype", "device", "hook_name", "hook_layer", "model_name",
                "apply_b_dec_to_input", "normalize_activations", "metadata"):  # fmt: skip
        assert key in cfg, key
    assert (cfg["d_in"], cfg["d_sae"], cfg["hook_layer"]) == (8, 24, 5)
    assert cfg["hook_name"] == "blocks.5.hook_resid_post" and cfg["model_name"] == "tiny-model"
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert "sae_lens_version" not in cfg  # read through SAELens's pre-6 converter
    if arch == "topk":
        assert cfg["k"] == 3 and cfg["activation_fn_kwargs"] == {"k": 3}
    weights = load_file(str(path / SAELENS_WEIGHTS))
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert weights["W_enc"].shape == (8, 24) and weights["W_dec"].shape == (24, 8)
    sparsity = load_saelens_sparsity(path)
    assert sparsity is not None
    torch.testing.assert_close(sparsity, torch.log10(density.double() + 1e-10).float())
    loaded = load_saelens(path)
    assert loaded.cfg.site == "resid_post.5"  # steerlab's own config rides in metadata
    assert_same_sae(sae, loaded, torch.randn(10, 8))


def _write_saelens(path, cfg: dict, tensors: dict) -> None:
    path.mkdir()
    (path / SAELENS_CFG).write_text(json.dumps(cfg))
    save_file(tensors, str(path / SAELENS_WEIGHTS))


def _saelens_reference(cfg: dict, t: dict, x: torch.Tensor) -> torch.Tensor:
    """SAELens's TopKSAE / StandardSAE forward, written out from its source (v6)."""
    sae_in = x - t["b_dec"] * cfg["apply_b_dec_to_input"]
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "topk":
        if cfg.get("rescale_acts_by_decoder_norm"):
            pre = pre * t["W_dec"].norm(dim=-1)
        vals, idx = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        if cfg.get("rescale_acts_by_decoder_norm"):
            z = z / t["W_dec"].norm(dim=-1)
    else:
        z = pre.relu()
    return z @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize(
    ("arch", "apply_b_dec", "rescale"),
    [("topk", False, True), ("topk", True, False), ("standard", False, False)],
)
def test_load_foreign_saelens_options(tmp_path, arch, apply_b_dec, rescale):
    g = torch.Generator().manual_seed(1)
    t = {
        "W_enc": torch.randn(8, 24, generator=g, dtype=torch.float64),
        "b_enc": torch.randn(24, generator=g, dtype=torch.float64),
        "W_dec": torch.randn(24, 8, generator=g, dtype=torch.float64) * 3,  # non-unit rows
        "b_dec": torch.randn(8, generator=g, dtype=torch.float64),
    }
    cfg = {"architecture": arch, "d_in": 8, "d_sae": 24, "dtype": "float64", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none",
           "metadata": {"hook_name": "blocks.2.hook_mlp_out", "model_name": "gpt2"}}  # fmt: skip
    if arch == "topk":
        cfg |= {"k": 4, "rescale_acts_by_decoder_norm": rescale}
    _write_saelens(tmp_path / "sl", cfg, t)
    sae = load_saelens(tmp_path / "sl")
    assert sae.cfg.site == "blocks.2.hook_mlp_out" and sae.cfg.model_id == "gpt2"
    x = torch.randn(30, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        # folding b_dec into b_enc / norms into W_enc is exact in real arithmetic: round-off
        torch.testing.assert_close(
            sae.reconstruct(x), _saelens_reference(cfg, t, x), atol=1e-10, rtol=0
        )


def test_load_pre6_topk_config(tmp_path):
    t = {k: v.detach() for k, v in make_sae("topk").state_dict().items()}
    cfg = {"architecture": "standard", "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 3}, "d_in": 8, "d_sae": 24, "dtype": "float32",
           "hook_name": "blocks.5.hook_resid_post", "model_name": "m"}  # fmt: skip
    _write_saelens(tmp_path / "old", cfg, t)
    sae = load_saelens(tmp_path / "old")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 3


def test_bad_saelens_dirs(tmp_path):
    t = {k: v.detach() for k, v in make_sae("topk").state_dict().items()}
    _write_saelens(tmp_path / "abs", {"architecture": "abstopk", "d_in": 8, "d_sae": 24}, t)
    with pytest.raises(ValueError, match="architecture 'abstopk' is not supported"):
        load_saelens(tmp_path / "abs")
    cfg = {"architecture": "topk", "k": 3, "d_in": 8, "d_sae": 24,
           "normalize_activations": "bogus_norm"}  # fmt: skip
    _write_saelens(tmp_path / "norm", cfg, t)
    with pytest.raises(ValueError, match="normalize_activations"):
        load_saelens(tmp_path / "norm")
    _write_saelens(tmp_path / "nok", {"architecture": "topk", "d_in": 8, "d_sae": 24}, t)
    with pytest.raises(ValueError, match="needs 'k'"):
        load_saelens(tmp_path / "nok")
    _write_saelens(tmp_path / "shape", {"architecture": "topk", "k": 3, "d_in": 8, "d_sae": 25}, t)
    with pytest.raises(ValueError, match="shape"):
        load_saelens(tmp_path / "shape")
    with pytest.raises(FileNotFoundError, match="not a SAELens"):
        load_saelens(tmp_path)


def test_steerlab_errors(tmp_path):
    sae = make_sae("topk")
    path = save_sae(sae, tmp_path / "s")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "abstopk"}))
    with pytest.raises(ValueError, match="unknown architecture 'abstopk'"):
        load_sae(path)
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "missing")


# SAELens pins transformer-lens<4 while steerlab needs >=4.3, so these cross-checks carry the
# `peer` marker and run in a separate environment layered over steerlab's (`make test-peers`,
# which .ci/run calls); the default test command deselects them.
@pytest.mark.peer
@pytest.mark.parametrize("arch", ARCHS)
def test_loads_in_saelens_itself(tmp_path, arch):
    import sae_lens

    sae = make_sae(arch)
    path = save_saelens(sae, tmp_path / "sl")
    theirs = sae_lens.SAE.load_from_disk(str(path))
    assert theirs.cfg.architecture() == {"topk": "topk", "relu_l1": "standard"}[arch]
    x = torch.randn(10, 8)
    with torch.no_grad():
        # their dense decode vs our sparse one: float32 summation-order round-off
        torch.testing.assert_close(theirs(x), sae.reconstruct(x), atol=1e-5, rtol=1e-5)


@pytest.mark.peer
@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_reads_what_saelens_saves(tmp_path, arch):
    import sae_lens

    if arch == "topk":  # options steerlab folds into the weights
        theirs = sae_lens.TopKSAE(
            sae_lens.TopKSAEConfig(d_in=8, d_sae=24, k=3, rescale_acts_by_decoder_norm=True)
        )
    else:
        theirs = sae_lens.StandardSAE(
            sae_lens.StandardSAEConfig(d_in=8, d_sae=24, apply_b_dec_to_input=False)
        )
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.3 * torch.randn_like(p))
    theirs.save_model(str(tmp_path / "sl"))
    ours = load_saelens(tmp_path / "sl")
    x = torch.randn(10, 8)
    with torch.no_grad():
        # folded weights in float32: round-off of a few ulps on outputs of size ~1
        torch.testing.assert_close(ours.reconstruct(x), theirs(x), atol=1e-5, rtol=1e-5)
