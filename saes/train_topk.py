"""Recipe: a TopK SAE on the residual stream of the embedded model, measured on held-out text.

    steerlab capture --sites resid_post.6,attn_out.6 --corpus prose+code --tokens 2100000 \\
        --out runs/sae_store2m
    python saes/train_topk.py --store runs/sae_store2m --site resid_post.6 --tokens 2000000 \\
        --init active_subspace --dead-tokens 1000000 --checkpoint-every 50 \\
        --eval-store runs/sae_eval --out runs/sae_resid6_2m

Trains with ``steerlab sae train`` (progress bar, checkpoints; rerun to resume), then captures
(once) a held-out evaluation store from *other documents*: those of the same corpus after the
last document the training capture was asked for (its ``n_sequences_total`` windows), so no
evaluated token was read in training. Every reported metric comes from that store: FVU, L0,
dead and dense latents with the attention-sink rows left out (and FVU with them, for
comparison), and CE/KL loss recovered with the SAE spliced into the model (vs zero- and
mean-ablation, on the held-out store's token windows; the non-sink tokens replaced, and every
token for comparison). Writes ``OUT/report.json`` and ``OUT/report.html`` (training curves,
latent density, a latent dashboard). Beyond the training store's size, training makes further
passes in new shuffled orders.

The SAE and training options are SaeConfig's and TrainConfig's with the library's defaults, as
in ``steerlab sae train`` (tied init, a 10M-token AuxK dead window, one epoch, a checkpoint
every 1,000 steps); only the width, which SaeConfig leaves open, is the recipe's (4608 = 8 x
d_model). The command above sets what the SAE of docs/sae_results.md used: active-subspace
init, a 1M-token dead window and a checkpoint every 50 steps.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from steerlab.capture import capture_to_store
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
from steerlab.datasets.corpora import chunk_tokens, load_texts
from steerlab.models import load_model
from steerlab.positions import Positions
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

# SaeConfig and TrainConfig on the command line as `steerlab sae train` has them, so the
# recipe hands its configs on unchanged (d_in, site and model come from the store; the
# checkpoint folder is the output folder). 4608 latents = 8 x d_model of SmolLM2-135M.
SAE_OPTIONS = {
    "skip": ("d_in", "site", "model_id"),
    "rename": {"d_sae": "width", "architecture": "arch"},
    "defaults": {"d_sae": 4608},
}
TRAIN_OPTIONS = {"skip": ("checkpoint_dir",), "rename": {"max_tokens": "tokens"}}


@dataclass
class Recipe:
    """The recipe's own settings; the SAE's and the training's come from the library."""

    store: str = "runs/sae_store"
    """Activation store to train on (from steerlab capture)."""
    site: str = "resid_post.6"
    """Store site to train on."""
    eval_store: str = "runs/sae_eval"
    """Held-out store for every metric: captured once (from the documents after the training
    capture's) when it does not exist or is incomplete, opened as it is otherwise."""
    eval_capture_tokens: int = 131072
    """Tokens of the held-out store when it is captured."""
    only_eval_store: bool = False
    """Capture the held-out store and stop (no training)."""
    loss_windows: int = 32
    """Held-out windows for the CE/KL loss recovered."""
    eval_tokens: int | None = None
    """Held-out tokens for the metrics and the dashboard (default: the whole store)."""
    dashboard_latents: int = 6
    """Latents shown in the dashboard, from frequent to rare."""
    threads: int | None = None
    """Torch threads (default: torch's choice)."""
    out: str = "runs/sae_resid6"
    """Output folder (``steerlab sae train`` output plus report.json and report.html)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "eval_capture_tokens", "loss_windows", "eval_tokens", "threads")
        check_nonnegative(self, "dashboard_latents")


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, TrainConfig, PendingConfig]:
    """The recipe's settings, the training config, and the SAE options (the SaeConfig needs
    the store's width and model, so :meth:`PendingConfig.build` makes it once the store is
    open)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    recipe = add_config(ap, Recipe, title="Recipe")
    sae_opts = add_config(ap, SaeConfig, **SAE_OPTIONS, title="SaeConfig")
    train_opts = add_config(ap, TrainConfig, **TRAIN_OPTIONS, title="TrainConfig")
    ns = ap.parse_args(argv)
    return (
        recipe.build(ns, parser=ap),
        train_opts.build(ns, parser=ap),
        PendingConfig(sae_opts, ns, ap),
    )


