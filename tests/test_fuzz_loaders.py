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

The examples are derandomized in the default suite (tests/conftest.py); ``.ci/run`` also runs
them with a random seed.
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


_build = _artifact_cases()._build


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


def _mutate_json(text: str, data) -> str:
    doc = json.loads(text)
    paths = sorted(_paths(doc), key=repr)
    if not paths:
        return json.dumps(data.draw(st.sampled_from(ODD_VALUES)))
    path = data.draw(st.sampled_from(paths), label="json path")
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(st.sampled_from(ODD_VALUES), label="value")
    return json.dumps(doc)


def damage(folder: Path, data) -> str:
    """Damage one file of ``folder`` in one way; returns what was done (for the report)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    f = data.draw(st.sampled_from(files), label="file")
    raw = f.read_bytes()
    ops = ["truncate", "flip", "delete"] + (["json"] * 3 if f.suffix == ".json" else [])
    op = data.draw(st.sampled_from(ops), label="damage")
    if op == "truncate":
        keep = data.draw(st.integers(0, max(0, len(raw) - 1)), label="keep bytes")
        f.write_bytes(raw[:keep])
    elif op == "flip":
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        mask = data.draw(st.integers(1, 255), label="xor")
        f.write_bytes(raw[:at] + bytes([raw[at] ^ mask]) + raw[at + 1 :])
    elif op == "delete":
        f.unlink()
    else:
        f.write_text(_mutate_json(raw.decode(), data))
    return f"{op} {f.relative_to(folder)}"


@contextlib.contextmanager
def damaged_copy(golden: Path, data):
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        copy = root / golden.name
        shutil.copytree(golden, copy)
        what = damage(copy, data)
        yield copy, what
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
    root = tmp_path_factory.mktemp("golden")
    out = {}
    for kind in KIND_TABLE:
        obj, _ = _build(kind)
        out[kind] = obj.save(root / kind)
    return out


@pytest.mark.parametrize("kind", sorted(KIND_TABLE))
@FUZZ
@given(data=st.data())
def test_a_damaged_artifact_is_a_format_error_or_loads(golden, kind, data):
    want = Sae if kind == "sae" else kind_class(kind)
    with damaged_copy(golden[kind], data) as (copy, what):
        obj = load_checked(artifacts.load, copy, what)
    if obj is not None:
        assert isinstance(obj, want), f"{what}: loaded a {type(obj).__name__}"


def test_every_kind_loads_undamaged(golden):
    for kind, path in golden.items():
        obj = artifacts.load(path)
        assert isinstance(obj, Sae if kind == "sae" else kind_class(kind)), kind


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


@FUZZ
@given(data=st.data())
def test_a_damaged_store_is_a_format_error_or_serves_the_written_rows(golden_store, data):
    path, want = golden_store
    with damaged_copy(path, data) as (copy, what):
        rows = load_checked(_read_everything, copy, what)
    if rows is not None:  # every served shard was checksummed: only the written rows
        assert set(rows) == set(want), what
        for k, v in want.items():
            assert torch.equal(rows[k], v), f"{what}: {k} differs"
