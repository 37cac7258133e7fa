"""Recipe: attention outputs live in a low-dimensional subspace, and initialising SAE latents
inside it keeps them alive (Wang et al. 2025, arXiv 2508.16929), on the embedded model.

    python saes/attn_out_subspace_init.py --store runs/sae_store --out runs/attn_out_init

Part 1, effective ranks: the number of principal directions explaining 99% of the variance of
``attn_out``, ``mlp_out`` and ``resid_post`` at several layers, from mean/covariance streamed in
float64 over ``--rank-tokens`` prose tokens (captured in memory, no store).

Part 2, dead latents per init: three TopK SAEs on ``--site`` (default ``attn_out.6``) of the
store, with ``random``, ``tied`` and ``active_subspace`` inits, trained from one read of the
store on the same batches (equal tokens). Dead = never fired over the evaluated tokens. The SAE
and training settings are SaeConfig's and TrainConfig's (the library's defaults); pass
``--auxk-alpha 0`` so that the init alone decides which latents die (AuxK revives them). The
README's figures used ``--tokens 524288 --auxk-alpha 0 --warmup-steps 50``.

Writes ``OUT/report.json`` and ``OUT/report.html``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from steerlab.capture import capture
from steerlab.capture.store import ActivationStore
from steerlab.config import PendingConfig, add_config, check_positive, check_types
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


def dead_by_init(args, sae_cfg: SaeConfig, cfg: TrainConfig, store) -> tuple[dict, dict, dict]:
    configs = [replace(sae_cfg, init=i, name=None) for i in INITS]
    logs = {c.name: [] for c in configs}
    total = cfg.max_tokens or store.n_tokens // cfg.batch_size * cfg.batch_size
    with tqdm(total=total, desc="3 inits", unit="tok", unit_scale=True) as bar:

        def on_progress(p) -> None:
            for name, m in p.metrics.items():
                logs[name].append({"tokens": p.tokens, **m})
            bar.update(p.tokens - bar.n)
            bar.set_postfix({n.rsplit(".", 1)[-1]: f"{100 * m['dead_frac']:.0f}%"
                             for n, m in p.metrics.items()}, refresh=False)  # fmt: skip

        result = train(store, configs, cfg, callback=on_progress)
    metrics = {n: evaluate(sae, store, args.site, n_tokens=args.eval_tokens)
               for n, sae in result.saes.items()}  # fmt: skip
    rows = {
        c.init: {"name": c.name, **metrics[c.name].as_dict(),
                 "train_dead_frac": (result.last_metrics.get(c.name) or {}).get("dead_frac"),
                 "init_report": result.init_reports[c.name]}
        for c in configs
    }  # fmt: skip
    return rows, logs, {c.init: metrics[c.name].density for c in configs}


@dataclass
class Recipe:
    """The recipe's own settings; the SAEs' and the training's come from the library."""

    store: str = "runs/sae_store"
    """Activation store (from steerlab capture) for the SAEs."""
    site: str = "attn_out.6"
    """Store site the three SAEs train on."""
    layers: tuple[int, ...] = (2, 6, 10, 14, 18, 22, 26)
    """Layers whose effective ranks are measured."""
    rank_tokens: int = 16384
    """Prose tokens for the effective ranks (captured in memory)."""
    corpus: str = "prose"
    """Corpus of the effective ranks."""
    eval_tokens: int | None = None
    """Tokens for the dead-latent count (default: the whole store)."""
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


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, TrainConfig, PendingConfig]:
    """The recipe's settings, the training config and the SAE options (built per init once
    the store gives ``d_in``)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    recipe = add_config(ap, Recipe, title="Recipe")
    # one config per init is made from this one; 4608 latents = 8 x d_model
    sae_opts = add_config(ap, SaeConfig, skip=("d_in", "site", "model_id", "init", "name"),
                          rename={"d_sae": "width", "architecture": "arch"},
                          defaults={"d_sae": 4608}, title="SaeConfig")  # fmt: skip
    train_opts = add_config(ap, TrainConfig, skip=("checkpoint_dir",),
                            rename={"max_tokens": "tokens"}, title="TrainConfig")  # fmt: skip
    ns = ap.parse_args(argv)
    args: Recipe = recipe.build(ns, parser=ap)
    tcfg = train_opts.build(ns, parser=ap, checkpoint_dir=str(Path(args.out) / "ckpt"))
    return args, tcfg, PendingConfig(sae_opts, ns, ap)


def main(argv: list[str] | None = None) -> None:
    args, tcfg, sae_opts = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": asdict(args), "train": asdict(tcfg)}
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
        if args.site not in store.sites:
            raise SystemExit(f"store {args.store} has no site {args.site!r}; it holds "
                             f"{sorted(store.sites)}")  # fmt: skip
        sae_cfg = sae_opts.build(d_in=store.sites[args.site], site=args.site,
                                 model_id=store.model_id)  # fmt: skip
        rows, logs, densities = dead_by_init(args, sae_cfg, tcfg, store)
        report["dead_by_init"] = rows
        report["store_tokens"] = store.n_tokens
        report["wall_s_inits"] = time.perf_counter() - t0
        for init, r in rows.items():
            print(f"{init:>16}: dead {100 * r['dead_frac']:6.2f}%  FVU {r['fvu']:.4f}  "
                  f"L0 {r['l0']:.1f}  (d_active {r['init_report']['d_active']})")  # fmt: skip
        figs["Training curves per init"] = training_curves(
            {n.rsplit(".", 1)[-1]: rows_ for n, rows_ in logs.items()}
        )
        figs["Latent density per init"] = density_figure(densities)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    write_html(figs, out / "report.html", title=f"Active-subspace init on {args.site}",
               notes=__doc__.split("\n\n", 1)[1])  # fmt: skip
    print(f"wrote {out / 'report.json'} and {out / 'report.html'}")


if __name__ == "__main__":
    main()
