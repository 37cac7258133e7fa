"""Stage ``erasure``: LEACE on gender at the layer where it is most decodable.

Templated biographies labelled by the person's gender (``data/erasure/gender.jsonl``; held-out
rows name people never seen in training) are read at their last token at every report layer in
one pass. A fresh logistic probe per layer finds the best layer; LEACE (Belrose et al. 2023) is
fitted there on the training rows; a fresh probe is trained on the erased training rows and
scored on the erased test rows, against the majority rate. Inside the model the eraser runs as
an :class:`~steerlab.erasure.scrub.EraserEdit` on every token, and its cost is the change of
next-token cross-entropy on prose windows. LEACE is also fitted at the atlas layer, for the
subspace atlas.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from steerlab.capture import capture
from steerlab.config import check_positive, check_types
from steerlab.datasets.concepts import load_concept
from steerlab.datasets.corpora import chunk_tokens, load_texts
from steerlab.erasure.evaluation import best_site, constant_rate, probe_by_site
from steerlab.erasure.leace import LeaceEraser, erasure_report
from steerlab.erasure.scrub import EraserEdit
from steerlab.interventions.loss import CLEAN, lm_losses
from steerlab.report.context import Context
from steerlab.report.page import Section, table_html
from steerlab.report.stages import StageResult
from steerlab.views.erasure import erasure_pca_figure, probe_by_site_figure

__all__ = ["ErasureConfig", "run", "section"]


@dataclass
class ErasureConfig:
    """The erasure section's data and cost measurement."""

    n_texts: int = 400
    """Biographies read (a seeded sample of data/erasure/gender.jsonl; its own train/test
    split, by person, is kept)."""
    lm_windows: int = 6
    """Prose windows (of 128 tokens) for the language-modelling cost."""
    batch_size: int = 32
    """Texts per forward pass."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "n_texts", "lm_windows", "batch_size")


def run(ctx: Context, cfg: ErasureConfig) -> StageResult:
    data = load_concept(n=cfg.n_texts, seed=ctx.config.seed)
    sites = ctx.layer_sites()
    step = ctx.counter("capture biographies (last token)",
                       sum(len(ctx.tokenizer(t).input_ids) for t in data.texts))  # fmt: skip
    cap = capture(ctx.handle, data.texts, sites, positions="last", batch_size=cfg.batch_size,
                  progress=step)  # fmt: skip
    acts = {s: cap[s].double() for s in sites}
    z, test = data.labels[cap.doc_ids], data.test[cap.doc_ids]
    train = ~test
    ctx.progress("a fresh probe per layer", 0, 1)
    scores = probe_by_site(acts, z, train, test)
    best = best_site(scores)
    atlas = ctx.site(ctx.config.atlas_layer)
    eraser = LeaceEraser.fit(acts[best][train], z[train])
    report = erasure_report(eraser, acts[best][train], z[train], acts[best][test], z[test])
    atlas_eraser = LeaceEraser.fit(acts[atlas][train], z[train])
    ctx.progress("language-modelling cost", 0, cfg.lm_windows)
    windows = chunk_tokens(ctx.tokenizer, load_texts("prose"), seq_len=128,
                           n_tokens=128 * cfg.lm_windows).input_ids  # fmt: skip
    losses = lm_losses(ctx.handle, windows, {"leace": EraserEdit(eraser, best)}, batch_size=8,
                       progress=lambda k: ctx.progress("language-modelling cost", k,
                                                       len(windows)))  # fmt: skip
    out = {
        "n_train": int(train.sum()), "n_test": int(test.sum()), "class_names": data.class_names,
        "best_site": best, "atlas_site": atlas,
        "by_site": {s: v._asdict() for s, v in scores.items()},
        "report": report._asdict(),
        "constant": constant_rate(z[train], z[test]),
        "lm": {"clean": losses[CLEAN].loss, "leace": losses["leace"].loss,
               "n_tokens": losses[CLEAN].n_tokens},
    }  # fmt: skip
    tensors = {
        "leace_atlas": atlas_eraser.subspace.basis.T.float(),  # [rank, d]
        "x_test_best": acts[best][test].float(),
        "x_test_erased": eraser(acts[best][test]).float(),
        "z_test": z[test],
    }
    return StageResult(out, tensors)


def section(res: StageResult, ctx: Context, cfg: ErasureConfig) -> Section:
    del ctx, cfg
    d, t = res.data, res.tensors
    r = d["report"]
    lm = d["lm"]
    text = (
        f"Gender is read from the last token of {d['n_train'] + d['n_test']:,} short "
        f"biographies; a fresh logistic probe per layer (trained on {d['n_train']}, tested on "
        f"{d['n_test']} that name unseen people) finds it best at {d['best_site']} "
        f"({r['accuracy_before']:.3f}). LEACE there, a rank-{r['rank']} edit, leaves a fresh "
        f"probe at {r['accuracy']:.3f} against a majority rate of {r['majority']:.3f} (a probe "
        f"that learned nothing, always the training majority, scores {d['constant']:.3f}). "
        f"Applied inside the model at every token, it moves next-token cross-entropy on "
        f"{lm['n_tokens']:,} prose tokens from {lm['clean']:.3f} to {lm['leace']:.3f} nats "
        f"(+{lm['leace'] - lm['clean']:.3f}): the price of removing the concept."
    )
    table = table_html(
        ["", "held-out probe accuracy", "vs majority", "mean ‖Δx‖²", "LM cross-entropy (nats)"],
        [["before erasure", r["accuracy_before"], r["accuracy_before"] - r["majority"], 0.0,
          lm["clean"]],
         [f"LEACE at {d['best_site']}", r["accuracy"], r["accuracy"] - r["majority"], r["mse"],
          lm["leace"]],
         ["majority rate (constant)", r["majority"], 0.0, "", ""]],
    )  # fmt: skip
    by_site = {s: v for s, v in d["by_site"].items()}
    f1 = probe_by_site_figure(by_site, r["majority"], title="")
    f1.update_layout(height=360, margin={"t": 30}, title_text="")
    f2 = erasure_pca_figure(t["x_test_best"], {f"after LEACE at {d['best_site']}":
                                               t["x_test_erased"]}, t["z_test"],
                            class_names=d["class_names"], title="")  # fmt: skip
    f2.update_layout(height=380, margin={"t": 40}, title_text="")
    figs: list[tuple[str | None, go.Figure]] = [
        ("A fresh probe's held-out accuracy by layer (dashed: majority rate)", f1),
        (f"Held-out rows at {d['best_site']} before and after LEACE, each on its own top two "
         "principal directions", f2),
    ]  # fmt: skip
    return Section("erasure", "Erasure: removing gender with LEACE", text, figs, blocks=[table])
