"""Fuzz every loader: a damaged file ends in steerlab's FormatError or in a correct load.

For each artifact kind (``steerlab.artifacts.KIND_TABLE``, built by the round-trip builders of
tests/test_artifacts.py) and for an activation store, hypothesis damages one file of a saved
copy: truncates it, flips bits of a byte, deletes it, or mutates one value of its JSON (deletes
a key, or puts null, a string, a negative or huge number, a fraction, NaN, a bool, a list or an
object in its place). Loading the damaged copy must

- raise :class:`steerlab.errors.FormatError` (and nothing else: no ``SafetensorError``,
  ``JSONDecodeError``, ``KeyError``, ``TypeError``, ...), or return an object of the right
  class — for the store, exactly the rows that were written, since every served shard is
  checksummed;
- finish within :data:`LIMIT_S` seconds (a hang is a failure, not a stuck suite);
- write nothing: every file of the copy and its folder listing stay as they were.

A load that succeeds after bytes were cut off or a file was deleted must give back the object
that was saved (its tensors and ``meta`` exactly): losing data silently is a failure too.

Two drivers apply the same damage: hypothesis (random files, offsets and values; derandomized in
the default suite by tests/conftest.py, and ``.ci/run`` runs it again with a random seed), and a
fixed sweep (:func:`sweep`) that applies every kind of damage to every file of every artifact
kind and of the store, so that each is covered whatever hypothesis draws: deletion, truncation
at five lengths, bit flips at four offsets, and for JSON every field deleted and replaced by
every value of :data:`ODD_VALUES`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import steerlab.artifacts as artifacts
from steerlab.artifacts import KIND_TABLE, kind_class
from steerlab.capture.store import ActivationStore, StoreWriter
from steerlab.errors import FormatError
from steerlab.saes.sae import Sae

LIMIT_S = 20
"""A load of these few-kilobyte files takes milliseconds; 20 s means it hangs."""

FUZZ = settings(
    max_examples=25,  # x 20 kinds + the store: ~30 s on a 2-core CPU
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _artifact_cases():
    """tests/test_artifacts.py, whose ``_build(kind)`` makes a small instance of every kind."""
    path = Path(__file__).with_name("test_artifacts.py")
    spec = importlib.util.spec_from_file_location("artifact_cases", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_cases = _artifact_cases()
_build = _cases._build
_probe = _cases.probe  # state(obj): every tensor an artifact holds


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so that no loader's error handling can catch it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"a load took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def state(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry of ``folder`` (recursively): name -> (size, mtime_ns, sha256)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        st_ = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
        out[str(f.relative_to(folder))] = (st_.st_size, st_.st_mtime_ns, digest)
    return out


# --- damage ---------------------------------------------------------------------------------------

ODD_VALUES = [None, "eight", -1, 0, 10**6, 1.5, math.nan, True, [], {}]
"""What a mutated JSON value becomes."""


def _paths(value, prefix=()):
    """Every path to a value inside parsed JSON (the root excluded)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()  # fmt: skip
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _set_json(text: str, path: tuple, value) -> str:
    """``text`` (JSON) with the value at ``path`` replaced by ``value``, or deleted if
    ``value`` is :data:`DELETE`."""
    doc = json.loads(text)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(doc)


DELETE = object()
"""The JSON "value" that deletes the field."""

LOSSY = ("truncate", "delete")
"""Damage that removes data: a load that succeeds anyway must return what was saved."""


def apply_damage(f: Path, op: str, arg=None) -> str:
    """Damage file ``f``: ``truncate`` to ``arg`` bytes, ``flip`` (``arg`` = (offset, xor
    mask)), ``delete``, or ``json`` (``arg`` = (path, value or DELETE)). Returns the op."""
    raw = f.read_bytes()
    if op == "truncate":
        f.write_bytes(raw[:arg])
    elif op == "flip":
        at, mask = arg
        f.write_bytes(raw[:at] + bytes([raw[at] ^ mask]) + raw[at + 1 :])
    elif op == "delete":
        f.unlink()
    else:
        f.write_text(_set_json(raw.decode(), *arg))
    return op


