"""The writer side of a distributed capture, in one process: rank parts, commit, resume, refusals.

Each rank's :class:`RankStoreWriter` is driven here in turn (what torchrun runs in parallel), so
every check is exact: the reference is the concatenation of the batches written, cast to the
store dtype, as in tests/capture/test_store.py. ``split_range`` is checked exhaustively.
"""

from __future__ import annotations

import json

import pytest
import torch

from steerlab.capture.ranks import RankStoreWriter, commit, rank_manifest_name, rank_shard_name
from steerlab.capture.store import (
    MANIFEST_NAME,
    ActivationStore,
    StoreMismatchError,
    StoreWriter,
)
from steerlab.distributed import split_range

SITES = {"resid_post.1": 4}
SETTINGS = {"model_id": "tiny", "sites": SITES, "shard_tokens": 6, "config": {"seq_len": 3}}


def batch(first_seq: int, n_seq: int, seq_len: int = 3) -> dict:
    """``n_seq`` sequences of ``seq_len`` rows; column 0 holds the global row index."""
    n = n_seq * seq_len
    x = torch.randn(n, 4)
    x[:, 0] = torch.arange(first_seq * seq_len, first_seq * seq_len + n, dtype=torch.float32)
    return {
        "acts": {"resid_post.1": x},
        "token_ids": torch.arange(n),
        "doc_ids": torch.arange(first_seq, first_seq + n_seq).repeat_interleave(seq_len),
        "positions": torch.arange(seq_len).repeat(n_seq),
        "n_sequences": n_seq,
    }


def write_part(path, rank, world, seqs: range, *, finish=True, crash_after=None, **kw):
    """Write rank ``rank``'s part in batches of 2 sequences; ``finish=False`` closes without
    marking it complete, ``crash_after=b`` stops dead after ``b`` batches (the buffer is lost,
    as in a killed process)."""
    settings = {**SETTINGS, **kw}
    w = RankStoreWriter(path, rank=rank, world_size=world, sequences=seqs, **settings)
    start = seqs.start + w.n_sequences
    for i, s in enumerate(range(start, seqs.stop, 2)):
        if crash_after is not None and i == crash_after:
            return w
        b = batch(s, min(2, seqs.stop - s))
        w.add(b["acts"], b["token_ids"], b["doc_ids"], b["positions"], b["n_sequences"])
    if finish:
        w.finish()
    else:
        w.close()
    return w


