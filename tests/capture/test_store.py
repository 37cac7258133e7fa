"""Tests for the sharded activation store: round trips, shuffling, resume, integrity, validation.

The reference for every read is the concatenation of the batches that were written, cast to
the store dtype; casting is deterministic, so all comparisons are exact (no tolerance).
"""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import steerlab.capture.integrity as integrity
import steerlab.capture.writer as store_mod
from steerlab.capture import capture_to_store
from steerlab.capture.store import (
    MANIFEST_NAME,
    SINK,
    SINK_NORM_RATIO,
    ActivationStore,
    CorruptShardError,
    StoreMismatchError,
    StoreWriter,
    shard_name,
    sink_rows,
)
from steerlab.datasets.corpora import chunk_tokens, prose_corpus
from steerlab.errors import FormatError
from steerlab.io import atomic_file

SITES = {"resid_post.1": 6, "mlp_out.1": 4}
ID_SITE = "resid_post.1"  # column 0 of this site holds the global row index
META = ("token_ids", "doc_ids", "positions")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_batches(n_batches: int = 9, seed: int = 0, max_seqs: int = 3, max_len: int = 5):
    """Batches of whole sequences with random lengths; row ids run across batches."""
    g = torch.Generator().manual_seed(seed)
    batches, row, doc = [], 0, 0
    for _ in range(n_batches):
        k = int(torch.randint(1, max_seqs + 1, (1,), generator=g))
        lens = torch.randint(1, max_len + 1, (k,), generator=g)
        n = int(lens.sum())
        acts = {s: torch.randn(n, d, generator=g) for s, d in SITES.items()}
        # Row indices stay below 2**8, exact in bfloat16's 8-bit significand too.
        acts[ID_SITE][:, 0] = torch.arange(row, row + n, dtype=torch.float32)
        batches.append(
            {
                "acts": acts,
                "token_ids": torch.randint(0, 49152, (n,), generator=g),
                "doc_ids": torch.repeat_interleave(torch.arange(doc, doc + k), lens),
                "positions": torch.cat([torch.arange(int(m)) for m in lens]),
                "n_sequences": k,
            }
        )
        row, doc = row + n, doc + k
    return batches


def reference(batches, dtype=torch.float32):
    out = {s: torch.cat([b["acts"][s] for b in batches]).to(dtype) for s in SITES}
    out["token_ids"] = torch.cat([b["token_ids"] for b in batches]).int()
    out["doc_ids"] = torch.cat([b["doc_ids"] for b in batches]).long()
    out["positions"] = torch.cat([b["positions"] for b in batches]).int()
    return out


def add(writer, b):
    writer.add(b["acts"], b["token_ids"], b["doc_ids"], b["positions"], b["n_sequences"])


def write_store(path, batches, *, finish=True, **kw):
    kw = {"model_id": "tiny", "sites": SITES, "shard_tokens": 10, **kw}
    w = StoreWriter(path, **kw)
    for b in batches:
        add(w, b)
    if finish:
        w.finish()
    return w


def assert_rows_equal(got: dict, want: dict, idx):
    for k in want:
        assert torch.equal(got[k], want[k][idx]), k


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_round_trip_all_index_kinds(tmp_path, dtype):
    batches = make_batches()
    write_store(
        tmp_path / "s", batches, dtype=dtype, fingerprints={"tok": "abc"}, config={"seq_len": 8}
    )
    ref = reference(batches, DTYPES[dtype])
    n = len(ref["doc_ids"])
    store = ActivationStore(tmp_path / "s", verify=True)
    assert len(store) == store.n_tokens == n and store.n_shards >= 3
    assert store.sites == SITES and store.dtype == dtype and store.model_id == "tiny"
    assert store.manifest["n_sequences"] == sum(b["n_sequences"] for b in batches)
    assert store.manifest["complete"] is True

    assert_rows_equal(store[:], ref, slice(None))
    assert_rows_equal(store[3 : n - 2 : 3], ref, slice(3, n - 2, 3))  # crosses shard boundaries
    for i in (0, 9, 10, n - 1, -1, -n):
        assert_rows_equal(store[i], ref, i)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:17]
    assert_rows_equal(store[idx], ref, idx)
    assert_rows_equal(store[idx.tolist()], ref, idx)
    mask = torch.arange(n) % 3 == 0
    assert_rows_equal(store[mask], ref, mask)
    with pytest.raises(IndexError):
        store[n]

    view = store.site(ID_SITE)
    assert len(view) == n and view.shape == (n, SITES[ID_SITE])
    assert torch.equal(view[idx], ref[ID_SITE][idx])
    assert torch.equal(view[5], ref[ID_SITE][5])
    assert torch.equal(view.to_tensor(), ref[ID_SITE])
    assert view.to_tensor(torch.float64).dtype == torch.float64
    assert torch.equal(store.site("doc_ids").to_tensor(), ref["doc_ids"])


