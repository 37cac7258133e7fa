"""Run the report's stages in order, reusing saved ones, and write ``DIR/index.html``.

Stages and what they read (a stage's key covers its inputs' keys, so changing a config
recomputes that stage and everything downstream of it):

    capture ─┬─ pca ───────┐
             └─ sae ───────┤
    probes ────────────────┼─ atlas
    erasure ───────────────┤
    steering ──────────────┘

``DIR/timings.json`` records each stage's time (and whether it was reused), the run's total
time and the machine's load average.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from steerlab import __version__
from steerlab.io import atomic_write_text
from steerlab.report import atlas, capture, erasure, pca, probes, sae, steering
from steerlab.report.context import Context, ReportConfig
from steerlab.report.page import Section, write_page
from steerlab.report.stages import StageCache, StageRecord, config_dict, stage_key

__all__ = [
    "STAGES",
    "Report",
    "Reporter",
    "Stage",
    "check_configs",
    "default_configs",
    "run_report",
]

INDEX = "index.html"
TIMINGS = "timings.json"


@dataclass(frozen=True)
class Stage:
    """One stage: its config class, inputs, the shared settings it reads, and its functions."""

    name: str
    config_cls: type
    inputs: tuple[str, ...]
    shared: tuple[str, ...]
    """Fields of :class:`ReportConfig` that change its result."""
    run: Callable[..., Any]
    section: Callable[..., Section]


STAGES: tuple[Stage, ...] = (
    Stage("capture", capture.CaptureConfig, (), ("model", "layers", "atlas_layer"),
          capture.run, capture.section),
    Stage("pca", pca.PCAConfig, ("capture",), ("atlas_layer", "seed"), pca.run, pca.section),
    Stage("probes", probes.ProbesConfig, (), ("model", "layers", "atlas_layer", "seed"),
          probes.run, probes.section),
    Stage("erasure", erasure.ErasureConfig, (), ("model", "layers", "atlas_layer", "seed"),
          erasure.run, erasure.section),
    Stage("sae", sae.SaeStageConfig, ("capture",), ("atlas_layer", "seed"), sae.run, sae.section),
    Stage("steering", steering.SteeringStageConfig, (), ("model", "atlas_layer"), steering.run,
          steering.section),
    Stage("atlas", atlas.AtlasConfig, ("pca", "probes", "erasure", "sae", "steering"), ("seed",),
          atlas.run, atlas.section),
)  # fmt: skip
"""The stages, in the order they run."""


def check_configs(config: ReportConfig, stages: Mapping[str, Any]) -> None:
    """Checks across configs, before anything runs (each config checks itself on creation).

    Raises:
        ValueError: naming the option to change.
    """
    pca_cfg = stages.get("pca")
    if pca_cfg is not None:
        missing = [L for L in pca_cfg.scatter_layers if L not in config.layers]
        if missing:
            raise ValueError(f"--pca-scatter-layers {missing}: not among --layers "
                             f"{list(config.sorted_layers)}")  # fmt: skip


def default_configs() -> dict[str, Any]:
    """Stage name -> its config with the defaults."""
    return {s.name: s.config_cls() for s in STAGES}


class Reporter(Protocol):
    """Receives the run's progress (the CLI draws a progress bar per stage)."""

    def start(self, stage: str, reused: bool) -> None: ...
    def progress(self, phase: str, done: int, total: int) -> None: ...
    def finish(self, record: StageRecord) -> None: ...


class _Silent:
    def start(self, stage: str, reused: bool) -> None:
        del stage, reused

    def progress(self, phase: str, done: int, total: int) -> None:
        del phase, done, total

    def finish(self, record: StageRecord) -> None:
        del record


class Report(NamedTuple):
    """What :func:`run_report` did."""

    path: Path
    """The page, ``DIR/index.html``."""
    records: list[StageRecord]
    """One per stage, in order."""
    seconds: float
    """Wall time of this run."""


def _stage_config(stage: Stage, shared: ReportConfig, cfg: Any) -> dict[str, Any]:
    full = config_dict(shared)
    return {**{k: full[k] for k in stage.shared}, stage.name: config_dict(cfg)}