def test_split_range_deals_contiguous_unit_blocks():
    for n in range(0, 30):
        for world in range(1, 5):
            for unit in (1, 2, 3, 8):
                shares = [split_range(n, r, world, unit=unit) for r in range(world)]
                assert [i for s in shares for i in s] == list(range(n))
                assert all(s.start % unit == 0 for s in shares if len(s))
                blocks = [-(-len(s) // unit) for s in shares]
                assert max(blocks) - min(blocks) <= 1
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        split_range(10, 2, 2)


def test_parts_commit_to_the_one_process_rows(tmp_path):
    torch.manual_seed(0)
    n_seq, world = 11, 2
    shares = [split_range(n_seq, r, world, unit=2) for r in range(world)]
    for r, share in enumerate(shares):
        write_part(tmp_path, r, world, share)
    assert not (tmp_path / MANIFEST_NAME).exists()  # no store for readers before the commit
    manifest = commit(tmp_path, world)
    store = ActivationStore(tmp_path)
    rows = store[:]
    # column 0 is the global row index: the rows come back in corpus order
    assert torch.equal(rows["resid_post.1"][:, 0], torch.arange(n_seq * 3, dtype=torch.float32))
    assert torch.equal(rows["doc_ids"], torch.arange(n_seq).repeat_interleave(3))
    assert manifest["n_sequences"] == n_seq and manifest["complete"]
    ranges = [(s["seq_start"], s["seq_end"]) for s in manifest["shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_seq
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert manifest["shards"][0]["file"] == rank_shard_name(0, 0)
    assert [r["seq_start"] for r in manifest["distributed"]["ranks"]] == [0, shares[1].start]
    assert not any((tmp_path / rank_manifest_name(r)).exists() for r in range(world))
    store.verify()
    # rerunning the same capture finds the committed store complete, with ranks or without
    w = RankStoreWriter(tmp_path, rank=1, world_size=world, sequences=shares[1], **SETTINGS)
    assert w.complete and w.committed
    assert StoreWriter(tmp_path, **SETTINGS).complete


def test_commit_refuses_unfinished_or_missing_parts(tmp_path):
    write_part(tmp_path, 0, 2, range(0, 4))
    with pytest.raises(RuntimeError, match="rank 1 left no manifest.rank-00001.json"):
        commit(tmp_path, 2)
    write_part(tmp_path, 1, 2, range(4, 8), finish=False)
    with pytest.raises(RuntimeError, match="rank 1's part is not complete"):
        commit(tmp_path, 2)


def test_part_resumes_after_its_last_shard_and_keeps_other_ranks_files(tmp_path):
    # shards of 12 rows (2 batches): after 3 batches one shard is on disk, one batch is lost
    write_part(tmp_path, 1, 2, range(4, 12), crash_after=3, shard_tokens=12)
    done = json.loads((tmp_path / rank_manifest_name(1)).read_text())["n_sequences"]
    assert done == 4
    # a crash leaves temporary files: rank 1's are its own to remove, rank 0's are not
    own_tmp = tmp_path / f".{rank_shard_name(1, 9)}.abcd1234.tmp"
    other_tmp = tmp_path / f".{rank_shard_name(0, 0)}.abcd1234.tmp"
    stray = tmp_path / rank_shard_name(1, 7)  # written, but never listed
    for f in (own_tmp, other_tmp, stray):
        f.write_bytes(b"partial")
    settings = {**SETTINGS, "shard_tokens": 12}
    w = RankStoreWriter(tmp_path, rank=1, world_size=2, sequences=range(4, 12), **settings)
    assert w.n_sequences == done
    assert not own_tmp.exists() and not stray.exists() and other_tmp.exists()
    other_tmp.unlink()
    write_part(tmp_path, 1, 2, range(4, 12), shard_tokens=12)
    write_part(tmp_path, 0, 2, range(0, 4), shard_tokens=12)
    commit(tmp_path, 2)
    ids = ActivationStore(tmp_path).site("resid_post.1")[:][:, 0]
    assert torch.equal(ids, torch.arange(36, dtype=torch.float32))


def test_refusals(tmp_path):
    write_part(tmp_path, 1, 2, range(4, 8), finish=False)
    with pytest.raises(StoreMismatchError, match="part"):  # same rank, another world size
        RankStoreWriter(tmp_path, rank=1, world_size=3, sequences=range(4, 8), **SETTINGS)
    with pytest.raises(StoreMismatchError, match="model_id"):
        RankStoreWriter(tmp_path, rank=1, world_size=2, sequences=range(4, 8),
                        **{**SETTINGS, "model_id": "other"})  # fmt: skip
    with pytest.raises(StoreMismatchError, match="more ranks"):  # rank 1 of 2 left, now 1 rank
        RankStoreWriter(tmp_path, rank=0, world_size=1, sequences=range(0, 8), **SETTINGS)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        RankStoreWriter(tmp_path, rank=0, world_size=2, sequences=range(0, 4), **SETTINGS)
    # a one-process capture in progress is not taken over by ranks
    one = tmp_path / "one"
    StoreWriter(one, **SETTINGS).close()
    with pytest.raises(StoreMismatchError, match="one-process capture in progress"):
        RankStoreWriter(one, rank=0, world_size=2, sequences=range(0, 4), **SETTINGS)


def test_overwrite_clears_only_what_each_rank_owns(tmp_path):
    for r, share in enumerate((range(0, 4), range(4, 8))):
        write_part(tmp_path, r, 2, share)
    commit(tmp_path, 2)
    w = RankStoreWriter(tmp_path, rank=1, world_size=2, sequences=range(4, 8), overwrite=True,
                        **SETTINGS)  # fmt: skip
    assert not w.complete and w.n_sequences == 0
    assert (tmp_path / MANIFEST_NAME).exists()  # rank 0's to remove
    assert (tmp_path / rank_shard_name(0, 0)).exists()
    RankStoreWriter(tmp_path, rank=0, world_size=2, sequences=range(0, 4), overwrite=True,
                    **SETTINGS)  # fmt: skip
    assert (
        not (tmp_path / MANIFEST_NAME).exists() and not (tmp_path / rank_shard_name(0, 0)).exists()
    )
    part = json.loads((tmp_path / rank_manifest_name(0)).read_text())
    assert part["n_sequences"] == 0 and part["part"]["seq_end"] == 4