def damage(folder: Path, data) -> tuple[str, str]:
    """Damage one file of ``folder`` in one way, drawn by hypothesis; returns the op and what
    was done (for the report)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    f = data.draw(st.sampled_from(files), label="file")
    raw = f.read_bytes()
    ops = ["truncate", "flip", "delete"] + (["json"] * 3 if f.suffix == ".json" else [])
    op = data.draw(st.sampled_from(ops), label="damage")
    arg = None
    if op == "truncate":
        arg = data.draw(st.integers(0, max(0, len(raw) - 1)), label="keep bytes")
    elif op == "flip":
        arg = (data.draw(st.integers(0, len(raw) - 1), label="offset"),
               data.draw(st.integers(1, 255), label="xor"))  # fmt: skip
    elif op == "json":
        paths = sorted(_paths(json.loads(raw)), key=repr)
        if not paths:  # a scalar document: replace it whole
            f.write_text(json.dumps(data.draw(st.sampled_from(ODD_VALUES))))
            return op, f"json {f.relative_to(folder)} (whole)"
        path = data.draw(st.sampled_from(paths), label="json path")
        value = DELETE if data.draw(st.booleans(), label="delete") else data.draw(
            st.sampled_from(ODD_VALUES), label="value")  # fmt: skip
        arg = (path, value)
    apply_damage(f, op, arg)
    return op, f"{op} {f.relative_to(folder)} {_show_arg(arg)}"


def _show_arg(arg) -> str:
    if isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[0], tuple):
        return f"{'.'.join(map(str, arg[0]))} -> {'deleted' if arg[1] is DELETE else arg[1]!r}"
    return "" if arg is None else repr(arg)


def sweep(folder: Path):
    """Every damage of the fixed sweep for the files of ``folder``: (file, op, arg)."""
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        n = f.stat().st_size
        yield f, "delete", None
        for keep in sorted({0, 1, 8, n // 2, n - 1}):
            yield f, "truncate", keep
        for at in sorted({0, 8, n // 2, n - 1}):  # length field, header, data, last byte
            yield f, "flip", (at, 0xFF)
        if f.suffix == ".json":
            for path in sorted(_paths(json.loads(f.read_bytes())), key=repr):
                for value in (DELETE, *ODD_VALUES):
                    yield f, "json", (path, value)


@contextlib.contextmanager
def damaged_copy(golden: Path, data):
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        copy = root / golden.name
        shutil.copytree(golden, copy)
        op, what = damage(copy, data)
        yield copy, op, what
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sweep_copies(golden: Path):
    """For each damage of :func:`sweep`: (copy, op, what), the copy damaged that way. One
    working copy is reused; the damaged file is restored from ``golden`` after each."""
    root = Path(tempfile.mkdtemp(prefix="sweep-"))
    try:
        copy = root / golden.name
        shutil.copytree(golden, copy)
        for f, op, arg in list(sweep(copy)):
            rel = f.relative_to(copy)
            apply_damage(f, op, arg)
            yield copy, op, f"{op} {rel} {_show_arg(arg)}"
            shutil.copy2(golden / rel, f)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def load_checked(load, copy: Path, what: str):
    """``load(copy)`` within the time limit, writing nothing; its result, or None after a
    FormatError. Any other exception fails the test."""
    before = state(copy.parent)
    try:
        with time_limit(LIMIT_S):
            out = load(copy)
    except FormatError as e:
        assert str(e), what
        out = None
    except Exception as e:
        raise AssertionError(f"{what}: {type(e).__name__} instead of a FormatError: {e}") from e
    assert state(copy.parent) == before, f"{what}: loading wrote to the folder"
    return out


# --- every artifact kind --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """kind -> (the saved folder, the object that was saved)."""
    root = tmp_path_factory.mktemp("golden")
    out = {}
    for kind in KIND_TABLE:
        obj, _ = _build(kind)
        out[kind] = (obj.save(root / kind), obj)
    return out


def check_artifact(kind: str, saved, obj, op: str, what: str) -> None:
    """A loaded artifact is of the kind's class; after lossy damage, it is what was saved."""
    want = Sae if kind == "sae" else kind_class(kind)
    assert isinstance(obj, want), f"{what}: loaded a {type(obj).__name__}"
    if op in LOSSY:
        mine, theirs = _probe.state(obj), _probe.state(saved)
        assert set(mine) == set(theirs), f"{what}: loaded other tensors {sorted(mine)}"
        for k, t in theirs.items():  # exact: a load returns the bytes that were saved
            assert torch.equal(mine[k], t.detach()), f"{what}: tensor {k} differs"
        assert getattr(obj, "meta", None) == getattr(saved, "meta", None), f"{what}: meta"


