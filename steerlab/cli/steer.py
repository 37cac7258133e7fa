"""``steerlab vector fit`` and ``steerlab steer``: fit a steering vector, then compare steered
and unsteered continuations side by side."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from steerlab.cli.common import HelpFormatter, check_writable, open_model, say, subcommand
from steerlab.config import add_config, check_nonnegative, check_positive, check_types, require
from steerlab.datasets.pairs import load_pairs
from steerlab.models import DEFAULT_MODEL
from steerlab.steering.generate import compare, format_side_by_side, load_steering
from steerlab.steering.vectors import VectorConfig, fit_vector

STEER_EXAMPLES = """examples:
  steerlab steer --vector runs/vec-sentiment --alpha 0.1 --prompt "Tell me about your weekend."
  steerlab steer --vector runs/vec-sentiment --alpha -0.1 --prompt "Hi" --prompt "Describe a cat."
  steerlab steer --vector runs/vec --layer all --alpha 0.05 --seed 1 --prompt "Hello"

--alpha is a fraction of the layer's mean activation norm (about 0.05-0.3 is useful; negative
values steer towards the other side of the contrast); --absolute takes raw units."""

FIT_EXAMPLES = """examples:
  steerlab vector fit --pairs data/steering/sentiment.jsonl --sites resid_post.9 --chat \\
      --out runs/vec-sentiment
  steerlab vector fit --pairs my_pairs.jsonl --sites resid_post.8,resid_post.12 --out runs/vec

The pairs file is JSONL: {"prompt": ..., "positive": ..., "negative": ...} per line (the
prompt may be left out)."""


@dataclass
class SteerOptions:
    """What ``steerlab steer`` generates and how it steers."""

    vector: str
    """A steering vector directory (from steerlab vector fit), a llama.cpp control-vector .gguf
    file, or a saved intervention directory."""
    alpha: float
    """Steering strength: a fraction of the layer's mean activation norm (negative steers the
    other way), or raw activation units with --absolute."""
    prompt: tuple[str, ...]
    """User message(s) to continue; repeat the flag for several."""
    model: str = DEFAULT_MODEL
    """Embedded model name, local Hugging Face model directory, or hub id."""
    layer: str | None = None
    """Layer of a multi-layer vector, its site name, or 'all' (default: its only layer)."""
    positions: str = "all"
    """Where the vector is added: all, prompt, generation, last, ... (see the README)."""
    absolute: bool = False
    """Read --alpha in raw activation units instead of a fraction of the mean norm."""
    system: str | None = None
    """System message of the chat template (default: the template's own)."""
    chat: bool = True
    """Render prompts with the model's chat template (--no-chat: plain text)."""
    max_new_tokens: int = 48
    """Tokens generated per prompt."""
    seed: int | None = None
    """Sample with this seed (default: greedy decoding)."""
    temperature: float = 1.0
    """Sampling temperature (with --seed)."""
    width: int = 110
    """Width of the side-by-side output in characters."""
    device: str | None = None
    """cpu, cuda, ... (default: cuda when available, else cpu)."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self, "alpha", math.isfinite(self.alpha), "a finite number")
        require(self, "prompt", len(self.prompt) > 0, "at least one prompt")
        check_positive(self, "max_new_tokens", "temperature")
        check_nonnegative(self, "seed")
        require(self, "width", self.width >= 20, ">= 20")


@dataclass
class FitOptions:
    """What ``steerlab vector fit`` reads and where it writes the vector."""

    pairs: str
    """Contrast pairs: a JSONL file of {"prompt", "positive", "negative"} records."""
    sites: str
    """Site(s) to read, e.g. resid_post.12 or resid_post.8,resid_post.12 (one kind)."""
    out: str
    """Output directory of the steering vector."""
    model: str = DEFAULT_MODEL
    """Embedded model name, local Hugging Face model directory, or hub id."""
    device: str | None = None
    """cpu, cuda, ... (default: cuda when available, else cpu)."""

    def __post_init__(self) -> None:
        check_types(self)


def register(sub: Any) -> None:
    p = subcommand(sub, "steer", "steered and unsteered continuations, side by side",
                   epilog=STEER_EXAMPLES)  # fmt: skip
    p.set_defaults(fn=steer, options=add_config(p, SteerOptions))

    v = sub.add_parser("vector", help="fit steering vectors", description="Steering vectors.",
                       formatter_class=HelpFormatter)  # fmt: skip
    vsub = v.add_subparsers(dest="vector_command", required=True, metavar="COMMAND")
    f = subcommand(vsub, "fit", "fit a steering vector from contrast pairs", epilog=FIT_EXAMPLES)
    f.set_defaults(fn=fit, options=add_config(f, FitOptions),
                   vector_config=add_config(f, VectorConfig, title="fit settings"))  # fmt: skip


def steer(args: argparse.Namespace) -> int:
    """Print unsteered and steered continuations of each prompt side by side."""
    o: SteerOptions = args.options.build(args, parser=args.parser)
    ivs = load_steering(o.vector, alpha=o.alpha, layer=o.layer, positions=o.positions,
                        relative=not o.absolute)  # fmt: skip
    handle = open_model(o.model, device=o.device)
    for iv in ivs:
        iv.check(handle)
    cmp = compare(handle, list(o.prompt), ivs, chat=o.chat, system=o.system,
                  max_new_tokens=o.max_new_tokens, greedy=o.seed is None, seed=o.seed or 0,
                  temperature=o.temperature)  # fmt: skip
    where = ", ".join(iv.site for iv in ivs)
    say(f"{handle.model_id}  vector {o.vector} at {where}, alpha {o.alpha:g}")
    say(format_side_by_side(cmp, width=o.width, labels=("unsteered", f"alpha={o.alpha:g}")))
    return 0


def fit(args: argparse.Namespace) -> int:
    """Fit a steering vector from contrast pairs and save it."""
    o: FitOptions = args.options.build(args, parser=args.parser)
    cfg: VectorConfig = args.vector_config.build(args, parser=args.parser)
    check_writable(o.out)
    pairs = load_pairs(o.pairs)  # bad data fails before the model loads
    handle = open_model(o.model, device=o.device)
    say(f"fitting {cfg.method} on {len(pairs)} pairs of {o.pairs} at {o.sites}")
    sv = fit_vector(handle, pairs, o.sites, method=cfg.method, positions=cfg.positions,
                    chat=cfg.chat, center=cfg.center, batch_size=cfg.batch_size)  # fmt: skip
    out = sv.save(o.out)
    norms = "" if sv.norms is None else ", mean norms " + ", ".join(f"{x:.1f}" for x in sv.norms)
    say(f"wrote {out}: layers {list(sv.layers)}{norms}")
    return 0
