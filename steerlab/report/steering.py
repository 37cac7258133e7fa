"""Stage ``steering``: a sentiment vector fitted from contrast pairs, a small strength sweep,
generations at three strengths, and the tokens of a text projected on the vector.

The vector is the mean difference (CAA, Rimsky et al. 2024; ActAdd) of the residual stream at
the atlas layer over the assistant tokens of positive and negative replies
(``data/steering/sentiment.jsonl``). It is added at every token with strength α, a fraction of
the layer's mean norm: ``h' = h + α · ‖h‖_mean · v̂``. The sweep scores each α as AxBench does
(:mod:`steerlab.steering.evals`): concept (VADER), fluency, relevance and their harmonic mean,
with a system prompt asking for the sentiment as the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from steerlab.config import check_positive, check_types, require
from steerlab.datasets.pairs import load_pairs, load_prompts
from steerlab.datasets.paths import data_dir
from steerlab.models import load_model
from steerlab.report.context import Context
from steerlab.report.page import Section, table_html
from steerlab.report.stages import StageResult
from steerlab.steering.evals import Sentiment, SweepConfig, strength_sweep
from steerlab.steering.scores import token_projections
from steerlab.steering.vectors import fit_vector
from steerlab.views.steering import sweep_figure, token_projection_figure

__all__ = ["SteeringStageConfig", "run", "section"]

DEFAULT_TEXT = ("The food was delicious and the staff were friendly, but the wait was awful and "
                "the room was cold and dirty.")  # fmt: skip


@dataclass
class SteeringStageConfig:
    """The steering section's vector, sweep and examples."""

    pairs: str | None = None
    """Contrast pairs (JSONL with prompt, positive, negative); default
    data/steering/sentiment.jsonl."""
    prompts: str | None = None
    """Evaluation prompts (JSONL with prompt); default data/steering/neutral_prompts.jsonl."""
    n_prompts: int = 6
    """Prompts generated at every strength."""
    alphas: tuple[float, ...] = (-0.2, -0.1, 0.1, 0.2)
    """Strengths of the sweep (fractions of the layer's mean norm; 0 is always added)."""
    shown: tuple[float, ...] = (-0.1, 0.0, 0.1)
    """Three strengths whose generations are shown side by side (each in the sweep or 0)."""
    max_new_tokens: int = 24
    """Tokens generated per prompt."""
    text: str = DEFAULT_TEXT
    """A text whose tokens are projected on the vector."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "n_prompts", "max_new_tokens")
        require(self, "alphas", len(self.alphas) > 0 and 0 not in self.alphas,
                "non-zero strengths (0 is always added)")  # fmt: skip
        require(self, "shown", all(a == 0 or a in self.alphas for a in self.shown),
                "strengths of --steer-alphas, or 0")  # fmt: skip
        require(self, "text", bool(self.text.strip()), "a non-empty text")


def run(ctx: Context, cfg: SteeringStageConfig) -> StageResult:
    layer = ctx.config.atlas_layer
    site = ctx.site(layer)
    pairs = cfg.pairs or str(data_dir("steering") / "sentiment.jsonl")
    prompts = load_prompts(cfg.prompts or data_dir("steering") / "neutral_prompts.jsonl")
    prompts = prompts[: cfg.n_prompts]
    n_pairs = len(load_pairs(pairs))
    vec = fit_vector(ctx.handle, pairs, site, chat=True,
                     progress=lambda k: ctx.progress("fit the vector (pairs)", k, n_pairs))  # fmt: skip
    conditions = len(cfg.alphas) + 3  # the alphas, unsteered, two prompting baselines
    done = 0

    def step(label: str) -> None:
        nonlocal done
        done += 1
        ctx.progress(f"generate ({label})", done, conditions)

    encoder = load_model("minilm-l6", device=ctx.handle.device)
    sweep = strength_sweep(ctx.handle, prompts, lambda a: vec.intervention(layer, a), Sentiment(),
                           SweepConfig(alphas=tuple(cfg.alphas), max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.n_prompts),
                           encoder=encoder, progress=step)  # fmt: skip
    direction = vec.direction(layer).float()
    ctx.progress("token projections", 0, 1)
    tp = token_projections(ctx.handle, cfg.text, direction, site)
    best = {p: sweep.best(p)._asdict() for p in (1, -1)}
    assert vec.norms is not None  # fit_vector averages the activation norms of every pair
    data = {
        "site": site, "n_pairs": n_pairs, "pairs": pairs, "mean_norm": float(vec.norms[0]),
        "sweep": sweep.to_dict(texts=True),
        "best": {str(p): {"alpha": b["alpha"], "steered": b["steered"]._asdict(),
                          "baseline": b["baseline"]._asdict()} for p, b in best.items()},
        "projection": {"text": cfg.text, "tokens": tp.tokens, "scores": tp.scores.tolist()},
    }  # fmt: skip
    return StageResult(data, {"direction": direction})


def _generations(d: dict, shown: tuple[float, ...]) -> str:
    sw = d["sweep"]
    label = {a: ("unsteered" if a == 0 else f"alpha={a:+g}") for a in shown}
    rows = [[p, *(sw["texts"][label[a]][i] for a in shown)] for i, p in enumerate(sw["prompts"])]
    head = ["prompt", *("unsteered (α = 0)" if a == 0 else f"α = {a:+g}" for a in shown)]
    return table_html(head, rows, cls="t gen")


def section(res: StageResult, ctx: Context, cfg: SteeringStageConfig) -> Section:
    del ctx
    d = res.data
    table = {r["label"]: r for r in d["sweep"]["table"]}
    pos, neg = d["best"]["1"], d["best"]["-1"]
    unsteered = table["unsteered"]
    text = (
        f"A sentiment vector: the mean difference of {d['site']} between the positive and "
        f"negative replies of {d['n_pairs']} contrast pairs, added at every token with strength "
        f"α × {d['mean_norm']:.0f} (the layer's mean norm). The sweep generates "
        f"{len(d['sweep']['prompts'])} neutral prompts at each α and scores the sentiment "
        f"(VADER, unsteered {unsteered['concept']:+.2f}), fluency and relevance; the dashed lines "
        f"are a system prompt asking for each sentiment. Look for the range of α where the "
        f"concept moves while fluency holds: the best positive α is {pos['alpha']:+g} (combined "
        f"{pos['steered']['combined_pos']:.2f} vs prompting {pos['baseline']['combined_pos']:.2f}"
        f"), the best negative {neg['alpha']:+g} ({neg['steered']['combined_neg']:.2f} vs "
        f"{neg['baseline']['combined_neg']:.2f}), chosen on half the prompts and scored on the "
        f"other half."
    )
    sweep = sweep_figure(d["sweep"], title="")
    sweep.update_layout(height=640, margin={"t": 40}, title_text="")
    proj = d["projection"]
    tp = token_projection_figure(proj["tokens"], torch.tensor(proj["scores"]), per_row=12,
                                 title="")  # fmt: skip
    figs: list[tuple[str | None, go.Figure]] = [
        ("Strength sweep: every score against α (dashed: prompting baselines)", sweep),
        ("The tokens of a text coloured by their projection on the vector (blue: towards "
         "positive, red: towards negative, relative to the text's mean)", tp),
    ]  # fmt: skip
    return Section("steering", f"Steering with a sentiment vector at {d['site']}", text, figs,
                   blocks=["<h3>Generations at three strengths</h3>",
                           _generations(d, tuple(cfg.shown))])  # fmt: skip
