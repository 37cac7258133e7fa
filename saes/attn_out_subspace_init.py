"""Recipe: attention outputs live in a low-dimensional subspace, and initialising SAE latents
inside it keeps them alive (Wang et al. 2025, arXiv 2508.16929), on the embedded model.

    python saes/attn_out_subspace_init.py --store runs/sae_store2m --eval-store runs/sae_eval \\
        --site attn_out.6 --width 18432 --tokens 10000000 --dead-window 10000000 \\
        --seeds 0,1,2 --out runs/attn_out_init

Part 1, effective ranks: the number of principal directions explaining 99% of the variance of
``attn_out``, ``mlp_out`` and ``resid_post`` at several layers, from mean/covariance streamed in
float64 over ``--rank-tokens`` prose tokens (captured in memory, no store).

Part 2, dead latents per init: per seed, three TopK SAEs on ``--site`` (default
``attn_out.6``) of the store, with ``random`` (the paper's baseline), ``tied`` and
``active_subspace`` inits, trained from one read of the store on the same batches (equal
tokens; sink rows left out of statistics, batches and metrics). AuxK is off by default so that
the init alone decides which latents die. Two dead counts: latents that did not fire during
the last ``--dead-window`` training tokens (a fixed window, the paper's 10M by default), and
latents that never fire on the held-out ``--eval-store``. The paper's effect (far fewer dead
latents with active-subspace init) shows at large widths (32 x d_model) and long runs; a
smaller or shorter run can show the direction at best, and its window must fit in the run.

Writes ``OUT/report.json`` and ``OUT/report.html``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steerlab.capture import capture
from steerlab.capture.store import ActivationStore
from steerlab.datasets.corpora import chunk_tokens, load_texts
from steerlab.models import load_model
from steerlab.saes import SaeConfig, StatsFitter, TrainConfig, evaluate, train
from steerlab.views import write_html
from steerlab.views.saes import density_figure, explained_variance_by_rank, training_curves

KINDS = ("attn_out", "mlp_out", "resid_post")
INITS = ("random", "tied", "active_subspace")


def effective_ranks(args, handle) -> tuple[dict, dict]:
    """Stats per site over all tokens and over tokens after the first of each window.

    The first token of a window is the attention sink: its "massive activations" (a few
    dimensions thousands of times the typical size) can carry most of a site's variance and
    make the residual stream look rank 1. Both views are reported.
    """
    layers = [int(x) for x in args.layers.split(",")]
    sites = [f"{k}.{layer}" for layer in layers for k in KINDS]
    chunks = chunk_tokens(handle.tokenizer, load_texts(args.corpus), seq_len=128,
                          n_tokens=args.rank_tokens)  # fmt: skip
    fitters = {(s, v): StatsFitter(handle.d_model) for s in sites for v in ("all", "no_first")}
    ids = chunks.input_ids
    with tqdm(total=ids.numel(), desc="ranks", unit="tok", unit_scale=True) as bar:
        for i in range(0, len(ids), 8):
            cap = capture(handle, ids[i : i + 8], sites, batch_size=8)
            later = cap.positions > 0
            for s in sites:
                fitters[s, "all"].update(cap[s])
                fitters[s, "no_first"].update(cap[s][later])
            bar.update(ids[i : i + 8].numel())
    stats = {key: f.finalize() for key, f in fitters.items()}
    table = {
        s: {f"{m}_{v}": val for v in ("all", "no_first")
            for m, val in (("rank99", stats[s, v].effective_rank(0.99)),
                           ("rank90", stats[s, v].effective_rank(0.9)),
                           ("fraction99", stats[s, v].effective_rank(0.99) / handle.d_model),
                           ("gamma", stats[s, v].gamma))}
        for s in sites
    }  # fmt: skip
    return stats, table


def dead_by_init(args, store, eval_store, seed: int) -> tuple[dict, dict, dict]:
    d_in = store.sites[args.site]
    configs = [SaeConfig(d_in=d_in, d_sae=args.width, k=args.k, site=args.site, init=i,
                         model_id=store.model_id, name=f"{args.site}.{i}.seed{seed}")
               for i in INITS]  # fmt: skip
    if args.dead_window > args.tokens:
        raise SystemExit(f"--dead-window {args.dead_window:,} is longer than the run "
                         f"({args.tokens:,} tokens): no latent could count as dead")  # fmt: skip
    cfg = TrainConfig(batch_size=args.batch_size, max_tokens=args.tokens, lr=args.lr,
                      auxk_alpha=args.auxk_alpha, dead_tokens=args.dead_window, seed=seed,
                      log_every=5, checkpoint_dir=str(Path(args.out) / f"ckpt-seed{seed}"),
                      checkpoint_every=50)  # fmt: skip
    logs = {c.name: [] for c in configs}
    with tqdm(total=args.tokens, desc=f"3 inits, seed {seed}", unit="tok", unit_scale=True) as bar:

        def on_progress(p) -> None:
            for name, m in p.metrics.items():
                logs[name].append({"tokens": p.tokens, **m})
            bar.update(p.tokens - bar.n)
            bar.set_postfix({n.split(".")[-2]: f"{100 * m['dead_frac']:.0f}%"
                             for n, m in p.metrics.items()}, refresh=False)  # fmt: skip

        result = train(store, configs, cfg, callback=on_progress)
    metrics = {n: evaluate(sae, eval_store, args.site, n_tokens=args.eval_tokens)
               for n, sae in result.saes.items()}  # fmt: skip
    rows = {
        c.init: {"name": c.name, **metrics[c.name].as_dict(),
                 "seed": seed,
                 "window_dead_frac": (result.last_metrics.get(c.name) or {}).get("dead_frac"),
                 "init_report": result.init_reports[c.name]}
        for c in configs
    }  # fmt: skip
    return rows, logs, {c.init: metrics[c.name].density for c in configs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="runs/sae_store")
    ap.add_argument("--site", default="attn_out.6")
    ap.add_argument("--layers", default="2,6,10,14,18,22,26", help="layers for the ranks")
    ap.add_argument("--rank-tokens", type=int, default=16384)
    ap.add_argument("--corpus", default="prose")
    ap.add_argument("--eval-store", default="runs/sae_eval",
                    help="held-out store (saes/train_topk.py --only-eval-store captures it)")  # fmt: skip
    ap.add_argument("--width", type=int, default=18432, help="latents (32 x d_model)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=10_000_000, help="training tokens per SAE")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=None, help="default: the trainer's")
    ap.add_argument("--auxk-alpha", type=float, default=0.0)
    ap.add_argument("--dead-window", type=int, default=10_000_000,
                    help="dead = did not fire over this many final training tokens")  # fmt: skip
    ap.add_argument("--eval-tokens", type=int, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--skip-ranks", action="store_true")
    ap.add_argument("--skip-inits", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/attn_out_init")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args)}
    figs = {}

    if not args.skip_ranks:
        t0 = time.perf_counter()
        handle = load_model(device="cpu")
        stats, table = effective_ranks(args, handle)
        report["effective_rank"] = table
        report["wall_s_ranks"] = time.perf_counter() - t0
        print(f"{'':>14} {'all tokens':>20} {'without position 0':>22}")
        print(f"{'site':>14} {'rank@99%':>9} {'rank@90%':>10} {'rank@99%':>11} {'rank@90%':>10}")
        for s, r in table.items():
            print(f"{s:>14} {r['rank99_all']:>9} {r['rank90_all']:>10} "
                  f"{r['rank99_no_first']:>11} {r['rank90_no_first']:>10}")  # fmt: skip
        for kind in KINDS:
            for v, what in (("no_first", "without position 0"), ("all", "all tokens")):
                figs[f"Explained variance vs rank: {kind}, {what}"] = explained_variance_by_rank(
                    {s: st for (s, vv), st in stats.items() if s.startswith(kind) and vv == v},
                    title=f"{kind} ({what})",
                )

    if not args.skip_inits:
        t0 = time.perf_counter()
        store = ActivationStore(args.store)
        eval_store = ActivationStore(args.eval_store)
        report["dead_by_init"] = {}
        for seed in (int(v) for v in args.seeds.split(",")):
            rows, logs, densities = dead_by_init(args, store, eval_store, seed)
            report["dead_by_init"][seed] = rows
            for init, r in rows.items():
                print(f"seed {seed} {init:>16}: dead over the last {args.dead_window:,} "
                      f"training tokens {100 * r['window_dead_frac']:6.2f}%, never fired on "
                      f"{r['n_tokens']:,} held-out tokens {100 * r['dead_frac']:6.2f}%  FVU "
                      f"{r['fvu']:.4f}  L0 {r['l0']:.1f}  (d_active "
                      f"{r['init_report']['d_active']})")  # fmt: skip
        report["store_tokens"] = store.n_tokens
        report["wall_s_inits"] = time.perf_counter() - t0
        figs["Training curves per init (last seed)"] = training_curves(
            {n.split(".")[-2]: rows_ for n, rows_ in logs.items()}
        )
        figs["Latent density per init (last seed)"] = density_figure(densities)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    write_html(figs, out / "report.html", title=f"Active-subspace init on {args.site}",
               notes=__doc__.split("\n\n", 1)[1])  # fmt: skip
    print(f"wrote {out / 'report.json'} and {out / 'report.html'}")


if __name__ == "__main__":
    main()
