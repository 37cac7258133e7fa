"""``steerlab sae train`` / ``steerlab sae eval``.

The SAE and training options are generated from :class:`~steerlab.saes.SaeConfig` and
:class:`~steerlab.saes.TrainConfig` (types, defaults and attribute docstrings), so the command
and the library cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from steerlab import distributed as dist
from steerlab.capture.store import ActivationStore
from steerlab.cli.common import (
    CliError,
    HelpFormatter,
    check_writable,
    open_model,
    progress_bar,
    say,
    subcommand,
    write_json,
)
from steerlab.config import add_config, check_nonnegative, check_positive, check_types
from steerlab.saes import (
    SaeConfig,
    TrainConfig,
    activation_stats,
    evaluate,
    load_sae,
    load_saelens,
    save_sae,
    save_saelens,
    train,
)
from steerlab.saes.formats import SAELENS_WEIGHTS, STATE_JSON, find_checkpoint
from steerlab.saes.io import AnySae
from steerlab.saes.splice import spliced_losses, store_windows

SAE_TRAIN_LOG = "train_log.jsonl"
SAE_TRAIN_SUMMARY = "train.json"
SAE_EVAL_JSON = "eval.json"

TRAIN_EXAMPLES = """examples:
  steerlab sae train --store runs/sae_store --site resid_post.6 --width 4608 --k 32 \\
      --init active_subspace --out runs/sae_resid6
  steerlab sae train --store runs/sae_store --site resid_post.6 --width 1024 --tokens 500000 \\
      --warmup-steps 50 --out runs/small
  torchrun --nproc_per_node=4 -m steerlab sae train --store runs/sae_store \\
      --site resid_post.6 --width 65536 --out runs/big   # DDP: each GPU a quarter of each batch

