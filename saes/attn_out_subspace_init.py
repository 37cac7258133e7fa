"""Recipe: attention outputs live in a low-dimensional subspace, and initialising SAE latents
inside it keeps them alive (Wang et al. 2025, arXiv 2508.16929), on the embedded model.

    python saes/attn_out_subspace_init.py --store runs/sae_store2m --eval-store runs/sae_eval \\
        --site attn_out.6 --width 18432 --tokens 10000000 --dead-window 10000000 \\
        --auxk-alpha 0 --log-every 5 --checkpoint-every 50 --seeds 0,1,2 --out runs/attn_out_init

Part 1, effective ranks: the number of principal directions explaining 99% of the variance of
``attn_out``, ``mlp_out`` and ``resid_post`` at several layers, from mean/covariance streamed in
float64 over ``--rank-tokens`` prose tokens (captured in memory, no store).

Part 2, dead latents per init: per seed, three TopK SAEs on ``--site`` (default
``attn_out.6``) of the store, with ``random`` (the paper's baseline), ``tied`` and
``active_subspace`` inits, trained from one read of the store on the same batches (equal
tokens; sink rows left out of statistics, batches and metrics). Two dead counts: latents that
did not fire during the last ``--dead-window`` training tokens (TrainConfig's ``dead_tokens``,
the paper's 10M by default), and latents that never fire on the held-out ``--eval-store``
(``saes/train_topk.py --only-eval-store`` captures it). The paper's effect (far fewer dead
latents with active-subspace init) shows at large widths (32 x d_model) and long runs; a
smaller or shorter run can show the direction at best, and its window must fit in the run.

The SAE and training options are SaeConfig's and TrainConfig's with the library's defaults
(AuxK on, one epoch); only the width, which SaeConfig leaves open, is the recipe's (4608 = 8 x
d_model). The paper's setting above passes ``--auxk-alpha 0`` so that the init alone decides
which latents die (AuxK revives them), its width (32 x d_model) and its 10M tokens; the
progress every 5 steps and a checkpoint every 50 are what docs/sae_results.md's runs used.

Writes ``OUT/report.json`` and ``OUT/report.html``; checkpoints go to ``OUT/ckpt-seed<seed>``
(rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steerlab.capture import capture
from steerlab.capture.store import ActivationStore
from steerlab.config import PendingConfig, add_config, check_positive, check_types, require
from steerlab.datasets.corpora import chunk_tokens, load_texts
from steerlab.models import load_model
from steerlab.saes import SaeConfig, StatsFitter, TrainConfig, evaluate, train
from steerlab.views import write_html
from steerlab.views.saes import density_figure, explained_variance_by_rank, training_curves

KINDS = ("attn_out", "mlp_out", "resid_post")
INITS = ("random", "tied", "active_subspace")


@dataclass
class Recipe:
    """The recipe's own settings; the SAEs' and the training's come from the library."""

    store: str = "runs/sae_store"
    """Activation store (from steerlab capture) for the SAEs."""
    site: str = "attn_out.6"
    """Store site the three SAEs train on."""
    eval_store: str = "runs/sae_eval"
    """Held-out store for the never-firing count and the FVU (saes/train_topk.py
    --only-eval-store captures it)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds (TrainConfig's seed: batch order and initialisations), one run of the three
    inits each."""
    layers: tuple[int, ...] = (2, 6, 10, 14, 18, 22, 26)
    """Layers whose effective ranks are measured."""
    rank_tokens: int = 16384
    """Prose tokens for the effective ranks (captured in memory)."""
    corpus: str = "prose"
    """Corpus of the effective ranks."""
    eval_tokens: int | None = None
    """Held-out tokens for the dead-latent count and the FVU (default: the whole store)."""
    skip_ranks: bool = False
    """Leave out part 1 (effective ranks)."""
    skip_inits: bool = False
    """Leave out part 2 (dead latents per init)."""
    threads: int | None = None
    """Torch threads (default: torch's choice)."""
    out: str = "runs/attn_out_init"
    """Output folder: report.json, report.html and the checkpoints."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "rank_tokens", "eval_tokens", "threads")
        require(self, "seeds", len(self.seeds) > 0 and min(self.seeds) >= 0
                and len(set(self.seeds)) == len(self.seeds), "distinct seeds >= 0")  # fmt: skip
        require(self, "layers", len(self.layers) > 0 and min(self.layers) >= 0,
                "one or more layers >= 0")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, TrainConfig, PendingConfig]:
    """The recipe's settings, the training config (its seed and checkpoint folder are set per
    seed from the recipe's) and the SAE options (built per init once the store gives
    ``d_in``)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    recipe = add_config(ap, Recipe, title="Recipe")
    # one config per init is made from this one; 4608 latents = 8 x d_model
    sae_opts = add_config(ap, SaeConfig, skip=("d_in", "site", "model_id", "init", "name"),
                          rename={"d_sae": "width", "architecture": "arch"},
                          defaults={"d_sae": 4608}, title="SaeConfig")  # fmt: skip
    # the AuxK dead window is also the window of the dead count: --dead-window, as before
    train_opts = add_config(ap, TrainConfig, skip=("checkpoint_dir", "seed"),
                            rename={"max_tokens": "tokens", "dead_tokens": "dead_window"},
                            title="TrainConfig")  # fmt: skip
    ns = ap.parse_args(argv)
    return (
        recipe.build(ns, parser=ap),
        train_opts.build(ns, parser=ap),
        PendingConfig(sae_opts, ns, ap),
    )


