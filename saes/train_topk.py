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
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from steerlab.capture.store import ActivationStore
from steerlab.cli import main as cli
from steerlab.models import load_model
from steerlab.saes import activation_stats, evaluate, load_sae, save_saelens
from steerlab.saes.splice import spliced_losses, store_windows
from steerlab.views import write_html
from steerlab.views.saes import density_figure, latent_dashboard, read_train_log, training_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="runs/sae_store")
    ap.add_argument("--site", default="resid_post.6")
    ap.add_argument("--width", type=int, default=4608, help="latents (8 x d_model)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--init", default="active-subspace")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="training tokens")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--dead-tokens", type=int, default=1_000_000,
                    help="AuxK window: a latent silent this long is dead")  # fmt: skip
    ap.add_argument("--loss-windows", type=int, default=32, help="windows for CE/KL recovered")
    ap.add_argument("--eval-tokens", type=int, default=None, help="default: the whole store")
    ap.add_argument("--dashboard-latents", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--out", default="runs/sae_resid6")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)

    t0 = time.perf_counter()
    rc = cli(["sae", "train", "--store", args.store, "--site", args.site,
              "--width", str(args.width), "--k", str(args.k), "--init", args.init,
              "--tokens", str(args.tokens), "--batch-size", str(args.batch_size),
              "--warmup-steps", str(args.warmup_steps), "--dead-tokens", str(args.dead_tokens),
              "--checkpoint-every", "50", "--out", str(out)])  # fmt: skip
    if rc:
        raise SystemExit(rc)
    train_s = time.perf_counter() - t0

    store = ActivationStore(args.store)
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
