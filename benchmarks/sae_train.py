"""SAE training speed and quality on the same activations: steerlab's trainer against a plain
dense TopK loop (the floor) and EleutherAI's sparsify.

    python benchmarks/sae_train.py --store runs/sae_store --site resid_post.6 \\
        --tokens 200000 --width 4608 --k 32 --batch 4096

Every method makes one pass over the same ``--tokens`` rows of the store (read once, in one
shuffled order, into memory) with Adam at ``2e-4 / sqrt(width / 2**14)`` and the same linear
warm-up, then its SAE is scored on ``--eval-tokens`` other rows of the store: FVU about the mean
(float64) and the fraction of latents that never fire there. Speed is training tokens per
second of the pass (initialisation excluded, reported apart).

- ``steerlab``: :func:`steerlab.saes.train` on the tensor (tied init with fitted encoder scale,
  ``b_dec`` = mean, sparse encoder backward, ``embedding_bag`` decoder, AuxK on).
- ``dense``: the floor every SAE library starts from: ``pre = (x − b_dec) W_enc + b_enc``, TopK,
  scatter into a dense ``[batch, width]`` code, ``z W_dec + b_dec``, autograd through dense
  matmuls, unit-norm decoder with the parallel gradient removed; tied init, ``b_dec`` = the first
  batch's mean.
- ``sparsify``: ``sparsify.SparseCoder`` (PyPI ``eai-sparsify``, a benchmark-only extra:
  ``pip install --no-deps eai-sparsify simple-parsing natsort docstring-parser``) driven by the
  minimal loop of its trainer: ``b_dec`` = the first batch's mean, loss = FVU, the same
  decoder-norm steps; AuxK off (its default). Its package ``__init__`` imports the trainer and
  its heavy dependencies, so only the modules the coder needs are loaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import types
from collections.abc import Callable

import torch
from torch import Tensor

from steerlab.capture.store import ActivationStore
from steerlab.saes import MetricsFitter, SaeConfig, TrainConfig, lr_for_width, train


def load_rows(store: ActivationStore, site: str, n_train: int, n_eval: int, seed: int):
    """``n_train + n_eval`` rows of one shuffled pass of the store, split in two."""
    rows, got = [], 0
    for x in store.iter_batches(site, 8192, seed=seed, drop_last=False):
        rows.append(x)
        got += x.shape[0]
        if got >= n_train + n_eval:
            break
    X = torch.cat(rows)
    if X.shape[0] < n_train + n_eval:
        raise SystemExit(f"the store has {X.shape[0]} rows, fewer than {n_train + n_eval}")
    return X[:n_train].contiguous(), X[n_train : n_train + n_eval].contiguous()


def score(reconstruct: Callable[[Tensor], tuple[Tensor, Tensor]], X: Tensor, width: int) -> dict:
    """FVU and dead fraction on ``X``; ``reconstruct(x) -> (x̂, [width] firing counts)``."""
    fit = MetricsFitter(X.shape[1], width)
    with torch.no_grad():
        for i in range(0, X.shape[0], 4096):
            x = X[i : i + 4096]
            x_hat, counts = reconstruct(x)
            fit.update(x, x_hat, counts)
    m = fit.finalize()
    return {"fvu": m.fvu, "l0": m.l0, "dead_frac": m.dead_frac}


def _counts(idx: Tensor, acts: Tensor, width: int) -> Tensor:
    fired = idx[acts > 0]
    return torch.zeros(width, dtype=torch.long).index_add_(0, fired, torch.ones_like(fired))


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def run_steerlab(X, E, args) -> dict:
    cfg = SaeConfig(d_in=X.shape[1], d_sae=args.width, k=args.k, init=args.init)
    tcfg = TrainConfig(batch_size=args.batch, max_tokens=(X.shape[0] // args.batch) * args.batch,
                       warmup_steps=args.warmup, seed=args.seed, log_every=10**9)  # fmt: skip
    last = {}
    t0 = time.perf_counter()
    res = train(X, [cfg], tcfg, callback=lambda p: last.update(rate=p.tokens_per_s))
    wall = time.perf_counter() - t0
    sae = res.saes[cfg.name]
    tokens = res.tokens
    train_s = tokens / last["rate"]

    def rec(x):
        acts, idx = sae.encode(x)
        return sae.decode(acts, idx), _counts(idx, acts, args.width)

    return {"tokens": tokens, "train_s": train_s, "init_s": wall - train_s,
            **score(rec, E, args.width)}  # fmt: skip


def run_dense(X, E, args) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    d, n, k = X.shape[1], args.width, args.k
    t0 = time.perf_counter()
    W_dec = torch.randn(n, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec = W_dec.requires_grad_()
    W_enc = W_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(n, requires_grad=True)
    b_dec = X[: args.batch].mean(0).clone().requires_grad_()
    params = [W_enc, b_enc, W_dec, b_dec]
    lr = lr_for_width(n)
    opt = torch.optim.Adam(params, lr=lr, eps=6.25e-10)
    init_s = time.perf_counter() - t0

    def forward(x):
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return z @ W_dec + b_dec, idx, vals.relu()

    steps = X.shape[0] // args.batch
    t0 = time.perf_counter()
    for s in range(steps):
        x = X[s * args.batch : (s + 1) * args.batch]
        for group in opt.param_groups:
            group["lr"] = lr * _warmup(s, args.warmup)
        x_hat, _, _ = forward(x)
        loss = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
    train_s = time.perf_counter() - t0

    def rec(x):
        x_hat, idx, acts = forward(x)
        return x_hat, _counts(idx, acts, n)

    return {"tokens": steps * args.batch, "train_s": train_s, "init_s": init_s,
            **score(rec, E, n)}  # fmt: skip


def _import_sparsify():
    """``sparsify.sparse_coder`` without running ``sparsify/__init__`` (which imports the
    trainer and its dependencies: datasets, schedulefree, bitsandbytes, ...)."""
    spec = importlib.util.find_spec("sparsify")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "sparsify" not in sys.modules:
        pkg = types.ModuleType("sparsify")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = pkg
    from sparsify.config import SparseCoderConfig
    from sparsify.sparse_coder import SparseCoder

    return SparseCoder, SparseCoderConfig


def run_sparsify(X, E, args) -> dict | None:
    mod = _import_sparsify()
    if mod is None:
        print("sparsify not installed: pip install --no-deps eai-sparsify simple-parsing "
              "natsort docstring-parser")  # fmt: skip
        return None
    SparseCoder, SparseCoderConfig = mod
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    sae = SparseCoder(X.shape[1], SparseCoderConfig(num_latents=args.width, k=args.k),
                      device="cpu")  # fmt: skip
    sae.b_dec.data = X[: args.batch].mean(0).clone()  # as its trainer does at step 0
    lr = lr_for_width(args.width)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10)
    init_s = time.perf_counter() - t0
    steps = X.shape[0] // args.batch
    t0 = time.perf_counter()
    for s in range(steps):
        x = X[s * args.batch : (s + 1) * args.batch]
        for group in opt.param_groups:
            group["lr"] = lr * _warmup(s, args.warmup)
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
    train_s = time.perf_counter() - t0

    def rec(x):
        out = sae(x)
        return out.sae_out, _counts(out.latent_indices, out.latent_acts, args.width)

    return {"tokens": steps * args.batch, "train_s": train_s, "init_s": init_s,
            **score(rec, E, args.width)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="runs/sae_store")
    ap.add_argument("--site", default="resid_post.6")
    ap.add_argument("--tokens", type=int, default=200_000, help="training tokens (one pass)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=5, help="linear warm-up steps (all methods)")
    ap.add_argument("--init", default="tied", choices=["tied", "active_subspace", "random"])
    ap.add_argument("--methods", default="dense,sparsify,steerlab")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = ActivationStore(args.store)
    X, E = load_rows(store, args.site, args.tokens, args.eval_tokens, args.seed)
    print(f"{X.shape[0]:,} training rows + {E.shape[0]:,} eval rows of {args.site} from "
          f"{args.store}; width {args.width}, k {args.k}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    runners = {"dense": run_dense, "sparsify": run_sparsify, "steerlab": run_steerlab}
    results = {}
    for name in args.methods.split(","):
        torch.manual_seed(args.seed)
        r = runners[name](X, E, args)
        if r is None:
            continue
        r["tokens_per_s"] = r["tokens"] / r["train_s"]
        results[name] = r
        print(f"{name:>9}: {r['tokens_per_s']:>9,.0f} tok/s  FVU {r['fvu']:.4f}  L0 {r['l0']:.1f}"
              f"  dead {100 * r['dead_frac']:5.1f}%  (init {r['init_s']:.1f} s)")  # fmt: skip
    if "steerlab" in results:
        s = results["steerlab"]
        for ref in ("dense", "sparsify"):
            if ref in results:
                o = results[ref]
                print(f"steerlab / {ref}: speed x{s['tokens_per_s'] / o['tokens_per_s']:.2f}, "
                      f"FVU {s['fvu']:.4f} vs {o['fvu']:.4f} "
                      f"({'no worse' if s['fvu'] <= o['fvu'] else 'worse'})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    assert all(math.isfinite(r["fvu"]) for r in results.values())


if __name__ == "__main__":
    main()