def capture_held_out(
    train_store: ActivationStore, path: Path, n_tokens: int, handle
) -> ActivationStore:
    """A store of ``n_tokens`` from the documents after the training capture's window.

    The training capture packed ``n_sequences_total`` windows of ``seq_len`` tokens from the
    start of its corpus (:func:`steerlab.datasets.corpora.chunk_tokens`); packing the same
    corpus again gives the index of the last document it reached, and the held-out store
    starts at the next one. Rerunning resumes an interrupted capture.
    """
    cfg = train_store.manifest["config"]
    texts = load_texts(cfg["corpus"])
    seq_len, n_seq = int(cfg["seq_len"]), int(cfg["n_sequences_total"])
    add_bos = bool(cfg["tokenizer"]["add_bos"])
    window = chunk_tokens(handle.tokenizer, texts, seq_len=seq_len, n_tokens=seq_len * n_seq,
                          prepend_bos=add_bos)  # fmt: skip
    first = int(window.doc_ids.max()) + 1
    if first >= len(texts):
        raise SystemExit(f"the training capture used all {len(texts)} documents of "
                         f"{cfg['corpus']!r}; no held-out documents are left")  # fmt: skip
    chunks = chunk_tokens(handle.tokenizer, texts[first:], seq_len=seq_len, n_tokens=n_tokens,
                          prepend_bos=add_bos)  # fmt: skip
    print(f"held-out store: documents {first:,}-{len(texts) - 1:,} of {cfg['corpus']!r} "
          f"(training read documents 0-{first - 1:,}); {chunks.input_ids.numel():,} tokens")  # fmt: skip
    return capture_to_store(
        handle, chunks, list(train_store.sites), str(path),
        config={"corpus": cfg["corpus"], "first_document": first, "held_out_from": str(train_store.path)},
    )  # fmt: skip


def open_held_out(train_store: ActivationStore, args: Recipe, handle) -> ActivationStore:
    """The held-out store at ``args.eval_store``: opened if complete, else captured (or its
    interrupted capture resumed) by :func:`capture_held_out`."""
    path = Path(args.eval_store)
    if (path / "manifest.json").is_file():
        store = ActivationStore(path)
        if store.manifest["complete"]:
            if args.site not in store.sites:
                raise SystemExit(f"--eval-store {path} has no site {args.site!r}; it holds "
                                 f"{sorted(store.sites)}: give another --eval-store folder "
                                 "and the recipe captures it from the training store's corpus")  # fmt: skip
            return store
    return capture_held_out(train_store, path, args.eval_capture_tokens, handle)


def non_sink_positions(store: ActivationStore, n_windows: int) -> Positions:
    """The non-sink tokens of the windows :func:`store_windows` picks, as a position rule.

    The SAE was trained and is scored without the attention-sink rows, so the headline loss
    recovered replaces only the other tokens (as SAELens and Gemma Scope leave BOS alone).
    """
    T = int(store.manifest["config"]["seq_len"])
    total = store.n_tokens // T
    picks = torch.linspace(0, total - 1, min(n_windows, total)).round().long().unique()
    rows = (picks[:, None] * T + torch.arange(T)).reshape(-1)
    sink = store.site("sink")[rows].reshape(len(picks), T)
    keep = tuple(tuple(i for i in range(T) if not bool(sink[w, i])) for w in range(len(picks)))
    return Positions(part="prompt", tokens="indices", indices=keep)