Checkpoints go to OUT/checkpoint; rerunning the same command resumes exactly where it stopped.
The defaults are the library's (SaeConfig and TrainConfig); a short run wants a shorter
--warmup-steps than the default 1000 steps."""

EVAL_EXAMPLES = """examples:
  steerlab sae eval runs/sae_resid6 --store runs/sae_store
  steerlab sae eval runs/sae_resid6/saelens --store runs/sae_store --loss-windows 0"""


@dataclass
class TrainOptions:
    """Where ``steerlab sae train`` reads and writes."""

    store: str
    """Activation store directory (from steerlab capture)."""
    site: str
    """Store site to train on, e.g. resid_post.6."""
    out: str
    """Output directory (rerun the same command to resume)."""
    restart: bool = False
    """Ignore and replace a checkpoint in --out instead of resuming it."""

    def __post_init__(self) -> None:
        check_types(self)


@dataclass
class EvalOptions:
    """What ``steerlab sae eval`` measures."""

    dir: str
    """A steerlab sae train output directory, a steerlab SAE or a SAELens directory."""
    store: str
    """Activation store to evaluate on."""
    site: str | None = None
    """Store site (default: the SAE's site)."""
    tokens: int | None = None
    """Tokens for FVU, L0 and dead latents (default: the whole store)."""
    batch_size: int = 4096
    """Tokens per SAE forward pass."""
    loss_windows: int = 32
    """Store windows for the CE/KL loss recovered with the SAE spliced in (0: skip it)."""
    loss_batch_size: int = 8
    """Windows per model forward pass."""
    mean_tokens: int = 65536
    """Tokens whose mean is the mean-ablation baseline."""
    model: str | None = None
    """Model for the loss recovered (default: the store's model)."""
    device: str | None = None
    """cpu, cuda, ... (default: cuda when available, else cpu)."""
    out: str | None = None
    """JSON report (default: DIR/eval.json)."""
    saelens: str | None = None
    """Also write the SAE in the SAELens layout, with its measured sparsity, here."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "tokens", "batch_size", "loss_batch_size", "mean_tokens")
        check_nonnegative(self, "loss_windows")


def register(sub: Any) -> None:
    s = sub.add_parser("sae", help="train and evaluate sparse autoencoders",
                       description="Train and evaluate sparse autoencoders (TopK, ReLU-L1).",
                       formatter_class=HelpFormatter)  # fmt: skip
    ssub = s.add_subparsers(dest="sae_command", required=True, metavar="COMMAND")
    t = subcommand(ssub, "train", "train an SAE on a store site (rerun to resume)",
                   description="Train a TopK or ReLU-L1 SAE on one site of an activation store.",
                   epilog=TRAIN_EXAMPLES)  # fmt: skip
    t.set_defaults(
        fn=train_command,
        options=add_config(t, TrainOptions),
        sae_config=add_config(t, SaeConfig, skip=("d_in", "site", "model_id"),
                              rename={"d_sae": "width", "architecture": "arch"},
                              title="SAE (SaeConfig)"),
        train_config=add_config(t, TrainConfig, skip=("checkpoint_dir",),
                                rename={"max_tokens": "tokens"}, title="training (TrainConfig)"),
    )  # fmt: skip
    e = subcommand(ssub, "eval", "FVU, L0, dead %% and CE/KL loss recovered of an SAE",
                   epilog=EVAL_EXAMPLES)  # fmt: skip
    e.set_defaults(fn=eval_command, options=add_config(e, EvalOptions, positional=("dir",)))


def _postfix(m: dict[str, float]) -> dict[str, str]:
    return {
        "FVU": f"{m['fvu']:.4f}",
        "L0": f"{m['l0']:.1f}",
        "dead": f"{100 * m['dead_frac']:.1f}%",
    }


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (those after the checkpoint are replayed on resume)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train_command(args: argparse.Namespace) -> int:
    """Train one SAE on a store site; rerun with the same arguments to resume."""
    o: TrainOptions = args.options.build(args, parser=args.parser)
    opened = not dist.is_distributed()  # close only a process group this command opened
    info = dist.init()  # a no-op outside torchrun; then every rank trains, rank 0 reports
    if info.rank != 0:
        _train_rank(args, o)
    else:
        _train_main(args, o)
    if opened:
        dist.shutdown()
    return 0


def _train_main(args: argparse.Namespace, o: TrainOptions) -> None:
    """Rank 0 (or the only process): train, report, write the SAE and its summary."""
    out = Path(o.out)
    check_writable(out)
    tcfg: TrainConfig = args.train_config.build(args, parser=args.parser, checkpoint_dir=str(out))
    store = ActivationStore(o.store)
    if o.site not in store.sites:
        raise CliError(f"store {o.store} has no site {o.site!r}; it holds {sorted(store.sites)}")
    sae_cfg: SaeConfig = args.sae_config.build(
        args, parser=args.parser, d_in=store.sites[o.site], site=o.site, model_id=store.model_id
    )
    name = str(sae_cfg.name)  # SaeConfig derives it when not given
    if store.n_tokens < tcfg.batch_size:  # train() refuses it too, but after out/ exists
        raise CliError(f"--batch-size {tcfg.batch_size} is more than the {store.n_tokens:,} "
                       f"rows of store {o.store}: lower it or capture more tokens")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / SAE_TRAIN_LOG
    ckpt = find_checkpoint(out) if not o.restart else None
    state = json.loads((ckpt / STATE_JSON).read_text()) if ckpt else {"tokens": 0, "step": -1}
    _truncate_log(log_path, state["step"])
    per_epoch = store.n_tokens // tcfg.batch_size * tcfg.batch_size
    steps = None if tcfg.max_tokens is None else -(-tcfg.max_tokens // tcfg.batch_size)
    total = per_epoch if steps is None else steps * tcfg.batch_size
    verb = f"resuming at {state['tokens']:,} tokens" if ckpt else "training"
    say(f"{verb}: {name} on {o.store} ({store.n_tokens:,} tokens), "
        f"{total:,} tokens in batches of {tcfg.batch_size}")  # fmt: skip
    t0 = time.perf_counter()
    with progress_bar(total, "sae train") as bar, log_path.open("a") as log:
        bar.update(state["tokens"])

        def on_progress(p: Any) -> None:
            m = p.metrics[name]
            log.write(json.dumps({"step": p.step, "tokens": p.tokens,
                                  "tokens_per_s": p.tokens_per_s, **m}) + "\n")  # fmt: skip
            log.flush()
            bar.update(p.tokens - bar.n)
            bar.set_postfix(_postfix(m), refresh=False)

        result = train(store, [sae_cfg], tcfg, callback=on_progress, resume=not o.restart)
    sae = result.saes[name]
    save_sae(sae, out / "sae")
    save_saelens(sae, out / "saelens")
    summary = {
        "sae": sae_cfg.to_dict(), "train": dataclasses.asdict(tcfg), "store": str(o.store),
        "steps": result.steps, "tokens": result.tokens, "skipped_rows": result.skipped_rows,
        "init": result.init_reports.get(name),
        "last_metrics": result.last_metrics.get(name),
        "wall_s_this_run": time.perf_counter() - t0,
    }  # fmt: skip
    write_json(out / SAE_TRAIN_SUMMARY, summary)
    m = result.last_metrics.get(name) or {}
    tail = "  ".join(f"{k} {v}" for k, v in _postfix(m).items()) if m else ""
    say(f"done: {result.tokens:,} tokens, {result.steps} steps  {tail}")
    say(f"wrote {out / 'sae'} (steerlab) and {out / 'saelens'} (SAELens)")


def _train_rank(args: argparse.Namespace, o: TrainOptions) -> None:
    """A torchrun rank other than 0: train alongside rank 0, silently; rank 0 writes."""
    tcfg: TrainConfig = args.train_config.build(args, parser=args.parser, checkpoint_dir=o.out)
    store = ActivationStore(o.store)
    if o.site not in store.sites:
        raise CliError(f"store {o.store} has no site {o.site!r}; it holds {sorted(store.sites)}")
    sae_cfg: SaeConfig = args.sae_config.build(
        args, parser=args.parser, d_in=store.sites[o.site], site=o.site, model_id=store.model_id
    )
    train(store, [sae_cfg], tcfg, resume=not o.restart)


def load_any_sae(path: Path) -> AnySae:
    """An SAE from a `sae train` output directory, a steerlab SAE or a SAELens directory."""
    if (path / "sae").is_dir():
        path = path / "sae"
    try:
        if (path / SAELENS_WEIGHTS).is_file():
            return load_saelens(path)
        return load_sae(path)
    except SafetensorError as e:
        raise CliError(f"{path}: cannot read the SAE's weights ({e}); the .safetensors file is "
                       "truncated or damaged: train or copy it again") from None  # fmt: skip


def eval_command(args: argparse.Namespace) -> int:
    """Reconstruction metrics on a store, and CE/KL loss recovered with the SAE spliced in."""
    o: EvalOptions = args.options.build(args, parser=args.parser)
    path = Path(o.dir)
    report_path = Path(o.out) if o.out else (path / SAE_EVAL_JSON)
    for target in (report_path, *([o.saelens] if o.saelens else [])):
        check_writable(target)
    sae = load_any_sae(path)
    store = ActivationStore(o.store)
    site = o.site or sae.cfg.site
    if site is None:
        raise CliError(f"{path}: the SAE records no site; give --site")
    metrics = evaluate(sae, store, site, n_tokens=o.tokens, batch_size=o.batch_size)
    report: dict = {"sae": sae.cfg.to_dict(), "store": str(o.store), "site": site,
                    "metrics": metrics.as_dict()}  # fmt: skip
    say(f"{sae.cfg.name} on {metrics.n_tokens:,} tokens of {site}")
    for k, v in metrics.as_dict().items():
        say(f"{k:>20}: {v:.6g}" if isinstance(v, float) else f"{k:>20}: {v:,}")
    if o.loss_windows > 0:
        handle = open_model(o.model or store.model_id, device=o.device)
        ids = store_windows(store, o.loss_windows)
        mean = activation_stats(store, site, n_tokens=o.mean_tokens).mean.float()
        with progress_bar(ids.shape[0], "loss recovered", unit="win") as bar:
            losses = spliced_losses(handle, sae, ids, site=site, mean=mean,
                                    batch_size=o.loss_batch_size,
                                    progress=lambda n: bar.update(n - bar.n))  # fmt: skip
        report["loss"] = losses.as_dict()
        for name, r in (("CE", losses.ce), ("KL", losses.kl)):
            say(f"{name:>4} clean {r.clean:.4f}  spliced {r.spliced:.4f}  zero-abl "
                f"{r.zero_abl:.4f}  mean-abl {r.mean_abl:.4f}  recovered vs zero "
                f"{r.vs_zero:.4f}  vs mean {r.vs_mean:.4f}")  # fmt: skip
        say(f"     over {losses.n_tokens:,} predicted tokens of {ids.shape[0]} windows")
    out = write_json(report_path, report)
    say(f"wrote {out}")
    if o.saelens:
        save_saelens(sae, o.saelens, density=metrics.density)
        say(f"wrote {o.saelens} (SAELens layout with sparsity.safetensors)")
    return 0