@pytest.mark.parametrize("kind", sorted(KIND_TABLE))
@FUZZ
@given(data=st.data())
def test_a_damaged_artifact_is_a_format_error_or_loads(golden, kind, data):
    path, saved = golden[kind]
    with damaged_copy(path, data) as (copy, op, what):
        obj = load_checked(artifacts.load, copy, what)
    if obj is not None:
        check_artifact(kind, saved, obj, op, what)


@pytest.mark.parametrize("kind", sorted(KIND_TABLE))
def test_every_damage_of_every_artifact_file(golden, kind):
    path, saved = golden[kind]
    ops: dict[str, list[int]] = {}
    for copy, op, what in sweep_copies(path):
        obj = load_checked(artifacts.load, copy, what)
        if obj is not None:
            check_artifact(kind, saved, obj, op, what)
        ops.setdefault(op, [0, 0])[obj is None] += 1
    # the sweep did reach every kind of damage, and most of it is refused
    assert set(ops) == {"delete", "truncate", "flip", "json"}, ops
    assert ops["delete"] == [0, 2] and ops["truncate"][0] <= 1, ops  # cfg.json's last "\n"


def test_every_kind_loads_undamaged(golden):
    for kind, (path, saved) in golden.items():
        check_artifact(kind, saved, artifacts.load(path), "delete", f"{kind} undamaged")


# --- the activation store -------------------------------------------------------------------------

STORE_SITES = {"resid_post.1": 6, "mlp_out.1": 3}


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "store"
    g = torch.Generator().manual_seed(0)
    with StoreWriter(path, model_id="tiny", sites=STORE_SITES, shard_tokens=12) as w:
        for b in range(6):
            n = 7
            acts = {s: torch.randn(n, d, generator=g) for s, d in STORE_SITES.items()}
            ids = torch.arange(n)
            w.add(acts, ids + 100 * b, torch.full((n,), b), ids, n_sequences=1)
        w.finish()
    return path, ActivationStore(path)[:]


def _read_everything(path: Path) -> dict[str, torch.Tensor]:
    store = ActivationStore(path)
    rows = store[:]
    batches = list(store.iter_batches([*STORE_SITES, "sink"], 5, seed=1, drop_last=False))
    assert sum(len(b["sink"]) for b in batches) == len(store)
    assert torch.equal(store.sink_mask(), rows["sink"])
    return rows


def check_rows(rows, want, what: str) -> None:
    """Every served shard was checksummed: only the written rows, whatever the damage."""
    assert set(rows) == set(want), what
    for k, v in want.items():
        assert torch.equal(rows[k], v), f"{what}: {k} differs"


@FUZZ
@given(data=st.data())
def test_a_damaged_store_is_a_format_error_or_serves_the_written_rows(golden_store, data):
    path, want = golden_store
    with damaged_copy(path, data) as (copy, _, what):
        rows = load_checked(_read_everything, copy, what)
    if rows is not None:
        check_rows(rows, want, what)


def test_every_damage_of_every_store_file(golden_store):
    path, want = golden_store
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert len(shards) >= 3, shards  # several shards: damage to a later one is found too
    refused: dict[str, int] = {}
    for copy, op, what in sweep_copies(path):
        rows = load_checked(_read_everything, copy, what)
        if rows is not None:
            check_rows(rows, want, what)
        refused[what.split()[1]] = refused.get(what.split()[1], 0) + (rows is None)
    # a shard's every damage is refused (its sha256); the manifest's nearly every one
    n_shard_damages = 1 + 5 + 4
    assert all(refused[s] == n_shard_damages for s in shards), refused