def effective_ranks(args: Recipe, handle) -> tuple[dict, dict]:
    """Stats per site over all tokens and over tokens after the first of each window.

    The first token of a window is the attention sink: its "massive activations" (a few
    dimensions thousands of times the typical size) can carry most of a site's variance and
    make the residual stream look rank 1. Both views are reported.
    """
    sites = [f"{k}.{layer}" for layer in args.layers for k in KINDS]
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


def run_tokens(cfg: TrainConfig, store: ActivationStore) -> int:
    """Tokens the trainer consumes: whole batches up to ``max_tokens``, or one epoch."""
    if cfg.max_tokens is None:
        return store.n_tokens // cfg.batch_size * cfg.batch_size
    return math.ceil(cfg.max_tokens / cfg.batch_size) * cfg.batch_size


def dead_by_init(
    args: Recipe, sae_cfg: SaeConfig, tcfg: TrainConfig, store, eval_store, seed: int
) -> tuple[dict, dict, dict]:
    """Train the three inits of ``sae_cfg`` on the same batches with ``seed``; their dead
    counts (in the final training window and on the held-out store) and held-out metrics."""
    # names as before, so that an earlier run's checkpoints resume
    configs = [replace(sae_cfg, init=i, name=f"{args.site}.{i}.seed{seed}") for i in INITS]
    cfg = replace(tcfg, seed=seed, checkpoint_dir=str(Path(args.out) / f"ckpt-seed{seed}"))
    logs = {c.name: [] for c in configs}
    total = run_tokens(cfg, store)
    with tqdm(total=total, desc=f"3 inits, seed {seed}", unit="tok", unit_scale=True) as bar:

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


def open_stores(
    args: Recipe, tcfg: TrainConfig, sae_opts: PendingConfig
) -> tuple[ActivationStore, ActivationStore, SaeConfig]:
    """The training and held-out stores and the SAE config, checked before any work starts."""
    store = ActivationStore(args.store)
    if args.site not in store.sites:
        raise SystemExit(f"--store {args.store} has no site {args.site!r}; it holds "
                         f"{sorted(store.sites)}")  # fmt: skip
    sae_cfg = sae_opts.build(d_in=store.sites[args.site], site=args.site, model_id=store.model_id)
    total = run_tokens(tcfg, store)
    if tcfg.dead_tokens > total:
        raise SystemExit(f"--dead-window {tcfg.dead_tokens:,} is longer than the run "
                         f"({total:,} tokens): no latent could count as dead; give a shorter "
                         "--dead-window or more --tokens")  # fmt: skip
    path = Path(args.eval_store)
    if not (path / "manifest.json").is_file() or not ActivationStore(path).manifest["complete"]:
        raise SystemExit(f"--eval-store {path} is not a complete store; capture it with: python "
                         f"saes/train_topk.py --store {args.store} --eval-store {path} "
                         "--only-eval-store")  # fmt: skip
    eval_store = ActivationStore(path)
    if args.site not in eval_store.sites:
        raise SystemExit(f"--eval-store {path} has no site {args.site!r}; it holds "
                         f"{sorted(eval_store.sites)}")  # fmt: skip
    return store, eval_store, sae_cfg


def main(argv: list[str] | None = None) -> None:
    args, tcfg, sae_opts = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    report: dict = {"args": asdict(args), "train": asdict(tcfg)}
    figs = {}
    # the stores and the SAE config are checked before part 1, which takes a while
    if not args.skip_inits:
        store, eval_store, sae_cfg = open_stores(args, tcfg, sae_opts)
        report["sae"] = sae_cfg.to_dict()
    out.mkdir(parents=True, exist_ok=True)

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
        report["dead_by_init"] = {}
        for seed in args.seeds:
            rows, logs, densities = dead_by_init(args, sae_cfg, tcfg, store, eval_store, seed)
            report["dead_by_init"][seed] = rows
            for init, r in rows.items():
                print(f"seed {seed} {init:>16}: dead over the last {tcfg.dead_tokens:,} "
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
