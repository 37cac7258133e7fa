"""Recipe: a TopK SAE on the residual stream of the embedded model, measured end to end.

    steerlab capture --sites resid_post.6,attn_out.6 --corpus prose --tokens 2000000 \\
        --out runs/sae_store
    python saes/train_topk.py --store runs/sae_store --site resid_post.6 --tokens 2000000 \\
        --out runs/sae_resid6

Trains with ``steerlab sae train`` (progress bar, checkpoints; rerun to resume), then measures
FVU, L0 and dead latents over the whole store, CE/KL loss recovered with the SAE spliced into
the model (vs zero- and mean-ablation, on the store's own token windows), and writes
``OUT/report.json`` and ``OUT/report.html`` (training curves, latent density, a latent
dashboard). Beyond the store's size, training makes further passes in new shuffled orders.

The SAE and training options are SaeConfig's and TrainConfig's, with the library's defaults
(tied init, 1,000 warm-up steps, a 10M-token dead window, one epoch); the README's SAE used
``--init active_subspace --warmup-steps 50 --dead-tokens 1000000 --tokens 2000000``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from steerlab.capture.store import ActivationStore
from steerlab.cli import main as cli
from steerlab.config import (
    ConfigOptions,
    PendingConfig,
    add_config,
    check_nonnegative,
    check_positive,
    check_types,
)
from steerlab.models import load_model
from steerlab.saes import (
    SaeConfig,
    TrainConfig,
    activation_stats,
    evaluate,
    load_sae,
    save_saelens,
)
from steerlab.saes.splice import spliced_losses, store_windows
from steerlab.views import write_html
from steerlab.views.saes import density_figure, latent_dashboard, read_train_log, training_curves

# TrainConfig on the command line as `steerlab sae train` has it
TRAIN_OPTIONS = {"skip": ("checkpoint_dir",), "rename": {"max_tokens": "tokens"}}


@dataclass
class Recipe:
    """The recipe's own settings; the SAE's and the training's come from the library."""

    store: str = "runs/sae_store"
    """Activation store (from steerlab capture)."""
    site: str = "resid_post.6"
    """Store site to train on."""
    loss_windows: int = 32
    """Store windows for the CE/KL loss recovered."""
    eval_tokens: int | None = None
    """Tokens for the metrics and the dashboard (default: the whole store)."""
    dashboard_latents: int = 6
    """Latents shown in the dashboard, from frequent to rare."""
    threads: int | None = None
    """Torch threads (default: torch's choice)."""
    out: str = "runs/sae_resid6"
    """Output folder (``steerlab sae train`` output plus report.json and report.html)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "loss_windows", "eval_tokens", "threads")
        check_nonnegative(self, "dashboard_latents")


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, TrainConfig, PendingConfig]:
    """The recipe's settings, the training config, and the SAE options (the SaeConfig needs
    the store's width and model, so :meth:`PendingConfig.build` makes it once the store is open)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    recipe = add_config(ap, Recipe, title="Recipe")
    # d_in, site and model come from the store; 4608 latents = 8 x d_model of SmolLM2-135M
    sae_opts = add_config(ap, SaeConfig, skip=("d_in", "site", "model_id"),
                          rename={"d_sae": "width", "architecture": "arch"},
                          defaults={"d_sae": 4608}, title="SaeConfig")  # fmt: skip
    train_opts = add_config(ap, TrainConfig, **TRAIN_OPTIONS, title="TrainConfig")
    ns = ap.parse_args(argv)
    sae = PendingConfig(sae_opts, ns, ap)
    return recipe.build(ns, parser=ap), train_opts.build(ns, parser=ap), sae


def main(argv: list[str] | None = None) -> None:
    args, tcfg, sae_opts = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    store = ActivationStore(args.store)
    if args.site not in store.sites:
        raise SystemExit(f"store {args.store} has no site {args.site!r}; it holds "
                         f"{sorted(store.sites)}")  # fmt: skip
    sae_cfg = sae_opts.build(d_in=store.sites[args.site], site=args.site, model_id=store.model_id)

    t0 = time.perf_counter()
    # the command line trains (progress bar, checkpoints, resume); the same configs go through
    rc = cli(["sae", "train", "--store", args.store, "--site", args.site, "--out", str(out),
              *sae_opts.options.to_argv(sae_cfg),
              *ConfigOptions(TrainConfig, **TRAIN_OPTIONS).to_argv(tcfg)])  # fmt: skip
    if rc:
        raise SystemExit(rc)
    train_s = time.perf_counter() - t0

    sae = load_sae(out / "sae")
    t1 = time.perf_counter()
    metrics = evaluate(sae, store, args.site, n_tokens=args.eval_tokens)
    print(f"FVU {metrics.fvu:.4f}  L0 {metrics.l0:.2f}  dead {100 * metrics.dead_frac:.2f}%  "
          f"dense {100 * metrics.dense_frac:.2f}%  over {metrics.n_tokens:,} tokens")  # fmt: skip
    save_saelens(sae, out / "saelens", density=metrics.density)

    handle = load_model(store.model_id, device="cpu")
    ids = store_windows(store, args.loss_windows)
    mean = activation_stats(store, args.site, n_tokens=65536).mean.float()
    losses = spliced_losses(handle, sae, ids, mean=mean, batch_size=8)
    for name, r in (("CE", losses.ce), ("KL", losses.kl)):
        print(f"{name}: clean {r.clean:.4f} spliced {r.spliced:.4f} zero {r.zero_abl:.4f} "
              f"mean {r.mean_abl:.4f} recovered vs zero {r.vs_zero:.4f} vs mean {r.vs_mean:.4f}")  # fmt: skip
    eval_s = time.perf_counter() - t1

    summary = json.loads((out / "train.json").read_text())
    report = {
        "store": {"path": args.store, "n_tokens": store.n_tokens, "model_id": store.model_id},
        "sae": sae.cfg.to_dict(),
        "training_tokens": summary["tokens"],
        "epochs": summary["tokens"] / store.n_tokens,
        "init": summary["init"],
        "metrics": metrics.as_dict(),
        "loss": losses.as_dict(),
        "wall_s": {"train_this_run": train_s, "eval": eval_s},
        "note": "metrics and losses are measured on the training store (in-sample)",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))

    dens = metrics.density
    live = (dens > 0).nonzero().squeeze(1)
    pick = live[dens[live].argsort(descending=True)]
    step = max(1, len(pick) // max(args.dashboard_latents, 1))
    latents = pick[::step][: args.dashboard_latents].tolist()  # frequent to rare
    figs = {
        "Training curves": training_curves(read_train_log(out / "train_log.jsonl")),
        "Latent density": density_figure(dens),
        **latent_dashboard(sae, store, handle, latents, n_tokens=args.eval_tokens),
    }
    ce = losses.ce
    notes = (f"{sae.cfg.name} on {store.n_tokens:,} stored tokens of {args.site} "
             f"({summary['tokens']:,} training tokens). FVU {metrics.fvu:.4f}, L0 "
             f"{metrics.l0:.1f}, dead {100 * metrics.dead_frac:.2f}%, CE loss recovered "
             f"{ce.vs_zero:.4f} vs zero-ablation and {ce.vs_mean:.4f} vs mean-ablation "
             f"(CE clean {ce.clean:.3f}, spliced {ce.spliced:.3f}).")  # fmt: skip
    write_html(figs, out / "report.html", title=f"TopK SAE on {args.site}", notes=notes)
    print(f"wrote {out / 'report.json'} and {out / 'report.html'}")


if __name__ == "__main__":
    main()