def main(argv: list[str] | None = None) -> None:
    args, tcfg, sae_opts = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    train_store = ActivationStore(args.store)
    if args.site not in train_store.sites:
        raise SystemExit(f"--store {args.store} has no site {args.site!r}; it holds "
                         f"{sorted(train_store.sites)}")  # fmt: skip
    # built now so that a bad width or k is refused before the held-out capture
    sae_cfg = sae_opts.build(d_in=train_store.sites[args.site], site=args.site,
                             model_id=train_store.model_id)  # fmt: skip
    handle = load_model(train_store.model_id, device="cpu")
    store = open_held_out(train_store, args, handle)
    if args.only_eval_store:
        return

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
    with_sinks = evaluate(sae, store, args.site, n_tokens=args.eval_tokens, exclude_sinks=False)
    print(f"held-out, {metrics.sink_rows:,} sink rows left out: FVU {metrics.fvu:.4f}  "
          f"L0 {metrics.l0:.2f}  dead {100 * metrics.dead_frac:.2f}%  dense "
          f"{100 * metrics.dense_frac:.2f}%  over {metrics.n_tokens:,} tokens; with the sink "
          f"rows: FVU {with_sinks.fvu:.4f} over {with_sinks.n_tokens:,}")  # fmt: skip
    save_saelens(sae, out / "saelens", density=metrics.density)

    ids = store_windows(store, args.loss_windows)
    mean = activation_stats(train_store, args.site, n_tokens=65536).mean.float()
    # one forward holds every window: the indices rule lists the tokens per example
    rule = non_sink_positions(store, args.loss_windows)
    losses = spliced_losses(handle, sae, ids, mean=mean, batch_size=len(ids), positions=rule)
    losses_all = spliced_losses(handle, sae, ids, mean=mean, batch_size=8)
    for what, ls in (("non-sink tokens replaced", losses), ("every token replaced", losses_all)):
        for name, r in (("CE", ls.ce), ("KL", ls.kl)):
            print(f"{what:>24} {name}: clean {r.clean:.4f} spliced {r.spliced:.4f} zero "
                  f"{r.zero_abl:.4f} mean {r.mean_abl:.4f} recovered vs zero {r.vs_zero:.4f} "
                  f"vs mean {r.vs_mean:.4f}")  # fmt: skip
    eval_s = time.perf_counter() - t1

    summary = json.loads((out / "train.json").read_text())
    report = {
        "store": {"path": args.store, "n_tokens": train_store.n_tokens,
                  "model_id": train_store.model_id},
        "eval_store": {"path": args.eval_store, "n_tokens": store.n_tokens,
                       "config": store.manifest["config"]},
        "sae": sae.cfg.to_dict(),
        "train": summary["train"],
        "training_tokens": summary["tokens"],
        "epochs": summary["tokens"] / train_store.n_tokens,
        "init": summary["init"],
        "metrics": metrics.as_dict(),
        "metrics_with_sinks": with_sinks.as_dict(),
        "loss": losses.as_dict(),
        "loss_every_token": losses_all.as_dict(),
        "wall_s": {"train_this_run": train_s, "eval": eval_s},
        "note": "held-out store (other documents); metrics leave the attention-sink rows out "
                "(metrics_with_sinks keeps them); loss replaces the non-sink tokens "
                "(loss_every_token: all)",
    }  # fmt: skip
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
    notes = (f"{sae.cfg.name} trained on {summary['tokens']:,} tokens of {args.site}, measured "
             f"on {metrics.n_tokens:,} held-out tokens (attention sinks left out; FVU with them "
             f"{with_sinks.fvu:.4f}). FVU {metrics.fvu:.4f}, L0 "
             f"{metrics.l0:.1f}, dead {100 * metrics.dead_frac:.2f}%, CE loss recovered "
             f"{ce.vs_zero:.4f} vs zero-ablation and {ce.vs_mean:.4f} vs mean-ablation "
             f"(CE clean {ce.clean:.3f}, spliced {ce.spliced:.3f}).")  # fmt: skip
    write_html(figs, out / "report.html", title=f"TopK SAE on {args.site}", notes=notes)
    print(f"wrote {out / 'report.json'} and {out / 'report.html'}")


if __name__ == "__main__":
    main()
