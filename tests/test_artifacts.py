"""The artifact mechanism: the lazy kind table, the cfg.json header, the shared base.

Every kind steerlab saves is built small, saved, and loaded back in a *fresh* Python process
through ``steerlab.artifacts.load`` alone (tests/artifact_probe.py), which must import the
kind's module itself; the state and outputs there are compared with the original here.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import steerlab
import steerlab.artifacts as artifacts
from steerlab.artifacts import (
    CFG_NAME,
    FORMAT_VERSION,
    HEADER,
    KIND_TABLE,
    FrozenArtifact,
    check_header,
    kind_class,
    read_cfg,
    register,
    save_artifact,
)
from steerlab.erasure.inlp import InlpEraser
from steerlab.erasure.leace import AffineEraser, LeaceEraser
from steerlab.erasure.rlace import RlaceEraser
from steerlab.erasure.scrub import EraserEdit
from steerlab.interventions import (
    Ablate,
    AddVector,
    Affine,
    Compose,
    LoReFT,
    LowRankEdit,
    MLPGate,
    Positions,
    SetCoords,
    scored,
)
from steerlab.probes.ast.features import LeafFeatures
from steerlab.probes.ast.probe import AstProbe
from steerlab.probes.linear import LinearProbe, fit_logistic
from steerlab.probes.pls import PLSConfig, fit_pls
from steerlab.saes.formats import save_saelens
from steerlab.saes.sae import Sae, SaeConfig, build_sae
from steerlab.saes.splice import Replace, SaeSplice
from steerlab.steering.msrs import MSRS
from steerlab.steering.vectors import SteeringVector
from steerlab.subspace import Subspace

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("artifact_probe.py")
D = 16
SITE = "resid_post.1"
META = {"site": SITE, "model_id": "test-model", "tokenizer_hash": "0123456789abcdef"}


def _probe_module():
    spec = importlib.util.spec_from_file_location("artifact_probe", PROBE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


probe = _probe_module()


def _orthonormal(g: torch.Generator, r: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(D, r, generator=g, dtype=torch.float64))[0].float()


def _build(kind: str):
    """A small instance of every kind, with what its header should say: (obj, header)."""
    g = torch.Generator().manual_seed(sum(map(ord, kind)))
    x = torch.randn(64, D, generator=g)
    labels = torch.arange(64) % 2
    sub = Subspace.from_vectors(torch.randn(3, D, generator=g), torch.randn(D, generator=g))
    v = torch.randn(D, generator=g)
    site_only = {"site": SITE, "model_id": None, "tokenizer_hash": None}
    if kind == "subspace":
        s = Subspace.from_vectors(torch.randn(3, D, generator=g), torch.randn(D, generator=g),
                                  meta=dict(META))  # fmt: skip
        return s, META
    if kind == "leace":
        return LeaceEraser.fit(x, labels), {"site": None, "model_id": None, "tokenizer_hash": None}
    if kind == "rlace":
        U = _orthonormal(g, 2)
        return RlaceEraser(U, U.T, x.mean(0), {"method": "rlace", **META}), META
    if kind == "inlp":  # linear: no bias tensor at all
        U = _orthonormal(g, 1)
        meta = {"history": [{"iter": 0, "rank": 0, "dev_accuracy": 0.9}]}
        return InlpEraser(U, U.T.contiguous(), None, meta), dict.fromkeys(site_only)
    if kind == "pls":
        y = x[:, 0] * 3 + x[:, 1] + 0.1 * torch.randn(64, generator=g)
        res = fit_pls(x, y, PLSConfig(n_components=2), meta=dict(META))
        return res.probe, META
    if kind == "linear_probe":
        p = fit_logistic(x, labels)
        return LinearProbe(p.weight, p.bias, p.mean, {**p.meta, **META}), META
    if kind == "ast_probe":
        r = 3
        probe_ = AstProbe(
            _orthonormal(g, r), torch.randn(r, 2, generator=g), torch.randn(r, 3, generator=g),
            torch.randn(D, generator=g), torch.rand(D, generator=g) + 0.5, ("a", "b"),
            ("x", "y", "z"), dict(META),
        )  # fmt: skip
        return probe_, META
    if kind == "ast_features":
        acts = {"resid_pre.0": torch.randn(7, D, generator=g).half(),
                "resid_post.0": torch.randn(7, D, generator=g).half()}  # fmt: skip
        meta = {"model_id": "test-model", "tokenizer": "fedcba9876543210", "n_leaves": 7}
        header = {"site": "resid_pre.0,resid_post.0", "model_id": "test-model",
                  "tokenizer_hash": "fedcba9876543210"}  # fmt: skip
        return LeafFeatures(acts, torch.tensor([0, 3, 3, 7]), meta), header
    if kind == "steering_vector":
        sites = "resid_post.1,resid_post.3"
        sv = SteeringVector.from_direction(torch.randn(2, D, generator=g), sites,
                                           norms=[2.0, 3.0], positions="prompt:last_2",
                                           model_id="test-model", meta={"chat": False})  # fmt: skip
        return sv, {"site": sites, "model_id": "test-model",
                    "tokenizer_hash": None}  # fmt: skip
    if kind == "sae":
        cfg = SaeConfig(d_in=D, d_sae=32, k=4, site=SITE, model_id="test-model")
        return build_sae(cfg), {"site": SITE, "model_id": "test-model", "tokenizer_hash": None}
    ivs = {
        "add_vector": lambda: AddVector(v, 2.5, SITE, "prompt:last_2", relative_to=3.0),
        "ablate": lambda: Ablate(sub, "mean", site=SITE, positions=scored(sub, n=2)),
        "set_coords": lambda: SetCoords(sub, [1.0, -2.0, 0.5], SITE, "last"),
        "loreft": lambda: LoReFT(
            D, 4, SITE, Positions("prompt", "indices", indices=((0, 1), (2,)))
        ),
        "low_rank_edit": lambda: LowRankEdit(
            sub, Affine(D, 3), MLPGate(D, 4, [2, 1]), site=SITE, positions="generation:first_2"
        ),  # fmt: skip
        "compose": lambda: Compose(
            [
                AddVector(v, 1.0, "resid_post.2"),
                EraserEdit(LeaceEraser.fit(x, labels), SITE, "last"),
            ]
        ),  # fmt: skip
        "eraser_edit": lambda: EraserEdit(LeaceEraser.fit(x, labels), SITE, "last"),
        "replace": lambda: Replace(torch.randn(D, generator=g), SITE, "prompt:last_2"),
        "sae_splice": lambda: SaeSplice(build_sae(SaeConfig(d_in=D, d_sae=32, k=4, site=SITE))),
        # synthetic activations have no chat template: the paper's rule over all prompt tokens
        "msrs": lambda: MSRS(D, [1, 2, 1], ["x", "y"], SITE, hidden=4, token_rule="paper"),
    }
    iv = ivs[kind]()
    iv.meta = {"model_id": "test-model", "tokenizer_hash": "0123456789abcdef"}
    site = "resid_post.2,resid_post.1" if kind == "compose" else SITE
    return iv, {"site": site, "model_id": "test-model", "tokenizer_hash": "0123456789abcdef"}


# --- the kind table -------------------------------------------------------------------------------


def _all_steerlab_modules() -> list[str]:
    names = ["steerlab"]
    for info in pkgutil.walk_packages(steerlab.__path__, "steerlab."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # would run the CLI
            names.append(info.name)
    return names


def test_the_lazy_table_covers_every_registered_class():
    # import every module of the package: each @register / @register_intervention runs once
    for name in _all_steerlab_modules():
        importlib.import_module(name)
    registered = {
        kind: f"{cls.__module__}:{cls.__qualname__}"
        for kind, cls in artifacts._REGISTRY.items()
        if cls.__module__.startswith("steerlab.")
    }
    missing = {k: v for k, v in registered.items() if KIND_TABLE.get(k) != v}
    assert not missing, f"add these to steerlab.artifacts.KIND_TABLE: {missing}"
    # and no stale entry: every table entry is a class that registers that kind
    assert set(KIND_TABLE) == set(registered)


def test_every_kind_has_a_round_trip_case():
    # the parametrisation below is over the table; this catches a kind added without a builder
    for kind in KIND_TABLE:
        obj, _ = _build(kind)
        loader = kind_class(kind)
        assert isinstance(obj, Sae) if kind == "sae" else type(obj) is loader


@pytest.mark.parametrize("kind", sorted(KIND_TABLE))
def test_round_trip_in_a_fresh_process(kind, tmp_path):
    obj, header = _build(kind)
    obj.save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / CFG_NAME).read_text())
    # the header: every field, the width under the one name d_in
    assert {k: cfg[k] for k in ("site", "model_id", "tokenizer_hash")} == header
    assert cfg["kind"] == kind and cfg["format_version"] == FORMAT_VERSION
    assert cfg["d_in"] == D and "d_model" not in cfg
    assert cfg["steerlab_version"] == steerlab.__version__
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(7))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(PROBE), str(tmp_path / "a"), str(tmp_path / "x.safetensors"),
         str(tmp_path / "out"), str(torch.get_num_threads())],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    cls = type(obj)
    assert info["class"] == f"{cls.__module__}:{cls.__qualname__}"
    assert not info["imported_before"]  # the table imported the kind's module, on demand
    assert info["meta"] == json.loads(json.dumps(getattr(obj, "meta", None)))
    # exact: safetensors stores the raw bytes of each tensor, so what is read back is the tensor
    back = load_file(str(tmp_path / "out" / "state.safetensors"))
    mine = probe.state(obj)
    assert set(back) == set(mine)
    for k, t in mine.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t.detach()), k
    # outputs: bit-identical weights and inputs, the same thread count, but another process: a
    # BLAS kernel may still pick another summation order (e.g. by memory alignment), so allow
    # a few float32 ulps of a d=16 dot product
    out = load_file(str(tmp_path / "out" / "outputs.safetensors"))
    with torch.no_grad():
        want = probe.outputs(kind, obj, x)
    assert set(out) == set(want) and want
    for k, t in want.items():
        torch.testing.assert_close(out[k], t, rtol=1e-5, atol=1e-6, msg=k)


def test_kind_class_resolves_lazily_and_names_unknown_kinds():
    assert kind_class("subspace") is Subspace
    with pytest.raises(ValueError, match=r"unknown artifact kind 'nope'.*'subspace'"):
        kind_class("nope")


def test_register_guards_the_table():
    with pytest.raises(TypeError, match="belongs to steerlab.subspace:Subspace"):

        @register("subspace")
        class Impostor:
            @classmethod
            def load(cls, path):
                return cls()

    with pytest.raises(TypeError, match="classmethod load"):
        register("no_loader")(type("NoLoader", (), {}))


def test_a_plugin_kind_registers_and_loads(tmp_path):
    @register("test_plugin_kind")
    @dataclasses.dataclass(frozen=True)
    class Plugin(FrozenArtifact):
        w: torch.Tensor
        note: str = ""

        @property
        def d_model(self) -> int:
            return self.w.shape[-1]

    Plugin(torch.arange(6.0), "hi").save(tmp_path / "p")
    back = artifacts.load(tmp_path / "p")
    assert isinstance(back, Plugin) and back.note == "hi" and torch.equal(back.w, torch.arange(6.0))
    with pytest.raises(TypeError, match="already registered"):
        register("test_plugin_kind")(type("Other", (), {"load": classmethod(lambda c, p: c)}))


def test_an_unregistered_base_cannot_be_saved(tmp_path):
    e = AffineEraser(torch.eye(4)[:, :1], torch.eye(4)[:1])
    with pytest.raises(TypeError, match="not a registered artifact kind"):
        e.save(tmp_path / "e")


# --- the header -----------------------------------------------------------------------------------


def _valid_header() -> dict:
    return {"kind": "subspace", "format_version": FORMAT_VERSION, "d_in": 4, "site": None,
            "model_id": None, "tokenizer_hash": None, "steerlab_version": "0.1.0"}  # fmt: skip


@pytest.mark.parametrize("field", sorted(HEADER))
def test_a_missing_header_field_is_named(field):
    cfg = _valid_header()
    del cfg[field]
    with pytest.raises(ValueError, match=rf"dir/cfg.json: missing header field '{field}'"):
        check_header(cfg, "dir/cfg.json")


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", 3), ("format_version", "1"), ("d_in", "16"), ("d_in", True), ("d_in", 2.0),
     ("site", 6), ("model_id", ["m"]), ("tokenizer_hash", 1), ("steerlab_version", None)],
)  # fmt: skip
def test_a_mistyped_header_field_is_named(field, value):
    cfg = {**_valid_header(), field: value}
    with pytest.raises(ValueError, match=rf"dir/cfg.json: header field '{field}' must be"):
        check_header(cfg, "dir/cfg.json")


def test_header_values_out_of_range():
    with pytest.raises(ValueError, match="'d_in' must be >= 1"):
        check_header({**_valid_header(), "d_in": 0}, "f")
    with pytest.raises(ValueError, match="format_version 99.*upgrade steerlab"):
        check_header({**_valid_header(), "format_version": 99}, "f")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        check_header([1, 2], "f")


def test_load_names_the_file_and_field(tmp_path):
    Subspace.from_vectors(torch.randn(2, 4)).save(tmp_path / "s")
    f = tmp_path / "s" / CFG_NAME
    cfg = json.loads(f.read_text())
    f.write_text(json.dumps({**cfg, "d_in": "four"}))
    with pytest.raises(ValueError, match=rf"{f}: header field 'd_in' must be int or null"):
        artifacts.load(tmp_path / "s")
    f.write_text(json.dumps({k: v for k, v in cfg.items() if k != "site"}))
    with pytest.raises(ValueError, match=rf"{f}: missing header field 'site'"):
        Subspace.load(tmp_path / "s")
    f.write_text(json.dumps({**cfg, "d_in": 5}))  # contradicts the tensors
    with pytest.raises(ValueError, match=r"d_in is 5, but the tensors have width 4"):
        Subspace.load(tmp_path / "s")
    f.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{f}: not valid JSON"):
        read_cfg(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="no cfg.json"):
        read_cfg(tmp_path)


def test_a_saelens_directory_is_named_as_such(tmp_path):
    save_saelens(build_sae(SaeConfig(d_in=8, d_sae=16, k=2)), tmp_path / "lens")
    with pytest.raises(ValueError, match="SAELens directory.*load_saelens"):
        artifacts.load(tmp_path / "lens")


def test_save_refuses_a_bad_header_or_a_contradiction(tmp_path):
    t = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="header field 'd_in' must be int or null"):
        save_artifact(tmp_path / "a", "subspace", {}, t, d_in=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cfg\['site'\] = 'resid_post.3' contradicts"):
        save_artifact(tmp_path / "a", "subspace", {"site": "resid_post.3"}, t, d_in=2,
                      site="resid_post.4")  # fmt: skip
    with pytest.raises(ValueError, match=r"cfg\['meta'\] of subspace must be JSON"):
        save_artifact(tmp_path / "a", "subspace", {"meta": {"x": object()}}, t, d_in=2)
    assert not (tmp_path / "a").exists()


# --- files written before the header (format 0) still load ----------------------------------------


def _write_v0(path: Path, kind: str, cfg: dict, tensors: dict) -> None:
    """What the pre-header save_artifact wrote: kind + steerlab_version + the kind's cfg."""
    path.mkdir(parents=True)
    (path / CFG_NAME).write_text(json.dumps({"kind": kind, "steerlab_version": "0.1.0", **cfg}))
    save_file(tensors, str(path / f"{kind}.safetensors"))


