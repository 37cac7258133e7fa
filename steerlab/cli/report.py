"""``steerlab report`` (and its alias ``steerlab demo``): the workbench end to end on one model,
written as one offline HTML page, with a progress bar per stage."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from steerlab.cli.common import check_writable, open_model, open_tokenizer, say, subcommand
from steerlab.config import add_config, check_types
from steerlab.report import STAGES, Context, ReportConfig, StageRecord, run_report
from steerlab.report.pipeline import TIMINGS, check_configs

EXAMPLES = """examples:
  steerlab report --out runs/report                 # ~6 min on 2 CPU cores; rerun: seconds
  steerlab report --out runs/report --sae-width 4608 # recomputes the SAE and the atlas only
  steerlab report --out runs/quick --tokens 4096 --layers 0 6 9 --pca-scatter-layers 6 9

Each stage is saved under OUT/stages/ with the config that produced it; a rerun with the same
options reuses it, a changed option recomputes that stage and the stages that read it.
OUT/index.html is the page (it works offline); OUT/timings.json holds the times."""

# option prefix of each stage's config (capture's options have none: --tokens, --seq-len, ...)
PREFIX = {"capture": "", "pca": "pca", "probes": "probe", "erasure": "erasure", "sae": "sae",
          "steering": "steer", "atlas": "atlas"}  # fmt: skip
TITLES = {"capture": "the capture pass", "pca": "principal directions", "probes": "probes",
          "erasure": "erasure", "sae": "sparse autoencoder", "steering": "steering",
          "atlas": "subspace atlas"}  # fmt: skip


@dataclass
class ReportOptions:
    """Where the report goes."""

    out: str = "runs/report"
    """Output folder: index.html, timings.json, the store and each stage's saved results."""
    fresh: bool = False
    """Recompute every stage, even those saved with the same options."""

    def __post_init__(self) -> None:
        check_types(self)


def register(sub: Any) -> None:
    for name, help_text in (
        ("report", "run every method on the embedded model and write one offline HTML report"),
        ("demo", "the same as steerlab report (what make demo runs)"),
    ):
        p = subcommand(sub, name, help_text, epilog=EXAMPLES.replace("steerlab report",
                                                                      f"steerlab {name}"))  # fmt: skip
        specs = {"options": add_config(p, ReportOptions),
                 "shared": add_config(p, ReportConfig, title="model and layers")}  # fmt: skip
        for stage in STAGES:
            specs[stage.name] = add_config(p, stage.config_cls, prefix=PREFIX[stage.name],
                                           title=f"{stage.name}: {TITLES[stage.name]}")  # fmt: skip
        p.set_defaults(fn=run, specs=specs)


class BarReporter:
    """One tqdm bar per stage on stderr; a line per finished stage on stdout."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""
        self.phase = ""

    def start(self, stage: str, reused: bool) -> None:
        self.stage, self.phase = stage, ""
        if not reused:
            self.bar = tqdm(total=1, desc=stage, unit="", dynamic_ncols=True, leave=False,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                       "[{elapsed}<{remaining}]")  # fmt: skip

    def progress(self, phase: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if phase != self.phase:
            self.phase = phase
            self.bar.reset(total=max(total, 1))
            self.bar.set_description(f"{self.stage}: {phase}", refresh=False)
        self.bar.n = done
        self.bar.refresh()

    def finish(self, record: StageRecord) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        how = "reused" if record.reused else "computed"
        say(f"{record.name:>9}  {record.seconds:6.1f} s  ({record.cpu_seconds:6.1f} s CPU)  {how}")

    def abort(self) -> None:
        if self.bar is not None:
            self.bar.leave = False
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    specs = args.specs
    o: ReportOptions = specs["options"].build(args, parser=args.parser)
    shared: ReportConfig = specs["shared"].build(args, parser=args.parser)
    stages = {s.name: specs[s.name].build(args, parser=args.parser) for s in STAGES}
    try:
        check_configs(shared, stages)
    except ValueError as e:
        args.parser.error(str(e))
    check_writable(o.out)
    # the tokenizer now, before the report folder is created: a model that cannot be found (a
    # hub id offline, a mistyped directory) fails in one line and leaves nothing behind
    tokenizer = open_tokenizer(shared.model)
    ctx = Context(o.out, shared, load=lambda name, device: open_model(name, device=device),
                  tokenizer_loader=lambda name: tokenizer if name == shared.model
                  else open_tokenizer(name))  # fmt: skip
    say(f"steerlab report: {shared.model}, layers {list(shared.sorted_layers)}, atlas at "
        f"resid_post.{shared.atlas_layer} -> {o.out}")  # fmt: skip
    rep = BarReporter()
    try:
        report = run_report(o.out, shared, stages, fresh=o.fresh, reporter=rep, context=ctx,
                            command=["steerlab", *sys.argv[1:]])  # fmt: skip
    except BaseException:
        rep.abort()
        raise
    say(f"wrote {report.path} in {report.seconds:.0f} s (times: {o.out}/{TIMINGS})")
    return 0