def test_shard_layout_and_info(tmp_path):
    batches = make_batches(n_batches=20)
    write_store(tmp_path / "s", batches, shard_tokens=12)
    store = ActivationStore(tmp_path / "s")
    shards = store.manifest["shards"]
    max_batch = max(len(b["doc_ids"]) for b in batches)
    for s in shards[:-1]:  # every shard but the last ends at the first batch reaching 12 rows
        assert 12 <= s["n_tokens"] < 12 + max_batch
    assert [s["file"] for s in shards] == [shard_name(i) for i in range(len(shards))]
    assert all(a["seq_end"] == b["seq_start"] for a, b in zip(shards, shards[1:]))
    assert shards[-1]["seq_end"] == store.manifest["n_sequences"]
    ref = reference(batches)
    for s, start in zip(shards, torch.tensor([0] + [s["n_tokens"] for s in shards]).cumsum(0)):
        docs = ref["doc_ids"][int(start) : int(start) + s["n_tokens"]]
        assert docs.min() == s["seq_start"] and docs.max() == s["seq_end"] - 1
    info = store.info()
    assert info["n_shards"] == len(shards) and info["n_tokens"] == len(ref["doc_ids"])
    assert info["complete"] and info["size_bytes"] > 0 and info["model_id"] == "tiny"
    json.dumps(info)  # the CLI prints it as JSON


@pytest.fixture
def id_store(tmp_path):
    batches = make_batches(n_batches=25, seed=3)
    write_store(tmp_path / "s", batches, shard_tokens=9)
    return ActivationStore(tmp_path / "s"), reference(batches)


def batch_ids(batches):
    return [
        b[:, 0].long() if isinstance(b, torch.Tensor) else b[ID_SITE][:, 0].long() for b in batches
    ]


def test_iter_batches_epoch_covers_rows_once(id_store):
    store, ref = id_store
    n = len(store)
    got = list(store.iter_batches([ID_SITE, "doc_ids", "positions"], 8, shards_in_memory=2))
    ids = torch.cat(batch_ids(got))
    assert all(len(b["doc_ids"]) == 8 for b in got) and len(ids) == n // 8 * 8
    assert len(ids.unique()) == len(ids)
    for b, i in zip(got, batch_ids(got)):  # rows stay intact: metadata matches the site row
        assert torch.equal(b["doc_ids"], ref["doc_ids"][i])
        assert torch.equal(b["positions"], ref["positions"][i])
        assert torch.equal(b[ID_SITE], ref[ID_SITE][i])
    full = torch.cat(batch_ids(store.iter_batches(ID_SITE, 8, drop_last=False)))
    assert torch.equal(full.sort().values, torch.arange(n))
    assert not torch.equal(full, torch.arange(n))  # actually shuffled
    in_order = torch.cat(batch_ids(store.iter_batches(ID_SITE, 7, shuffle=False, drop_last=False)))
    assert torch.equal(in_order, torch.arange(n))