def test_format_0_files_load_with_the_width_renamed(tmp_path):
    g = torch.Generator().manual_seed(3)
    sub = Subspace.from_vectors(torch.randn(2, 6, generator=g), torch.randn(6, generator=g))
    _write_v0(tmp_path / "s", "subspace", {"d_model": 6, "k": 2, "meta": {"site": "mlp_out.2"}},
              {"basis": sub.basis, "origin": sub.origin})  # fmt: skip
    cfg = read_cfg(tmp_path / "s")
    assert cfg["d_in"] == 6 and "d_model" not in cfg and cfg["format_version"] == 0
    assert cfg["site"] == "mlp_out.2" and cfg["model_id"] is None
    back = artifacts.load(tmp_path / "s")
    assert torch.equal(back.basis, sub.basis) and back.meta == {"site": "mlp_out.2"}

    e = LeaceEraser.fit(torch.randn(40, 6, generator=g), torch.arange(40) % 2)
    _write_v0(
        tmp_path / "e",
        "leace",
        {"d_model": 6, "rank": e.rank, "affine": True, "meta": e.meta},
        {"proj_left": e.proj_left, "proj_right": e.proj_right.clone(), "bias": e.bias},
    )
    back = LeaceEraser.load(tmp_path / "e")
    assert torch.equal(back.P, e.P) and torch.equal(back.bias, e.bias)

    sv = SteeringVector.from_direction(torch.randn(6, generator=g), "resid_post.2", norms=[4.0])
    old = {**sv.to_config(), "d_model": 6}
    del old["d_in"]
    _write_v0(tmp_path / "v", "steering_vector", old,
              {"directions": sv.directions, "norms": sv.norms})  # fmt: skip
    back = artifacts.load(tmp_path / "v")
    assert torch.equal(back.directions, sv.directions) and back.positions == sv.positions

    iv = AddVector(torch.randn(6, generator=g), 1.5, "resid_post.2")  # interventions had d_in
    cfg = iv.to_config()
    del cfg["kind"]
    _write_v0(tmp_path / "i", "add_vector", cfg, dict(iv.state_dict()))
    back = artifacts.load(tmp_path / "i")
    assert type(back) is AddVector and torch.equal(back.effective(), iv.effective())


def test_a_format_0_width_that_contradicts_d_in_is_an_error(tmp_path):
    _write_v0(tmp_path / "a", "add_vector", {"d_in": 6, "d_model": 5}, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="d_in=6 and d_model=5 disagree"):
        read_cfg(tmp_path / "a")
