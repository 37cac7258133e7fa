"""Capture speed at one site of the embedded model, as ratios against the limits.

The limit is a plain forward pass that stops after the site's layer (the blocks after it are
cut off the model); the full forward is the reference every hook library starts from. Each
backend's capture and the store writer run the same batches, interleaved over repeats, and the
median tokens/s of each is reported.

    python benchmarks/capture.py [--layer 6] [--batch 8] [--seq-len 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import torch

from steerlab.capture import capture, capture_to_store
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
        capture_to_store(h, chunks, site, f"{tmp}/s", batch_size=args.batch, shard_tokens=4096)

    runs = {
        "forward (full)": forward(False),
        f"forward stopped after layer {args.layer} (limit)": forward(True),
        "capture hf": cap("hf"),
        "capture hf -> store": store,
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
    store_cost = tps["capture hf"] / tps["capture hf -> store"] - 1
    print(f"store writing adds {100 * store_cost:.1f}% to hf capture time (target <= 10%)")
    print(f"hf capture at {tps['capture hf'] / limit:.2f}x the limit (target >= 0.90x)")


if __name__ == "__main__":
    main()