def test_iter_batches_deterministic_and_seeded(id_store):
    store, _ = id_store

    def run(**kw):
        return torch.cat(batch_ids(store.iter_batches(ID_SITE, 5, shards_in_memory=3, **kw)))

    assert torch.equal(run(seed=1), run(seed=1))
    assert not torch.equal(run(seed=1), run(seed=2))
    assert not torch.equal(run(seed=1, epoch=0), run(seed=1, epoch=1))
    b = next(store.iter_batches(ID_SITE, 5, dtype=torch.float64))
    assert b.dtype == torch.float64 and b.shape == (5, SITES[ID_SITE])


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_skip_batches_resumes_exactly(id_store, drop_last, shuffle):
    store, _ = id_store
    kw = {"shuffle": shuffle, "drop_last": drop_last, "seed": 4, "shards_in_memory": 2}
    full = batch_ids(store.iter_batches(ID_SITE, 6, **kw))
    for skip in (0, 1, 3, len(full) // 2, len(full) - 1, len(full), len(full) + 2):
        tail = batch_ids(store.iter_batches(ID_SITE, 6, skip_batches=skip, **kw))
        assert len(tail) == max(0, len(full) - skip)
        assert all(torch.equal(a, b) for a, b in zip(tail, full[skip:]))


def test_resume_after_crash_equals_one_go(tmp_path):
    batches = make_batches(n_batches=12, seed=5)
    kw = {"fingerprints": {"corpus": "x"}, "config": {"positions": ["all"]}}
    write_store(tmp_path / "one", batches, **kw)

    crashed = write_store(tmp_path / "two", batches[:5], finish=False, **kw)
    for b in batches[5:]:  # crash with rows in the buffer, which are lost (no close)
        if crashed.buffered_tokens:
            break
        add(crashed, b)
    assert crashed.buffered_tokens > 0
    flushed = json.loads((tmp_path / "two" / MANIFEST_NAME).read_text())["n_sequences"]
    del crashed
    (tmp_path / "two" / "shard-00007.safetensors.tmp").write_bytes(b"half a shard")
    (tmp_path / "two" / "shard-00042.safetensors").write_bytes(b"unlisted")
    (tmp_path / "two" / "manifest.json.tmp").write_text("{")

    w = StoreWriter(
        tmp_path / "two",
        model_id="tiny",
        sites=SITES,
        shard_tokens=10,
        config={"positions": ("all",)},
        fingerprints={"corpus": "x"},
    )
    assert w.n_sequences == flushed > 0 and w.n_tokens == ActivationStore(tmp_path / "two").n_tokens
    assert not w.complete
    names = {p.name for p in (tmp_path / "two").iterdir()}
    assert not any(n.endswith(".tmp") for n in names) and "shard-00042.safetensors" not in names
    done = torch.tensor([b["n_sequences"] for b in batches]).cumsum(0).tolist()
    for b in batches[done.index(flushed) + 1 :]:  # the caller skips the done sequences
        add(w, b)
    w.finish()

    one, two = ActivationStore(tmp_path / "one"), ActivationStore(tmp_path / "two", verify=True)
    assert one.manifest["shards"] == two.manifest["shards"]  # same bytes, same checksums
    assert_rows_equal(two[:], reference(batches), slice(None))
    assert two.manifest["n_sequences"] == one.manifest["n_sequences"]

    again = StoreWriter(tmp_path / "two", model_id="tiny", sites=SITES, **kw)
    assert again.complete
    with pytest.raises(RuntimeError):
        add(again, batches[0])


def test_mismatch_lists_fields(tmp_path):
    write_store(tmp_path / "s", make_batches(3), fingerprints={"tok": "a"})
    with pytest.raises(StoreMismatchError) as e:
        StoreWriter(
            tmp_path / "s",
            model_id="other",
            sites={"resid_post.1": 6},
            dtype="float16",
            fingerprints={"tok": "a"},
        )
    msg = str(e.value)
    for field in ("model_id", "sites", "dtype", "'other'", "stored", "overwrite=True"):
        assert field in msg
    assert "fingerprints" not in msg and "config" not in msg
    with pytest.raises(StoreMismatchError, match="fingerprints"):
        StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, fingerprints={"tok": "b"})
    assert isinstance(e.value, ValueError)

    (tmp_path / "s" / "README").write_text("keep me")
    w = StoreWriter(tmp_path / "s", model_id="other", sites=SITES, overwrite=True)
    assert w.n_sequences == 0 and not list((tmp_path / "s").glob("shard-*"))
    assert (tmp_path / "s" / "README").read_text() == "keep me"  # not a store file
    assert ActivationStore(tmp_path / "s").model_id == "other"


@pytest.mark.parametrize("overwrite", [False, True])
def test_refuses_unknown_non_empty_dir(tmp_path, overwrite):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        StoreWriter(tmp_path, model_id="tiny", sites=SITES, overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_corrupt_and_missing_shards(tmp_path):
    write_store(tmp_path / "s", make_batches())
    store = ActivationStore(tmp_path / "s")
    store.verify()
    f = tmp_path / "s" / shard_name(1)
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=shard_name(1)):
        store.verify()
    with pytest.raises(CorruptShardError, match=shard_name(1)):
        ActivationStore(tmp_path / "s", verify=True)
    f.unlink()
    with pytest.raises(CorruptShardError, match=shard_name(1)):
        ActivationStore(tmp_path / "s")
    with pytest.raises(FileNotFoundError):
        ActivationStore(tmp_path / "nowhere")


def test_add_validation(tmp_path):
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, dtype="float16")
    b = make_batches(1)[0]
    n = len(b["doc_ids"])

    def bad(site, x, match):
        with pytest.raises(ValueError, match=match):
            w.add({**b["acts"], site: x}, b["token_ids"], b["doc_ids"], b["positions"], 1)

    x = b["acts"]["mlp_out.1"].clone()
    x[0, 1] = float("nan")
    x[-1, 0] = float("inf")
    bad("mlp_out.1", x, rf"'mlp_out.1': 2 of {n} rows contain NaN or inf")
    bad("mlp_out.1", torch.full((n, 4), 1e6), "overflow to inf in float16")
    bad("mlp_out.1", torch.zeros(n, 5), r"'mlp_out.1'.*shape")
    bad("mlp_out.1", torch.zeros(n + 1, 4), "shape")
    with pytest.raises(ValueError, match="sites"):
        w.add({ID_SITE: b["acts"][ID_SITE]}, b["token_ids"], b["doc_ids"], b["positions"], 1)
    with pytest.raises(ValueError, match="doc_ids"):
        w.add(b["acts"], b["token_ids"], b["doc_ids"][:-1], b["positions"], 1)
    assert w.buffered_tokens == 0 and w.n_sequences == 0  # nothing half-added
    with pytest.raises(ValueError, match="dtype"):
        StoreWriter(tmp_path / "t", model_id="tiny", sites=SITES, dtype="int8")