def run_report(
    out: str | os.PathLike,
    config: ReportConfig | None = None,
    stages: Mapping[str, Any] | None = None,
    *,
    fresh: bool = False,
    reporter: Reporter | None = None,
    context: Context | None = None,
    command: Sequence[str] | None = None,
) -> Report:
    """Run (or reuse) every stage and write ``out/index.html``.

    Args:
        out: the output folder (created).
        config: shared settings (default :class:`ReportConfig`).
        stages: stage name -> config, overriding :func:`default_configs`.
        fresh: recompute every stage even when a saved result has the same config.
        reporter: progress receiver (default silent).
        context: a prepared :class:`Context` (a given model, a model loader); its ``out``
            and ``config`` are used.
        command: the command line that asked for the report (shown on the page).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    config = config or (context.config if context is not None else ReportConfig())
    ctx = context or Context(out, config)
    ctx.out.mkdir(parents=True, exist_ok=True)
    cfgs = {**default_configs(), **dict(stages or {})}
    unknown = set(cfgs) - {s.name for s in STAGES}
    if unknown:
        raise KeyError(f"unknown report stages {sorted(unknown)}; the stages are "
                       f"{[s.name for s in STAGES]}")  # fmt: skip
    check_configs(ctx.config, cfgs)
    rep = reporter or _Silent()
    cache = StageCache(ctx.out / "stages")
    keys: dict[str, str] = {}
    records: list[StageRecord] = []
    sections: list[Section] = []
    for stage in STAGES:
        cfg = cfgs[stage.name]
        conf = _stage_config(stage, ctx.config, cfg)
        inputs = {n: keys[n] for n in stage.inputs}
        key = keys[stage.name] = stage_key(stage.name, conf, inputs)
        saved = None if fresh else cache.load(stage.name, key)
        rep.start(stage.name, saved is not None)
        if saved is not None:
            result, meta = saved
            record = StageRecord(stage.name, key, float(meta["seconds"]), True, conf,
                                 float(meta.get("cpu_seconds", float("nan"))))  # fmt: skip
        else:
            ctx.progress = rep.progress
            s0, c0 = time.perf_counter(), time.process_time()
            result = stage.run(ctx, cfg, key) if stage.name == "capture" else stage.run(ctx, cfg)
            seconds, cpu = time.perf_counter() - s0, time.process_time() - c0
            cache.save(stage.name, key, conf, inputs, result, seconds, cpu)
            record = StageRecord(stage.name, key, seconds, False, conf, cpu)
        ctx.results[stage.name] = result
        section = stage.section(result, ctx, cfg)
        section.config, section.seconds, section.reused = conf, record.seconds, record.reused
        section.cpu_seconds = record.cpu_seconds
        sections.append(section)
        records.append(record)
        rep.finish(record)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    path = _write(ctx, sections, records, total, cpu, command)
    return Report(path, records, time.perf_counter() - t0)


def _write(ctx: Context, sections: list[Section], records: list[StageRecord], total: float,
           cpu: float, command: Sequence[str] | None) -> Path:  # fmt: skip
    cap = ctx.result("capture").data
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    computed = sum(r.seconds for r in records if not r.reused)
    timings = {
        "total_s": total, "cpu_s": cpu, "computed_s": computed, "load_average": list(load),
        "threads": torch.get_num_threads(),
        "stages": {r.name: {"seconds": r.seconds, "cpu_seconds": r.cpu_seconds,
                            "reused": r.reused} for r in records},
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steerlab_version": __version__,
    }  # fmt: skip
    atomic_write_text(ctx.out / TIMINGS, json.dumps(timings, indent=1))
    stage_times = ", ".join(f"{r.name} {r.seconds:.0f} s" + (" (reused)" if r.reused else "")
                            for r in records)  # fmt: skip
    summary = [
        ("model", cap["model_id"]),
        ("capture", f"{cap['n_tokens']:,} prose tokens at {', '.join(cap['sites'])}"),
        ("this run", f"{total:.0f} s wall time, {cpu:.0f} s of CPU on {torch.get_num_threads()} "
                     f"threads (load average {load[0]:.1f} at the end)"),
        ("stage times", stage_times),
        ("command", " ".join(command) if command else "steerlab report"),
        ("steerlab", __version__),
    ]  # fmt: skip
    lead = (
        "The workbench's shape end to end on one model: a single capture pass feeds principal "
        "directions and a sparse autoencoder; probes, concept erasure and steering read small "
        "data sets at the same layers; the subspace atlas compares the directions every method "
        f"found at {ctx.site(ctx.config.atlas_layer)}. Each section says what its figures show, "
        "the config that produced it and how long it took; the page works offline."
    )
    return write_page(ctx.out / INDEX, sections, title=f"steerlab report: {cap['model_id']}",
                      lead=lead, summary=summary)  # fmt: skip
