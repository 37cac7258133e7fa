"""``steerlab demo``: the main job on the embedded model, end to end, in about a minute."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab.cli.capture import CaptureOptions, capture_store
from steerlab.cli.common import say, subcommand
from steerlab.cli.view import ViewOptions, store_pca_figure
from steerlab.config import add_config, check_positive, check_types
from steerlab.models import DEFAULT_MODEL
from steerlab.views import write_html


@dataclass
class DemoOptions:
    """What ``steerlab demo`` captures and where it writes."""

    out: str = "runs/demo"
    """Output folder: the store (OUT/store) and the page (OUT/principal_directions.html)."""
    model: str = DEFAULT_MODEL
    """Embedded model name, local Hugging Face model directory, or hub id."""
    site: str = "resid_post.6"
    """The site to capture and draw."""
    tokens: int = 20_000
    """Prose tokens to capture."""
    device: str | None = None
    """cpu, cuda, ... (default: cuda when available, else cpu)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "tokens")


def register(sub: Any) -> None:
    p = subcommand(sub, "demo", "capture prose at one site of the embedded model and draw its "
                   "principal directions", epilog="example:\n  steerlab demo --out runs/demo")  # fmt: skip
    p.set_defaults(fn=run, options=add_config(p, DemoOptions))


def run(args: argparse.Namespace) -> int:
    o: DemoOptions = args.options.build(args, parser=args.parser)
    out = Path(o.out)
    cap = CaptureOptions(sites=o.site, out=str(out / "store"), model=o.model, corpus="prose",
                         tokens=o.tokens, shard_tokens=16384, device=o.device)  # fmt: skip
    store = capture_store(cap)
    view = ViewOptions(out=str(out / "principal_directions.html"), max_points=4000)
    fig = store_pca_figure(store, o.site, view)
    html = write_html(fig, view.out, title=f"steerlab demo: principal directions of {o.site}")
    say(f"wrote {html}")
    return 0