def test_unknown_site_lists_valid_names(tmp_path):
    write_store(tmp_path / "s", make_batches(3))
    store = ActivationStore(tmp_path / "s")
    for call in (
        lambda: store.site("resid_post.7"),
        lambda: next(store.iter_batches(["resid_post.7"], 4)),
    ):
        with pytest.raises(KeyError, match=r"resid_post\.7.*'mlp_out\.1', 'resid_post\.1'"):
            call()


def test_buffer_is_bounded(tmp_path):
    batches = make_batches(n_batches=150, seed=7, max_seqs=4, max_len=6)
    max_batch = max(len(b["doc_ids"]) for b in batches)
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, shard_tokens=16)
    peak = 0
    for b in batches:
        add(w, b)
        peak = max(peak, w.buffered_tokens)
        assert w.buffered_tokens < 16  # a batch that reaches the threshold flushes at once
    w.finish()
    shards = ActivationStore(tmp_path / "s").manifest["shards"]
    assert len(shards) > 20
    # A shard, the most ever held in memory, is the buffer before the batch plus one batch.
    assert max(s["n_tokens"] for s in shards) < 16 + max_batch
    assert peak > 0


def test_exception_in_with_flushes_but_not_complete(tmp_path, caplog):
    batches = make_batches(4)
    with (
        pytest.raises(RuntimeError, match="boom"),
        StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, shard_tokens=1000) as w,
    ):
        for b in batches:
            add(w, b)
        raise RuntimeError("boom")
    with caplog.at_level(logging.WARNING, logger="steerlab.capture.store"):
        store = ActivationStore(tmp_path / "s")
    assert "not complete" in caplog.text
    assert not store.manifest["complete"] and store.n_shards == 1
    assert_rows_equal(store[:], reference(batches), slice(None))


def test_writer_owns_its_rows(tmp_path):
    # Capture code may reuse its buffers: edits after ``add`` must not reach the store.
    batches = make_batches(3)
    ref = reference(batches)
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, shard_tokens=1000)
    for b in batches:
        add(w, b)
        for t in [*b["acts"].values(), b["doc_ids"], b["token_ids"], b["positions"]]:
            t.zero_()
    w.finish()
    assert_rows_equal(ActivationStore(tmp_path / "s")[:], ref, slice(None))


def test_zero_row_sequences_are_counted(tmp_path):
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES)
    empty = torch.zeros(0, dtype=torch.long)
    w.add({s: torch.zeros(0, d) for s, d in SITES.items()}, empty, empty, empty, 2)
    w.finish()
    store = ActivationStore(tmp_path / "s")
    assert store.manifest["n_sequences"] == 2 and len(store) == 0 and store.n_shards == 0
    assert list(store.iter_batches(ID_SITE, 4, drop_last=False)) == []
    assert store.site(ID_SITE).to_tensor().shape == (0, SITES[ID_SITE])


@settings(max_examples=15, deadline=None)
@given(
    n_batches=st.integers(1, 8),
    shard_tokens=st.integers(1, 30),
    seed=st.integers(0, 99),
    batch_size=st.integers(1, 12),
    in_memory=st.integers(1, 3),
)
def test_property_round_trip_and_epoch(
    tmp_path_factory, n_batches, shard_tokens, seed, batch_size, in_memory
):
    path = tmp_path_factory.mktemp("s")
    batches = make_batches(n_batches, seed=seed)
    write_store(path, batches, shard_tokens=shard_tokens)
    store = ActivationStore(path)
    ref = reference(batches)
    n = len(ref["doc_ids"])
    idx = torch.randint(-n, n, (11,), generator=torch.Generator().manual_seed(seed))
    assert_rows_equal(store[idx], ref, idx)
    got = batch_ids(
        store.iter_batches(
            ID_SITE, batch_size, seed=seed, shards_in_memory=in_memory, drop_last=False
        )
    )
    assert all(len(b) == batch_size for b in got[:-1])
    assert torch.equal(torch.cat(got).sort().values, torch.arange(n))


# --- attention-sink rows ------------------------------------------------------------------------


def sinks_by_loop(batch, ratio: float = SINK_NORM_RATIO) -> torch.Tensor:
    """The rule of ``sink_rows`` restated row by row in float64 (the independent reference)."""
    pos = batch["positions"].tolist()
    out = []
    for i, p in enumerate(pos):
        flag = p == 0
        for x in batch["acts"].values():
            norms = x.double().norm(dim=1)
            later = [float(norms[j]) for j, q in enumerate(pos) if q != 0]
            if later and float(norms[i]) > ratio * float(torch.tensor(later).median()):
                flag = True
        out.append(flag)
    return torch.tensor(out)


def with_massive_rows(batches, seed: int = 3):
    """Scale a few later rows of each batch by 20, like the massive activations of sink tokens."""
    g = torch.Generator().manual_seed(seed)
    for b in batches:
        later = (b["positions"] > 0).nonzero().squeeze(1)
        if len(later) > 1:
            pick = later[torch.randperm(len(later), generator=g)[:1]]
            b["acts"]["mlp_out.1"][pick] *= 20.0
    return batches


