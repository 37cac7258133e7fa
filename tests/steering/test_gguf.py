"""llama.cpp control-vector GGUF: exact round trip, the file layout llama.cpp reads, foreign
(repeng-style) files, and clear errors for files of other models."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from steerlab.steering.gguf import export_gguf, import_gguf, read_gguf
from steerlab.steering.vectors import SteeringVector, VectorFitter

gguf = pytest.importorskip("gguf")


def _handle(d=32, n_layers=6, model_type="llama", model_id="test-model"):
    """What import_gguf looks at on a ModelHandle, without loading a model."""
    cfg = SimpleNamespace(model_type=model_type)
    return SimpleNamespace(model=SimpleNamespace(config=cfg), d_model=d, n_layers=n_layers,
                           model_id=model_id)  # fmt: skip


def _vector(layers=("resid_post.1", "resid_post.3", "resid_post.5"), d=32) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(20, len(layers), d, generator=g)
    neg = torch.randn(20, len(layers), d, generator=g)
    return VectorFitter(list(layers), d).update(pos + 0.5, neg).vector(
        "generation", "test-model", {"add_bos": False, "padding_side": "right"}, "f00d",
        {"model_type": "llama", "chat": True},
    )  # fmt: skip


def test_round_trip_is_identical(tmp_path):
    sv = _vector()
    path = export_gguf(sv, tmp_path / "v.gguf")
    back = import_gguf(path, _handle())
    assert torch.equal(back.directions, sv.directions)  # bit-for-bit float32
    assert torch.equal(back.norms, sv.norms)
    assert back.to_config() == sv.to_config()
    assert back.positions == sv.positions and back.layers == sv.layers
    assert torch.equal(import_gguf(path).directions, sv.directions)  # without a model too


def test_file_layout_is_what_llama_cpp_reads(tmp_path):
    sv = _vector()
    path = export_gguf(sv, tmp_path / "v.gguf")
    r = gguf.GGUFReader(path)
    assert r.get_field("general.architecture").contents() == "controlvector"
    assert r.get_field("controlvector.model_hint").contents() == "llama"
    assert r.get_field("controlvector.layer_count").contents() == 3
    names = [t.name for t in r.tensors]
    # llama.cpp: direction.N is added to the output of block N (steerlab resid_post.N)
    assert names == ["direction.1", "direction.3", "direction.5"]
    for t, row in zip(r.tensors, sv.directions):
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(t.data), row.numpy())
    # nothing but direction.N tensors: llama.cpp rejects a file with any other tensor
    assert all(n.startswith("direction.") for n in names)


def test_baked_strength_matches_intervention(tmp_path):
    """With alpha, llama.cpp at strength 1 adds what vector.intervention(N, alpha) adds."""
    sv = _vector()
    f = read_gguf(export_gguf(sv, tmp_path / "v.gguf", alpha=0.25))
    for layer in sv.layers:
        added = sv.intervention(layer, 0.25).effective()
        # one float32 rounding of α·s·v̂ on each side
        torch.testing.assert_close(f.directions[layer], added, rtol=1e-6, atol=1e-6)
    back = import_gguf(tmp_path / "v.gguf")
    assert back.meta["gguf_alpha"] == 0.25  # exact: a stored value read back (0.25 = 2⁻²)


def _write_foreign(path, hint="llama", tensors=None, arch="controlvector", extra=None):
    """A file as repeng's ControlVector.export_gguf writes it."""
    w = gguf.GGUFWriter(str(path), arch)
    if hint is not None:
        w.add_string("controlvector.model_hint", hint)
    tensors = (
        tensors
        if tensors is not None
        else {f"direction.{i}": np.full(32, i, np.float32) for i in (5, 4, 3, 2, 1)}
    )
    w.add_uint32("controlvector.layer_count", len(tensors))
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_import_foreign_file(tmp_path):
    sv = import_gguf(_write_foreign(tmp_path / "repeng.gguf"), _handle())
    assert sv.layers == (1, 2, 3, 4, 5) and sv.method == "gguf" and sv.norms is None
    assert sv.site_kind == "resid_post" and sv.model_id == "test-model"
    assert torch.equal(sv.directions[2], torch.full((32,), 3.0))
    assert str(sv.positions) == "both:all"  # llama.cpp adds at every token
    with pytest.raises(ValueError, match="no recorded activation norms"):
        sv.intervention(3, 1.0)
    assert sv.intervention(3, 1.0, relative=False).site == "resid_post.3"


@pytest.mark.parametrize(
    ("handle", "match"),
    [
        (_handle(d=64), "width 32, but test-model has d_model 64"),
        (_handle(model_type="gpt2"), "model type 'llama', but test-model is 'gpt2'"),
        (_handle(n_layers=4), "steers layer 5, but test-model has only 4 layers"),
        (_handle(model_id="other-model"), "fitted on 'test-model', not 'other-model'"),
    ],
)
def test_import_rejects_other_models(tmp_path, handle, match):
    path = export_gguf(_vector(), tmp_path / "v.gguf")
    with pytest.raises(ValueError, match=match):
        import_gguf(path, handle)


def test_export_rejects_what_llama_cpp_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="cannot steer block 0"):
        export_gguf(_vector(("resid_post.0", "resid_post.2")), tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="resid_post"):
        export_gguf(_vector(("mlp_out.2",)), tmp_path / "b.gguf")
    nohint = SteeringVector.from_direction(torch.randn(32), "resid_post.2")
    with pytest.raises(ValueError, match="no model hint"):
        export_gguf(nohint, tmp_path / "c.gguf")
    export_gguf(nohint, tmp_path / "c.gguf", model_hint="llama")  # explicit hint works
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "llama"}, "not a control vector"),
        ({"hint": None}, "missing controlvector.model_hint"),
        ({"tensors": {"direction.0": np.ones(32, np.float32)}}, "direction.0 is invalid"),
        ({"tensors": {"direction.x": np.ones(32, np.float32)}}, "not direction.<layer>"),
        ({"tensors": {"direction.1": np.ones(32, np.float16)}}, "needs F32"),
        ({"tensors": {"direction.1": np.ones(32, np.float32),
                      "direction.2": np.ones(16, np.float32)}}, "different widths"),
        ({"tensors": {}}, "no direction tensors"),
    ],
)  # fmt: skip
def test_read_rejects_invalid_files(tmp_path, kwargs, match):
    path = _write_foreign(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(ValueError, match=match):
        read_gguf(path)


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_gguf(p)


def test_real_model_import_checks(model, tmp_path):
    """The embedded SmolLM2 (llama, 30 layers, d 576) accepts its own export only."""
    sv = SteeringVector.from_direction(torch.randn(576), ["resid_post.3", "resid_post.29"],
                                       norms=[10.0, 20.0], model_id=model.model_id,
                                       meta={"model_type": "llama"})  # fmt: skip
    back = import_gguf(export_gguf(sv, tmp_path / "v.gguf"), model)
    assert torch.equal(back.directions, sv.directions)
    back.check(model)
    wide = _write_foreign(tmp_path / "w.gguf", tensors={"direction.3": np.ones(4096, np.float32)})
    with pytest.raises(ValueError, match="width 4096"):
        import_gguf(wide, model)
