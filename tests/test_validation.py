"""The validation layer for files read from disk (steerlab.validation, steerlab.errors), and the
regressions of issue #18: damaged files end in one FormatError naming the file and the field.

The safetensors checks are compared with the format's definition (8-byte little-endian header
length, JSON header, byte ranges tiling the data), written out by hand here, and with what
safetensors itself accepts.
"""

from __future__ import annotations

import copy
import json
import struct

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import steerlab.artifacts as artifacts
from steerlab.capture.store import MANIFEST_NAME, StoreWriter, shard_name
from steerlab.cli import main
from steerlab.errors import FormatError, MissingFileError
from steerlab.saes.sae import SaeConfig, build_sae
from steerlab.subspace import Subspace
from steerlab.validation import (
    TensorInfo,
    json_matches,
    json_view,
    load_tensors,
    read_json,
    read_safetensors_header,
    reading,
)

# --- errors ---------------------------------------------------------------------------------------


def test_the_error_types():
    e = FormatError("dir/cfg.json", "field 'k' must be int", field="k")
    assert isinstance(e, ValueError) and str(e) == "dir/cfg.json: field 'k' must be int"
    assert (e.file, e.field) == ("dir/cfg.json", "k")
    m = MissingFileError("dir", "no cfg.json inside", field="cfg")
    assert isinstance(m, FileNotFoundError) and isinstance(m, FormatError)
    assert str(m) == "dir: no cfg.json inside" and m.field == "cfg" and m.errno is None


# --- JSON -----------------------------------------------------------------------------------------


def test_read_json_names_the_file(tmp_path):
    f = tmp_path / "x.json"
    with pytest.raises(MissingFileError, match=r"x.json: no such file \(expected a thing\)"):
        read_json(f, "a thing")
    for text, match in [(b"", "not valid JSON"), (b"{", "not valid JSON"),
                        (b"\xff\xfe{}", "not UTF-8"), (b"[" * 100_000, "not valid JSON|JSON nested")]:  # fmt: skip
        f.write_bytes(text)
        with pytest.raises(FormatError, match=rf"{f}: ({match})") as e:
            read_json(f, "a thing")
        assert not isinstance(e.value, json.JSONDecodeError)
    with pytest.raises(FormatError, match="is a directory"):
        read_json(tmp_path, "a thing")


def test_json_view_names_missing_fields():
    v = json_view({"a": {"b": [{"c": 1}]}, "k": 2}, "f.json")
    assert v == {"a": {"b": [{"c": 1}]}, "k": 2} and json.loads(json.dumps(v)) == v
    assert v.get("nope") is None and "k" in v
    with pytest.raises(FormatError, match=r"f.json: missing field 'a.b.0.d'"):
        v["a"]["b"][0]["d"]
    with pytest.raises(FormatError, match=r"f.json: missing field 'nope'"):
        v["nope"]
    again = copy.deepcopy(v)
    assert again == v
    with pytest.raises(FormatError, match="missing field 'a.x'"):
        again["a"]["x"]


@pytest.mark.parametrize(
    ("value", "annotation", "want"),
    [(1, int, True), (True, int, False), (1.0, int, False), (1, float, True), ("1", float, False),
     (None, int | None, True), ({}, dict, True), ([], dict, False), ([], tuple, True),
     ("a", "str", None), ("x", object, None), ("a", int | object, None), (2, int | str, True)],
)  # fmt: skip
def test_json_matches(value, annotation, want):
    assert json_matches(value, annotation) is want


def test_reading_turns_constructor_errors_into_format_errors():
    for err in (ValueError("bad width"), TypeError("'<' not supported"), KeyError("d_sae"),
                RuntimeError("size mismatch"), IndexError("out of range")):  # fmt: skip
        with (
            pytest.raises(FormatError, match="^art: not a valid Thing: ") as e,
            reading("art", "Thing"),
        ):
            raise err
        assert e.value.__cause__ is err
    with pytest.raises(FormatError, match="missing key 'd_sae'"), reading("art", "Thing"):
        raise KeyError("d_sae")
    original = FormatError("f", "as it was")
    with pytest.raises(FormatError) as e, reading("art", "Thing"):
        raise original
    assert e.value is original
    with pytest.raises(NameError), reading("art", "Thing"):  # a bug stays a bug
        raise NameError("x")