def test_sink_rows_rule():
    g = torch.Generator().manual_seed(0)
    acts = {"a": torch.randn(40, 6, generator=g), "b": torch.randn(40, 3, generator=g)}
    pos = torch.arange(40) % 10
    acts["a"][[13, 27]] *= 10.0  # massive at one site only
    acts["b"][5] *= 10.0
    batch = {"acts": acts, "positions": pos}
    got = sink_rows(acts, pos)
    assert torch.equal(got, sinks_by_loop(batch))
    assert set(got.nonzero().squeeze(1).tolist()) == {0, 10, 20, 30, 13, 27, 5}
    assert torch.equal(sink_rows(acts, pos, norm_ratio=0.0), pos == 0)  # ratio 0: position 0 only


def test_store_marks_sinks_and_reads_them_back(tmp_path):
    batches = with_massive_rows(make_batches(n_batches=12, max_len=8))
    write_store(tmp_path / "s", batches)
    store = ActivationStore(tmp_path / "s")
    want = torch.cat([sinks_by_loop(b) for b in batches])  # marked batch by batch at write time
    assert want.sum() > (reference(batches)["positions"] == 0).sum()  # the massive rows count
    assert torch.equal(store.sink_mask(), want)
    assert torch.equal(store[:][SINK], want)
    assert torch.equal(store.site(SINK)[3:9], want[3:9])
    assert store.manifest["sinks"] == {"norm_ratio": SINK_NORM_RATIO}
    # shuffled batches carry each row's own mark (column 0 of ID_SITE is the row index)
    seen = torch.zeros(len(want), dtype=torch.bool)
    for b in store.iter_batches([ID_SITE, SINK], 7, seed=1, drop_last=False):
        rows = b[ID_SITE][:, 0].long()
        assert torch.equal(b[SINK], want[rows])
        seen[rows] = True
    assert seen.all()


def test_sinks_of_a_store_written_before_marking(tmp_path):
    """Shards without the column get the same rule on read, with the shard's median."""
    from safetensors.torch import load_file, save_file

    batches = with_massive_rows(make_batches(n_batches=12, max_len=8))
    write_store(tmp_path / "s", batches, shard_tokens=1000)  # one shard
    path = tmp_path / "s" / shard_name(0)
    tensors = load_file(path)
    del tensors[SINK]
    save_file(tensors, path, metadata={"format": "pt"})
    # such a store's manifest lists the checksum of the shard as it was written then
    manifest = json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "s" / MANIFEST_NAME).write_text(json.dumps(manifest))
    store = ActivationStore(tmp_path / "s")
    ref = reference(batches)
    want = sinks_by_loop({"acts": {s: ref[s] for s in SITES}, "positions": ref["positions"]})
    assert torch.equal(store.sink_mask(), want)


def test_sink_ratio_validation(tmp_path):
    with pytest.raises(ValueError, match="sink_norm_ratio"):
        StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, sink_norm_ratio=-1.0)
    with pytest.raises(ValueError, match="invalid site name 'sink'"):
        StoreWriter(tmp_path / "s", model_id="tiny", sites={SINK: 3})


# --- integrity: a damaged shard is never served, a rerun rewrites exactly it -------------------


def flip_byte(f, offset: int = -3) -> None:
    data = bytearray(f.read_bytes())
    data[offset] ^= 0xFF
    f.write_bytes(bytes(data))


def snapshot(path):
    """Every file of a store folder: name -> (bytes, mtime_ns)."""
    return {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted(path.iterdir())}


def test_a_damaged_shard_is_never_served(tmp_path):
    batches = make_batches(n_batches=12, seed=2)
    write_store(tmp_path / "s", batches)
    store = ActivationStore(tmp_path / "s")
    assert store.n_shards >= 3
    ref = reference(batches)
    assert_rows_equal(store[:], ref, slice(None))  # intact: served
    bad = shard_name(1)
    # the files are seconds old, so no verification was cached (RACY_NS): the flip is seen
    flip_byte(tmp_path / "s" / bad)
    fresh = ActivationStore(tmp_path / "s")
    lo, hi = int(fresh._starts[1]), int(fresh._ends[1])
    readers = {
        "getitem": lambda st: st[lo],
        "slice": lambda st: st[:],
        "site view": lambda st: st.site(ID_SITE)[hi - 1],
        "to_tensor": lambda st: st.site("token_ids").to_tensor(),
        "sink_mask": lambda st: st.sink_mask(),
        "iter_batches": lambda st: list(st.iter_batches(ID_SITE, 4, shuffle=False)),
        "shuffled": lambda st: list(st.iter_batches([ID_SITE, SINK], 3, seed=4)),
    }
    for name, read in readers.items():
        with pytest.raises(CorruptShardError, match=bad) as e:
            read(ActivationStore(tmp_path / "s"))
        assert e.value.shards == [bad], name
        assert "Rerun the capture" in str(e.value)
    # the other shards are still served, exactly
    assert_rows_equal(fresh[:lo], ref, slice(0, lo))
    assert_rows_equal(fresh[hi:], ref, slice(hi, None))


