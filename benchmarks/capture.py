"""Capture speed at one site of the embedded model, as ratios against the limits.

The limit is a plain forward pass that stops after the site's layer (the blocks after it are
cut off the model); the full forward is the reference every hook library starts from. Each
backend's capture and the store writer run the same batches, interleaved over repeats, and the
median tokens/s of each is reported.

The store's integrity costs are measured the same way: "capture hf -> store -> verified read"
writes the store, then opens it with a fresh :class:`~steerlab.capture.store.ActivationStore`
(this process's cache of verified shards emptied, so every shard's sha256 is computed) and
reads every row of every shard back, which is what the first read of a store costs in a new
process. Its time is compared with the plain "capture hf -> store" row and with the store's
budget (writing plus verifying adds at most 10% to hf capture time); "sha256 of every shard"
is the hash alone, on the same files.

    python benchmarks/capture.py [--layer 6] [--batch 8] [--seq-len 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from steerlab.capture import capture, capture_to_store, integrity
from steerlab.capture.store import ActivationStore
from steerlab.datasets.corpora import chunk_tokens, prose_corpus
from steerlab.models import load_model
from steerlab.sites import block_list


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shard-tokens", type=int, default=4096, help="rows per store shard")
    args = ap.parse_args()

    torch.manual_seed(0)
    h = load_model(args.model)
    site = f"resid_post.{args.layer}"
    n_seq = args.batch * args.batches
    chunks = chunk_tokens(
        h.tokenizer, prose_corpus(), seq_len=args.seq_len, n_tokens=n_seq * args.seq_len
    )
    ids = chunks.input_ids
    n_tok = ids.numel()
    base = h.model.model
    blocks = block_list(h)

    def forward(stop: bool):
        def run():
            if stop:  # the limit: the same model with the blocks after the site removed
                base.layers = blocks[: args.layer + 1]
            try:
                with torch.inference_mode():
                    for i in range(0, n_seq, args.batch):
                        x = ids[i : i + args.batch]
                        base(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
            finally:
                base.layers = blocks

        return run

    def cap(backend: str):
        return lambda: capture(h, ids, site, backend=backend, batch_size=args.batch)

    tmp = tempfile.mkdtemp()

    def store():
        shutil.rmtree(f"{tmp}/s", ignore_errors=True)
        capture_to_store(
            h, chunks, site, f"{tmp}/s", batch_size=args.batch, shard_tokens=args.shard_tokens
        )

    def read_verified() -> int:
        # a fresh store object and no shard known verified: every shard is hashed before its
        # rows are served, as on the first read in a new process
        integrity._VERIFIED.clear()
        s = ActivationStore(f"{tmp}/s")
        return sum(len(s[int(a) : int(b)][site]) for a, b in zip(s._starts, s._ends))

    paired: list[float] = []  # read-back time / capture -> store time, within one run

    def store_then_read():
        t0 = time.perf_counter()
        store()
        t1 = time.perf_counter()
        assert read_verified() == n_tok
        paired.append((time.perf_counter() - t1) / (t1 - t0))

    hashed: list[float] = []

    def sha256_only():
        # the hash alone, on the files the previous run wrote (read from the page cache)
        m = integrity.read_manifest(Path(f"{tmp}/s"))
        t0 = time.perf_counter()
        assert not integrity.find_damaged(f"{tmp}/s", m, recheck=True)
        hashed.append(time.perf_counter() - t0)

    runs = {
        "forward (full)": forward(False),
        f"forward stopped after layer {args.layer} (limit)": forward(True),
        "capture hf": cap("hf"),
        "capture hf -> store": store,
        "capture hf -> store -> verified read": store_then_read,
        "capture transformer_lens": cap("transformer_lens"),
        "capture nnsight": cap("nnsight"),
    }
    for fn in runs.values():  # warm-up (TransformerLens/nnsight build their wrappers here)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if name == "capture hf -> store -> verified read":
                sha256_only()
    shutil.rmtree(tmp, ignore_errors=True)

    tps = {k: n_tok / statistics.median(v) for k, v in times.items()}
    limit = tps[f"forward stopped after layer {args.layer} (limit)"]
    full = tps["forward (full)"]
    print(
        f"{h.model_id}, site {site}, {args.batches} batches of {args.batch}x{args.seq_len} "
        f"tokens, median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'run':<42} {'tok/s':>9} {'vs limit':>9} {'vs full':>8}")
    for k, v in tps.items():
        print(f"{k:<42} {v:>9.0f} {v / limit:>8.2f}x {v / full:>7.2f}x")
    hash_s = statistics.median(hashed)
    print(f"{'sha256 of every shard (alone)':<42} {n_tok / hash_s:>9.0f}   "
          f"({1e3 * hash_s:.1f} ms for {n_tok} rows)")  # fmt: skip
    store_cost = tps["capture hf"] / tps["capture hf -> store"] - 1
    print(f"store writing adds {100 * store_cost:.1f}% to hf capture time (target <= 10%)")
    verified = tps["capture hf -> store"] / tps["capture hf -> store -> verified read"]
    print(f"verified read-back adds {100 * (verified - 1):.1f}% to capture -> store time "
          f"({verified:.3f}x; rows timed apart)")  # fmt: skip
    # the same ratio from the two parts of each run (paired, so a machine whose load drifts
    # between rows does not move it), and the hash's share of it
    read_frac = statistics.median(paired)
    store_s = statistics.median(times["capture hf -> store"])
    print(f"verified read-back adds {100 * read_frac:.1f}% to capture -> store time (paired "
          f"within each run; the sha256 alone {100 * hash_s / store_s:.1f}%; "
          f"budget <= 10%: {'within' if read_frac <= 0.10 else 'OVER'})")  # fmt: skip
    total = tps["capture hf"] / tps["capture hf -> store -> verified read"] - 1
    print(f"store writing + verified read add {100 * total:.1f}% to hf capture time "
          f"(budget <= 10%: {'within' if total <= 0.10 else 'OVER'})")  # fmt: skip
    print(f"hf capture at {tps['capture hf'] / limit:.2f}x the limit (target >= 0.90x)")


if __name__ == "__main__":
    main()
