# ruff: noqa: T201
"""Fit a steering vector from contrast pairs, sweep its strength on neutral prompts, and compare
the best point with a prompting baseline (AxBench-style scores; see steerlab.steering.evals).

    python steering/sentiment_sweep.py --layer 9 --n-prompts 40 --max-new-tokens 32 \\
        --alphas=-0.3,-0.2,-0.1,0.1,0.2,0.3 --threads 1 --out runs/steering/sentiment

Writes ``<out>/vector/`` (the fitted vector), ``<out>/sweep.json`` (table, best points, every
continuation) and ``<out>/sweep.html`` (the sweep figure and a token-by-token view). The fit's
settings are VectorConfig's and the sweep's SweepConfig's (the library's defaults); the pairs
are chat exchanges, so the vector is always read from the assistant's tokens (``chat``).
Relevance is the response's MiniLM similarity to its prompt relative to the unsteered
response's, fluency the perplexity after a generic prefix (``--fluency-prefix``) and
repetition (see :mod:`steerlab.steering.evals`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from steerlab.config import (
    ConfigOptions,
    check_fraction,
    check_nonnegative,
    check_positive,
    check_types,
    parse_configs,
)
from steerlab.datasets.pairs import load_pairs, load_prompts
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.steering.evals import Sentiment, SweepConfig, strength_sweep
from steerlab.steering.scores import token_projections
from steerlab.steering.vectors import VectorConfig, fit_vector
from steerlab.views import write_html
from steerlab.views.steering import sweep_figure, token_projection_figure

COLUMNS = ("concept", "perplexity", "repetition", "fluency", "similarity", "relevance",
           "combined_pos", "combined_neg")  # fmt: skip


def _table(rows: list[dict]) -> str:
    head = f"{'condition':<12}" + "".join(f"{c:>13}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['label']:<12}" + "".join(f"{r[c]:13.3f}" for c in COLUMNS))
    return "\n".join(lines)


@dataclass
class Recipe:
    """The recipe's own settings; the fit's and the sweep's come from the library."""

    model: str = DEFAULT_MODEL
    """Model: the embedded name, a local HF directory or a hub id."""
    pairs: str = "data/steering/sentiment.jsonl"
    """Contrast pairs (JSONL of prompt, positive, negative)."""
    prompts: str = "data/steering/neutral_prompts.jsonl"
    """Neutral prompts the sweep continues."""
    layer: int = 12
    """Layer of resid_post where the vector is read and added."""
    positions: str = "all"
    """Where the vector is added."""
    n_prompts: int = 16
    """Prompts used (the first n)."""
    min_fluency: float = 0.5
    """Fluency that counts as holding, for the monotone range."""
    threads: int | None = None
    """Torch threads (default: torch's choice)."""
    device: str | None = None
    """cpu, cuda, ... (default: cuda when available, else cpu)."""
    out: str = "runs/steering/sentiment"
    """Output folder: vector/, sweep.json and sweep.html."""

    def __post_init__(self) -> None:
        check_types(self)
        check_nonnegative(self, "layer")
        check_positive(self, "n_prompts", "threads")
        check_fraction(self, "min_fluency", low=True, high=True)


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, VectorConfig, SweepConfig]:
    args, vcfg, cfg = parse_configs(
        Recipe,
        # the pairs are chat exchanges: read the assistant's tokens (chat=True, always)
        ConfigOptions(
            VectorConfig,
            skip=("chat",),
            rename={"batch_size": "fit_batch_size", "positions": "read_positions"},
        ),
        # strengths as fractions of the layer's mean activation norm
        ConfigOptions(SweepConfig, defaults={"alphas": (-0.6, -0.4, -0.2, 0.2, 0.4, 0.6)}),
        argv=argv,
        description=__doc__,
    )
    return args, replace(vcfg, chat=True), cfg


def main(argv: list[str] | None = None) -> None:
    args, vcfg, cfg = parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    handle = load_model(args.model, device=args.device)
    pairs = load_pairs(args.pairs)
    site = f"resid_post.{args.layer}"
    # the pairs are (prompt, positive, negative) chat exchanges: read the assistant's tokens
    sv = fit_vector(handle, pairs, site, method=vcfg.method, positions=vcfg.positions,
                    chat=vcfg.chat, center=vcfg.center, batch_size=vcfg.batch_size)  # fmt: skip
    sv.save(out / "vector")
    print(f"fitted {vcfg.method} on {len(pairs)} pairs at {site}: mean norm "
          f"{float(sv.norms[0]):.2f} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip

    prompts = load_prompts(args.prompts)[: args.n_prompts]
    sweep = strength_sweep(
        handle, prompts, lambda a: sv.intervention(args.layer, a, args.positions), Sentiment(),
        cfg, progress=lambda label: print(f"  generated {label} ({time.perf_counter() - t0:.0f} s)"),
    )  # fmt: skip

    print(f"\n{handle.model_id}, {site}, {len(prompts)} neutral prompts, "
          f"{cfg.max_new_tokens} greedy tokens; alpha = fraction of mean norm "
          f"{float(sv.norms[0]):.2f}; PPL0 = {sweep.ppl_reference:.3f}")  # fmt: skip
    print(_table(sweep.table()))
    rng = sweep.monotone_range(args.min_fluency)
    print(f"\nfluency >= {args.min_fluency} for alpha in [{rng.lo:g}, {rng.hi:g}]; concept "
          f"{'rises monotonically' if rng.monotone else 'is NOT monotone'} there: "
          + ", ".join(f"{c:.3f}" for c in rng.concepts))  # fmt: skip
    best = {}
    for pole in (1, -1):
        b = sweep.best(pole)
        best[pole] = b
        print(f"\nbest alpha towards {'positive' if pole > 0 else 'negative'}: {b.alpha:+g} "
              f"(chosen on prompts {b.selected_on}, reported on {b.reported_on})")  # fmt: skip
        for name, s in (("steered", b.steered), ("prompting", b.baseline)):
            print(f"  {name:<10} concept {s.concept:+.3f}  fluency {s.fluency:.3f}  "
                  f"relevance {s.relevance:.3f}  ppl {s.perplexity:.2f}  "
                  f"combined {s.combined(pole):.3f}")  # fmt: skip

    result = {**sweep.to_dict(), "site": site, "vector_norm": float(sv.norms[0]),
              "monotone_range": rng._asdict(),
              "best": {str(p): {"alpha": b.alpha, "steered": b.steered._asdict(),
                                "baseline": b.baseline._asdict(), "reported_on": b.reported_on}
                       for p, b in best.items()},
              "seconds": time.perf_counter() - t0}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2))
    a = best[1].alpha
    text = sweep.points[sweep.alphas.index(a)].texts[best[1].reported_on[0]]
    tp = token_projections(handle, text, sv.direction(args.layer), site)
    figs = {
        "Strength sweep": sweep_figure(sweep),
        f"Steered text (alpha={a:+g}) projected on the vector at {site}": token_projection_figure(
            tp.tokens, tp.scores),
    }  # fmt: skip
    html = write_html(figs, out / "sweep.html", title=f"Steering sweep: {sweep.concept}")
    print(f"\nwrote {out / 'sweep.json'} and {html} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