def test_verified_once_per_process_while_unchanged(tmp_path, monkeypatch):
    write_store(tmp_path / "s", make_batches(n_batches=6, seed=1))
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda f: hashed.append(f.name) or real(f))
    # files modified within the racy window are hashed on every read (never cached)
    monkeypatch.setattr(integrity, "RACY_NS", 10**18)
    ActivationStore(tmp_path / "s")[:]
    ActivationStore(tmp_path / "s")[:]
    n = ActivationStore(tmp_path / "s").n_shards
    assert len(hashed) == 2 * n
    # as if they were older than the racy window: hashed once, then served from the cache
    monkeypatch.setattr(integrity, "RACY_NS", -(10**18))
    hashed.clear()
    ActivationStore(tmp_path / "s")[:]
    ActivationStore(tmp_path / "s")[:]
    assert len(hashed) == n
    # a changed file is hashed again (here its size changed), and refused
    f = tmp_path / "s" / shard_name(0)
    f.write_bytes(f.read_bytes()[:-1])
    hashed.clear()
    with pytest.raises(CorruptShardError, match=shard_name(0)):
        ActivationStore(tmp_path / "s")[:]
    assert hashed == [shard_name(0)]
    # verify() hashes everything, cached or not
    hashed.clear()
    with pytest.raises(CorruptShardError):
        ActivationStore(tmp_path / "s").verify()
    assert sorted(hashed) == [shard_name(i) for i in range(n)]


def sequences_of(batches):
    """(first, end) sequence index of each batch."""
    ends = torch.tensor([b["n_sequences"] for b in batches]).cumsum(0).tolist()
    return [(e - b["n_sequences"], e) for b, e in zip(batches, ends)]


def rewrite(writer, index, batches):
    """Rewrite shard ``index`` from the batches that cover its sequences (as a rerun does)."""
    seqs = writer.shard_sequences(index)
    with writer.rewrite_shard(index) as sub:
        for b, (first, end) in zip(batches, sequences_of(batches)):
            if seqs.start <= first and end <= seqs.stop:
                add(sub, b)


@pytest.mark.parametrize("complete", [True, False])
def test_rerun_rewrites_exactly_the_damaged_shards(tmp_path, caplog, complete):
    batches = make_batches(n_batches=14, seed=3)
    n_done = 14 if complete else 10
    w = write_store(tmp_path / "s", batches[:n_done], finish=complete)
    if not complete:
        w.close()
    before = snapshot(tmp_path / "s")
    damaged = [shard_name(0), shard_name(2)]
    flip_byte(tmp_path / "s" / damaged[0], 40)
    (tmp_path / "s" / damaged[1]).unlink()

    with caplog.at_level(logging.WARNING, logger="steerlab.capture.store"):
        w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, shard_tokens=10)
    assert [d.file for d in w.damaged] == damaged
    assert all(name in caplog.text for name in damaged)
    if not complete:  # the rest of the corpus, then finishing is refused while damage remains
        done = w.n_sequences
        for b, (first, _) in zip(batches, sequences_of(batches)):
            if first >= done:
                add(w, b)
        with pytest.raises(CorruptShardError, match=damaged[0]):
            w.finish()
        after_rest = snapshot(tmp_path / "s")
    for d in list(w.damaged):
        rewrite(w, d.index, batches)
    assert not w.damaged
    w.finish()

    after = snapshot(tmp_path / "s")
    # the damaged shards hold their old bytes again (same rows, same serialisation) ...
    for name in damaged:
        assert after[name][0] == before[name][0]
    # ... and nothing else was touched: same bytes and mtimes
    untouched = before if complete else after_rest
    for name, (data, mtime) in untouched.items():
        if name not in damaged and name != MANIFEST_NAME:
            assert after[name] == (data, mtime), name
    if complete:
        assert after[MANIFEST_NAME] == before[MANIFEST_NAME]
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]
    store = ActivationStore(tmp_path / "s", verify=True)
    assert_rows_equal(store[:], reference(batches), slice(None))


def test_rewrite_refuses_other_rows_and_leaves_the_store(tmp_path):
    batches = make_batches(n_batches=8, seed=4)
    write_store(tmp_path / "s", batches)
    flip_byte(tmp_path / "s" / shard_name(1))
    before = snapshot(tmp_path / "s")
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, shard_tokens=10)
    with pytest.raises(ValueError, match=r"shard-00001.*manifest lists"), w.rewrite_shard(1) as sub:
        add(sub, batches[0])  # the wrong sequences
    assert snapshot(tmp_path / "s") == before and w.damaged
    with pytest.raises(IndexError), w.rewrite_shard(99):
        pass


# --- disk full and permission errors leave the store as it was ---------------------------------


