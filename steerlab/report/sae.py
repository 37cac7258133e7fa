"""Stage ``sae``: a small TopK SAE trained on the captured store at the atlas layer.

TopK SAE (Gao et al. 2024): ``z = TopK(W_enc (x − b_dec) + b_enc)``, ``x̂ = W_dec z + b_dec``,
trained with :func:`steerlab.saes.train` on the non-sink rows of all but the last windows; the
last windows are held out for the metrics: FVU ``Σ‖x − x̂‖² / Σ‖x − x̄‖²``, L0, dead latents,
and the next-token cross-entropy recovered when the SAE's reconstruction replaces the
activation at every non-sink token (vs zero- and mean-ablation; sinks are left as they are, as
SAELens and Gemma Scope do). The *active decoder subspace* for the atlas is the span of the top
right singular vectors of the decoder rows of the latents that fire on at least
``active_density`` of the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import plotly.graph_objects as go
import torch

from steerlab.config import check_fraction, check_positive, check_types
from steerlab.positions import Positions
from steerlab.report.context import Context
from steerlab.report.page import Section, table_html
from steerlab.report.stages import StageResult
from steerlab.saes import SaeConfig, TrainConfig, evaluate, train
from steerlab.saes.sae import Sae
from steerlab.saes.splice import spliced_losses
from steerlab.views.saes import (
    LatentCard,
    TopActivations,
    density_figure,
    latent_card_figure,
    latent_cards,
    training_curves,
)

__all__ = ["SaeStageConfig", "run", "section"]


@dataclass
class SaeStageConfig:
    """The SAE trained for the report."""

    width: int = 2304
    """Latents (4 × d_model on the embedded model)."""
    k: int = 32
    """Latents kept per token."""
    epochs: int = 8
    """Passes over the training rows."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 2e-3
    """Adam learning rate (high, for a run of a few hundred steps)."""
    held_out: float = 0.125
    """Share of the windows (the last ones) held out for the metrics."""
    loss_windows: int = 4
    """Held-out windows run through the model for the loss recovered (4 passes each)."""
    n_latents: int = 6
    """Latents shown in the dashboard (spread over the range of densities)."""
    n_contexts: int = 6
    """Top-activating contexts per latent."""
    active_density: float = 1e-3
    """Latents firing on at least this share of tokens count as active, for the atlas."""
    atlas_dims: int = 8
    """Dimensions of the active decoder subspace."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "width", "k", "epochs", "batch_size", "lr", "n_latents",
                       "n_contexts", "atlas_dims", "loss_windows")  # fmt: skip
        check_fraction(self, "held_out")
        check_fraction(self, "active_density")


def _pick_latents(density: torch.Tensor, n: int) -> list[int]:
    """``n`` live latents spread over the density ranking (dense ones skipped), so the dashboard
    shows common and rare features alike."""
    live = ((density > 0) & (density < 0.1)).nonzero().squeeze(1)
    if len(live) == 0:
        return []
    order = live[density[live].argsort(descending=True)]
    picks = torch.linspace(0, len(order) - 1, min(n, len(order))).round().long()
    return order[picks].tolist()


@torch.no_grad()
def _top(sae: Sae, x: torch.Tensor, rows: torch.Tensor, latents: list[int],
         n: int) -> TopActivations:  # fmt: skip
    """The ``n`` largest activations of ``latents`` over the rows ``x`` (store rows ``rows``)."""
    lat = torch.tensor(latents, dtype=torch.long)
    parts = [sae.encode_dense(b)[:, lat] for b in x.split(4096)]
    z = torch.cat(parts).T  # [L, n_rows]
    v, j = z.topk(min(n, z.shape[1]), dim=1)
    r = rows[j]
    r[v <= 0] = -1
    return TopActivations(lat, v.clamp_min(0), r, (z > 0).float().mean(1), z.shape[1])


def run(ctx: Context, cfg: SaeStageConfig) -> StageResult:
    cap = ctx.result("capture")
    store = ctx.store()
    site = ctx.site(ctx.config.atlas_layer)
    seq = int(cap.data["seq_len"])
    sink = cap.tensors["sink"].bool()
    x = store.site(site).to_tensor(torch.float32)
    n_win = x.shape[0] // seq
    n_eval = max(1, round(n_win * cfg.held_out))
    held = torch.zeros(x.shape[0], dtype=torch.bool)
    held[(n_win - n_eval) * seq :] = True
    fit_rows = (~held & ~sink).nonzero().squeeze(1)
    x_train = x[fit_rows]
    sae_cfg = SaeConfig(d_in=x.shape[1], d_sae=cfg.width, k=cfg.k, site=site,
                        model_id=cap.data["model_id"], init="tied")  # fmt: skip
    steps_total = cfg.epochs * (len(x_train) // cfg.batch_size)
    tcfg = TrainConfig(batch_size=cfg.batch_size, max_tokens=steps_total * cfg.batch_size,
                       lr=cfg.lr, warmup_steps=max(1, steps_total // 20),
                       dead_tokens=len(x_train), log_every=max(1, steps_total // 40),
                       seed=ctx.config.seed)  # fmt: skip
    log: list[dict[str, float]] = []

    def on_step(p: object) -> None:
        m = next(iter(p.metrics.values()))  # type: ignore[attr-defined]
        log.append({"tokens": p.tokens, **{k: m[k] for k in ("fvu", "l0", "dead_frac")}})  # type: ignore[attr-defined]
        ctx.progress("train the SAE", p.step, p.total_steps)  # type: ignore[attr-defined]

    result = train({site: x_train}, [sae_cfg], tcfg, callback=on_step, resume=False)
    sae = next(iter(result.saes.values())).eval()
    ctx.progress("metrics on held-out windows", 0, 1)
    metrics = evaluate(sae, x[held & ~sink])
    with_sinks = evaluate(sae, x[held])
    n_loss = min(cfg.loss_windows, n_eval)
    loss_rows = held.nonzero().squeeze(1)[: n_loss * seq]
    ids = store.site("token_ids")[loss_rows].long().reshape(n_loss, seq)
    keep = ~sink[loss_rows].reshape(n_loss, seq)
    # the sinks keep their own activations (the SAE never saw them), as SAELens evaluates
    rule = Positions(part="prompt", tokens="indices",
                     indices=tuple(tuple(keep[w].nonzero().squeeze(1).tolist())
                                   for w in range(n_loss)))  # fmt: skip
    # one batch: the rule names the tokens of each window by its row in the batch
    losses = spliced_losses(ctx.handle, sae, ids, mean=x_train.double().mean(0).float(),
                            positions=rule, batch_size=n_loss,
                            progress=lambda k: ctx.progress("loss recovered", k, n_loss))  # fmt: skip
    ctx.progress("latent dashboard", 0, 1)
    all_rows = (~sink).nonzero().squeeze(1)
    with torch.no_grad():
        # a tensor: sum() starts from 0 but adds at least one batch (an empty x fails below)
        counts = cast(
            torch.Tensor,
            sum((sae.encode_dense(b) > 0).sum(0).double() for b in x[all_rows].split(4096)),
        )
    density = counts / len(all_rows)
    latents = _pick_latents(density.float(), cfg.n_latents)
    cards = latent_cards(sae, store, ctx.handle, latents, n_contexts=cfg.n_contexts, n_logits=8,
                         window=10, top=_top(sae, x[all_rows], all_rows, latents,
                                             cfg.n_contexts))  # fmt: skip
    active = (density >= cfg.active_density).nonzero().squeeze(1)
    W = sae.W_dec.detach()[active].double()
    _, _, Vh = torch.linalg.svd(W, full_matrices=False)
    data = {
        "site": site, "width": cfg.width, "k": cfg.k, "n_train": len(x_train),
        "n_sinks_left_out": int((sink & ~held).sum()), "n_eval": metrics.n_tokens,
        "n_eval_sinks": int((sink & held).sum()), "steps": result.steps,
        "tokens_trained": result.tokens, "metrics": metrics.as_dict(),
        "fvu_with_sinks": with_sinks.fvu, "loss": losses.as_dict(), "log": log,
        "cards": [c._asdict() for c in cards], "n_active": len(active),
        "n_loss_windows": n_loss, "sae_config": sae_cfg.to_dict(),
    }  # fmt: skip
    # the SAE itself, so the numbers above can be checked and the SAE reused
    tensors = {"density": density.float(), "active_subspace": Vh[: cfg.atlas_dims].float(),
               **{f"sae/{k}": v.detach().float() for k, v in sae.state_dict().items()}}  # fmt: skip
    return StageResult(data, tensors)


def section(res: StageResult, ctx: Context, cfg: SaeStageConfig) -> Section:
    del ctx
    d = res.data
    m, ce, kl = d["metrics"], d["loss"]["ce"], d["loss"]["kl"]
    text = (
        f"A TopK SAE ({d['width']:,} latents, k = {d['k']}) trained for {d['steps']} steps "
        f"({d['tokens_trained']:,} tokens, {cfg.epochs} passes) on {d['n_train']:,} rows of "
        f"{d['site']}; the {d['n_sinks_left_out']} attention-sink rows of the training windows "
        f"are left out of training, and the metrics below are on {d['n_eval']:,} held-out "
        f"non-sink rows ({d['n_eval_sinks']} sink rows left out; with them the FVU is "
        f"{d['fvu_with_sinks']:.3f}). Loss recovered replaces the activation by its "
        f"reconstruction at every non-sink token of {d['n_loss_windows']} held-out windows. The dashboard shows "
        f"{len(d['cards'])} latents across the range of densities: look for contexts that "
        f"share a token or a role, and for promoted tokens that continue them."
    )
    table = table_html(
        ["metric (held-out, sinks left out)", "value"],
        [["FVU (explained variance)", f"{m['fvu']:.3f} ({m['explained_variance']:.3f})"],
         ["L0", m["l0"]], ["dead latents", f"{100 * m['dead_frac']:.1f}%"],
         ["dense latents (> 10% of tokens)", f"{100 * m['dense_frac']:.2f}%"],
         ["CE clean → spliced (nats/token)", f"{ce['clean']:.3f} → {ce['spliced']:.3f}"],
         ["CE zero-ablated / mean-ablated", f"{ce['zero_abl']:.3f} / {ce['mean_abl']:.3f}"],
         ["CE loss recovered vs zero / mean ablation", f"{ce['vs_zero']:.3f} / "
                                                       f"{ce['vs_mean']:.3f}"],
         ["KL recovered vs zero / mean ablation", f"{kl['vs_zero']:.3f} / {kl['vs_mean']:.3f}"]],
    )  # fmt: skip
    curves = training_curves(d["log"], title="")
    curves.update_layout(height=320, margin={"t": 40})
    dens = density_figure(res.tensors["density"], title="")
    dens.update_layout(height=320, margin={"t": 30})
    figs: list[tuple[str | None, go.Figure]] = [
        ("Training: FVU (log scale), L0 and dead latents against tokens", curves),
        ("Latent density on the non-sink rows of the store", dens),
    ]
    for c in d["cards"]:
        card = LatentCard(**{**c, "promoted": [tuple(p) for p in c["promoted"]],
                             "suppressed": [tuple(p) for p in c["suppressed"]]})  # fmt: skip
        figs.append((None, latent_card_figure(card)))
    return Section("sae", f"Sparse autoencoder at {d['site']}", text, figs, blocks=[table])