# --- safetensors headers --------------------------------------------------------------------------


def _raw(header: dict, data: bytes) -> bytes:
    """A safetensors file as the format defines it: u64 LE header length, JSON, data."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_header_of_a_valid_file_matches_safetensors(tmp_path):
    f = tmp_path / "t.safetensors"
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64),
               "c": torch.zeros(0, 2), "m": torch.ones(2, dtype=torch.bool)}  # fmt: skip
    save_file(tensors, str(f), metadata={"format": "pt"})
    infos = read_safetensors_header(f)
    assert infos == {"a": TensorInfo("F32", (3, 4)), "b": TensorInfo("I64", (5,)),
                     "c": TensorInfo("F32", (0, 2)), "m": TensorInfo("BOOL", (2,))}  # fmt: skip
    back = load_tensors(f)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    with pytest.raises(FormatError, match=r"t.safetensors: missing tensor 'z'"):
        back["z"]


def test_every_truncation_is_named_where_safetensors_says_less(tmp_path):
    """Every proper prefix of a file is refused, naming the file; safetensors refuses it too."""
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(4, 3), "b": torch.zeros(3)}, str(good))
    raw = good.read_bytes()
    f = tmp_path / "t.safetensors"
    for keep in range(len(raw)):
        f.write_bytes(raw[:keep])
        with pytest.raises(FormatError, match=rf"^{f}: (truncated|damaged)"):
            read_safetensors_header(f)
        with pytest.raises(FormatError, match=rf"^{f}: "):
            load_tensors(f)
        with pytest.raises(SafetensorError):  # the format's own reader agrees it is broken
            load_file(str(f))
    f.write_bytes(raw + b"\0")  # one byte too many
    with pytest.raises(FormatError, match="truncated or extended"):
        read_safetensors_header(f)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ([1], b"", "a list, expected a JSON object"),
        ({"w": 3}, b"", "entry of tensor 'w' is a int"),
        ({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
         "tensor 'w' must be of a known dtype"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4,
         "shape of integers >= 0"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4,
         "must be 8 bytes long"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4,
         "truncated: tensor 'w' needs data bytes 0..8, the file holds 4"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8,
         "starts at data byte 4, expected 0"),
        ({"v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8,
         "starts at data byte 4, expected 8"),
        ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "'w.data_offsets' must be a list"),
        ({"__metadata__": {"a": 1}}, b"", "must be an object of strings"),
    ],
)  # fmt: skip
def test_a_damaged_header_is_named(tmp_path, header, data, match):
    f = tmp_path / "t.safetensors"
    f.write_bytes(_raw(header, data))
    with pytest.raises(FormatError, match=match) as e:
        read_safetensors_header(f)
    assert str(e.value).startswith(str(f))
    with pytest.raises(SafetensorError):  # safetensors refuses each of them as well
        load_file(str(f))


def test_a_missing_file_is_both_errors(tmp_path):
    with pytest.raises(MissingFileError) as e:
        read_safetensors_header(tmp_path / "no.safetensors")
    assert isinstance(e.value, FileNotFoundError)


# --- issue #18: what the loaders raised, and what they raise now ----------------------------------


@pytest.fixture
def saved(tmp_path):
    sub = Subspace.from_vectors(torch.randn(2, 8))
    sub.save(tmp_path / "sub")
    build_sae(SaeConfig(d_in=8, d_sae=16, k=4, site="resid_post.1")).save(tmp_path / "sae")
    return {"sub": (tmp_path / "sub", "subspace"), "sae": (tmp_path / "sae", "sae")}


@pytest.mark.parametrize("which", ["sub", "sae"])
@pytest.mark.parametrize("keep", [0, 5, 8, 60, -10])
def test_a_truncated_safetensors_names_the_file(saved, which, keep):
    """Was: ``SafetensorError: invalid header length``."""
    path, kind = saved[which]
    f = path / f"{kind}.safetensors"
    f.write_bytes(f.read_bytes()[:keep])
    with pytest.raises(FormatError, match=rf"^{f}: (truncated|damaged)"):
        artifacts.load(path)


@pytest.mark.parametrize("which", ["sub", "sae"])
def test_a_garbage_cfg_names_the_file(saved, which):
    """Was: a bare ``JSONDecodeError``."""
    path, _ = saved[which]
    (path / "cfg.json").write_text("Expecting value")
    with pytest.raises(FormatError, match=rf"{path / 'cfg.json'}: not valid JSON") as e:
        artifacts.load(path)
    assert not isinstance(e.value, json.JSONDecodeError)


@pytest.mark.parametrize(
    ("which", "edit", "match"),
    [
        ("sae", {"d_sae": None}, r"d_sae"),  # was KeyError / TypeError from a comparison
        ("sae", {"k": "eight"}, r"SaeConfig.k: expected an integer, got 'eight'"),
        ("sae", {"d_sae": 17}, r"W_enc' must be of shape \[8, 17\]"),
        ("sae", {"architecture": "nope"}, r"architecture"),
        ("sub", {"d_in": None}, r"missing header field 'd_in'"),  # was KeyError: 'd_model'
        ("sub", {"meta": "eight"}, r"field 'meta' must be dict"),
        ("sub", {"kind": "subspacf"}, r"unknown artifact kind 'subspacf'"),
        ("sub", {"format_version": 99}, r"format_version 99"),
    ],
)
def test_a_wrong_or_missing_field_is_named(saved, which, edit, match):
    path, _ = saved[which]
    f = path / "cfg.json"
    cfg = json.loads(f.read_text())
    for k, v in edit.items():
        if v is None:
            del cfg[k]
        else:
            cfg[k] = v
    f.write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=match) as e:
        artifacts.load(path)
    assert str(e.value).startswith(str(path))


def test_a_config_field_of_the_wrong_type_names_cfg_json_and_the_field(saved):
    """Was: a ``TypeError`` from a comparison; then a message naming the SAE's folder only."""
    path, _ = saved["sae"]
    f = path / "cfg.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "k": "eight"}))
    with pytest.raises(FormatError) as e:
        artifacts.load(path)
    assert str(e.value) == (f"{f}: not a valid SAE config: SaeConfig.k: expected an integer, "
                            "got 'eight'")  # fmt: skip
    assert (e.value.file, e.value.field) == (str(f), "k")


def test_the_cli_prints_one_line_for_a_damaged_store(tmp_path, capsys):
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites={"resid_post.1": 4}, shard_tokens=4)
    for i in range(3):
        w.add({"resid_post.1": torch.randn(4, 4)}, torch.arange(4), torch.full((4,), i),
              torch.arange(4), n_sequences=1)  # fmt: skip
    w.finish()
    shard = tmp_path / "s" / shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-1])
    assert main(["store", "info", str(tmp_path / "s"), "--verify"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and shard_name(1) in err and "Traceback" not in err
    (tmp_path / "s" / MANIFEST_NAME).write_text("")
    assert main(["store", "info", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"steerlab: error: {tmp_path / 's' / MANIFEST_NAME}: not valid JSON " \
                  "(Expecting value at line 1 column 1); expected an activation store manifest"  # fmt: skip


def test_the_cli_prints_one_line_for_a_truncated_sae(saved, tmp_path, capsys):
    """Was: a traceback from ``sae eval`` on a truncated weights file."""
    path, _ = saved["sae"]
    f = path / "sae.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    assert main(["sae", "eval", str(path), "--store", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err and "truncated" in err