def failing_writes(monkeypatch, target: str, error: OSError):
    """Make the store's atomic writes of files named ``target*`` fail half-way through."""
    real = store_mod.atomic_write_bytes

    def write(path, data):
        if not path.name.startswith(target):
            return real(path, data)
        with atomic_file(path) as tmp:
            tmp.write_bytes(data[: len(data) // 2])
            raise error
        return None  # never reached

    monkeypatch.setattr(store_mod, "atomic_write_bytes", write)


ERRORS = {
    "disk full": OSError(28, "No space left on device"),  # errno.ENOSPC
    "permission": PermissionError(13, "Permission denied"),
}


@pytest.mark.parametrize("target", ["shard-", MANIFEST_NAME])
@pytest.mark.parametrize("error", sorted(ERRORS))
def test_a_failed_write_leaves_the_store_as_it_was(tmp_path, monkeypatch, target, error):
    batches = make_batches(n_batches=10, seed=6)
    w = write_store(tmp_path / "s", batches[:4], finish=False)
    w.flush()
    before = snapshot(tmp_path / "s")
    failing_writes(monkeypatch, target, ERRORS[error])
    with pytest.raises(type(ERRORS[error])), w:
        for b in batches[4:]:
            add(w, b)
        w.finish()
    assert snapshot(tmp_path / "s") == before  # not a byte more, not a byte less
    with pytest.raises(RuntimeError, match="closed"):
        add(w, batches[5])
    # with the disk back, a rerun resumes after the last listed shard and matches one go
    monkeypatch.undo()
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, shard_tokens=10)
    assert not w.damaged
    for b, (first, _) in zip(batches, sequences_of(batches)):
        if first >= w.n_sequences:
            add(w, b)
    w.finish()
    assert_rows_equal(ActivationStore(tmp_path / "s", verify=True)[:], reference(batches),
                      slice(None))  # fmt: skip


@pytest.mark.parametrize("error", sorted(ERRORS))
def test_a_failed_rewrite_leaves_the_store_as_it_was(tmp_path, monkeypatch, error):
    batches = make_batches(n_batches=8, seed=7)
    write_store(tmp_path / "s", batches)
    flip_byte(tmp_path / "s" / shard_name(1))
    before = snapshot(tmp_path / "s")
    w = StoreWriter(tmp_path / "s", model_id="tiny", sites=SITES, shard_tokens=10)
    failing_writes(monkeypatch, "shard-", ERRORS[error])
    with pytest.raises(type(ERRORS[error])):
        rewrite(w, 1, batches)
    assert snapshot(tmp_path / "s") == before


def test_a_new_store_that_cannot_be_written_leaves_no_folder(tmp_path, monkeypatch):
    failing_writes(monkeypatch, MANIFEST_NAME, ERRORS["disk full"])
    with pytest.raises(OSError, match="No space"):
        StoreWriter(tmp_path / "new" / "s", model_id="tiny", sites=SITES)
    assert not (tmp_path / "new" / "s").exists()


# --- the manifest and the shards' headers are checked against the schema ------------------------


def test_a_damaged_manifest_names_the_file_and_field(tmp_path):
    write_store(tmp_path / "s", make_batches(n_batches=6))
    f = tmp_path / "s" / MANIFEST_NAME
    good = json.loads(f.read_text())

    def fails(manifest, match):
        f.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
        with pytest.raises(FormatError, match=match) as e:
            ActivationStore(tmp_path / "s")
        assert str(e.value).startswith(str(f)) or str(e.value).startswith(str(tmp_path / "s"))

    fails("", rf"{f}: not valid JSON")
    fails("\xff{", rf"{f}: not valid JSON")
    fails([1], "must hold a JSON object")
    fails({k: v for k, v in good.items() if k != "sites"}, "missing field 'sites'")
    fails({**good, "n_tokens": "eight"}, "field 'n_tokens' must be int, got \"eight\"")
    fails({**good, "complete": 1}, "field 'complete' must be bool")
    fails({**good, "format": "other/2"}, "field 'format' must be 'steerlab.store/1'")
    fails({**good, "dtype": "int8"}, "field 'dtype' must be one of")
    fails({**good, "sites": {"resid_post.1": 0}}, r"'sites.resid_post.1' must be an integer")
    fails({**good, "n_tokens": good["n_tokens"] + 1}, "n_tokens' must be the sum")
    shards = [dict(s) for s in good["shards"]]
    shards[1]["sha256"] = "abc"
    fails({**good, "shards": shards}, "'shards.1.sha256' must be 64 lowercase hex")
    shards = [dict(s) for s in good["shards"]]
    shards[0]["file"] = "../escape.safetensors"
    fails({**good, "shards": shards}, "'shards.0.file' must be a shard file name")
    shards = [dict(s) for s in good["shards"]]
    del shards[2]["seq_end"]
    fails({**good, "shards": shards}, "missing field 'shards.2.seq_end'")
    (tmp_path / "s" / MANIFEST_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ActivationStore(tmp_path / "s")
    with pytest.raises(FormatError):
        ActivationStore(tmp_path / "s")


def test_a_shard_the_manifest_does_not_describe_is_named(tmp_path):
    """A manifest edited to list other widths or row counts (with the right checksums): the
    shard's header contradicts it, so the read stops before any row is served."""
    write_store(tmp_path / "s", make_batches(n_batches=6))
    f = tmp_path / "s" / MANIFEST_NAME
    good = json.loads(f.read_text())
    f.write_text(json.dumps({**good, "sites": {**SITES, ID_SITE: 7}}))
    with pytest.raises(FormatError, match=rf"{shard_name(0)}: tensor '{ID_SITE}' must be of "
                                          r"shape \[\d+, 7\]"):  # fmt: skip
        ActivationStore(tmp_path / "s")[:]
    f.write_text(json.dumps({**good, "dtype": "float16"}))
    with pytest.raises(FormatError, match="must be of dtype F16"):
        ActivationStore(tmp_path / "s")[0]


def test_truncated_shards_are_named_not_a_safetensors_error(tmp_path):
    write_store(tmp_path / "s", make_batches(n_batches=6))
    f = tmp_path / "s" / shard_name(0)
    for keep in (0, 5, 100):
        f.write_bytes(f.read_bytes()[:keep])
        with pytest.raises(CorruptShardError, match=shard_name(0)):
            ActivationStore(tmp_path / "s")[:]


# --- the same through capture_to_store on the embedded model (the regressions) ----------

CAP_SITE = "resid_post.1"


def _chunks(model):
    return chunk_tokens(model.tokenizer, prose_corpus(), seq_len=16, n_tokens=16 * 12)


def _capture(model, chunks, path, **kw):
    return capture_to_store(model, chunks, CAP_SITE, str(path),
                            **{"batch_size": 4, "shard_tokens": 40, **kw})  # fmt: skip


def _assert_same_rows(store, ref):
    # the same batches through the same model on the same machine: usually bit-identical, but a
    # BLAS kernel may pick another summation order (e.g. by memory alignment), so allow float32
    # round-off of activations of norm ~10-100
    got = store[:]
    torch.testing.assert_close(got[CAP_SITE], ref[CAP_SITE], rtol=1e-5, atol=1e-4)
    assert torch.equal(got["token_ids"], ref["token_ids"])
    assert torch.equal(got["doc_ids"], ref["doc_ids"])


def test_rerun_of_capture_rewrites_a_flipped_shard_of_a_complete_store(model, tmp_path, caplog):
    """Issue #18: a byte flipped in a shard of a complete store; the rerun returned normally
    and the store served the corrupted rows."""
    chunks = _chunks(model)
    store = _capture(model, chunks, tmp_path / "s")
    ref = store[:]
    assert store.n_shards == 3
    before = snapshot(tmp_path / "s")
    flip_byte(tmp_path / "s" / shard_name(1), 200)
    with pytest.raises(CorruptShardError, match=shard_name(1)):
        ActivationStore(tmp_path / "s")[:]
    with caplog.at_level(logging.WARNING):
        again = _capture(model, chunks, tmp_path / "s")
    assert shard_name(1) in caplog.text and "damaged" in caplog.text
    again.verify()
    _assert_same_rows(again, ref)
    after = snapshot(tmp_path / "s")
    for name in (shard_name(0), shard_name(2)):
        assert after[name] == before[name]  # bytes and mtime untouched
    # a rerun over the intact store rewrites nothing at all
    caplog.clear()
    _capture(model, chunks, tmp_path / "s")
    assert snapshot(tmp_path / "s") == after and "damaged" not in caplog.text


def test_resume_rewrites_a_shard_damaged_after_the_interruption(model, tmp_path, caplog):
    """Issue #18: an interrupted capture whose first shard is then corrupted resumed without
    complaint."""
    chunks = _chunks(model)
    ref = _capture(model, chunks, tmp_path / "one")[:]
    calls = []

    def interrupt(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _capture(model, chunks, tmp_path / "two", progress=interrupt)
    partial = json.loads((tmp_path / "two" / MANIFEST_NAME).read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    flip_byte(tmp_path / "two" / shard_name(0), 100)
    with caplog.at_level(logging.WARNING):
        store = _capture(model, chunks, tmp_path / "two")
    assert shard_name(0) in caplog.text
    assert store.manifest["complete"]
    store.verify()
    _assert_same_rows(store, ref)


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("nan"), "8", None, True])
def test_capture_to_store_refuses_a_bad_batch_size_before_creating_files(model, tmp_path, bad):
    """Issue #18: batch_size=0 raised ``range() arg 3 must not be zero`` and left a folder."""
    with pytest.raises(ValueError, match="batch_size"):
        _capture(model, _chunks(model), tmp_path / "s", **{"batch_size": bad})
    assert not (tmp_path / "s").exists()
