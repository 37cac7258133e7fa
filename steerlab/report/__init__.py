"""``steerlab report``: the workbench's shape end to end on one model, as one offline HTML page.

    >>> from steerlab.report import ReportConfig, run_report
    >>> run_report("runs/report")              # embedded model; reruns reuse finished stages
    Report(path=PosixPath('runs/report/index.html'), ...)

Stages (one module each; each returns data and tensors, saved under ``DIR/stages/<name>/``,
and a section of text, tables and figures built from them):

- :mod:`~steerlab.report.capture` — one capture pass over prose at every site, sinks marked;
- :mod:`~steerlab.report.pca` — principal directions per layer, sinks left out;
- :mod:`~steerlab.report.probes` — a probe with control-task selectivity, PLS on years;
- :mod:`~steerlab.report.erasure` — LEACE on gender, its accuracy and LM cost;
- :mod:`~steerlab.report.sae` — a small TopK SAE on the store, its metrics and a dashboard;
- :mod:`~steerlab.report.steering` — a sentiment vector, a strength sweep, generations;
- :mod:`~steerlab.report.atlas` — principal angles between all of their subspaces.

:mod:`~steerlab.report.pipeline` runs them with resumption (:mod:`~steerlab.report.stages`)
and :mod:`~steerlab.report.page` writes the page. The library prints nothing: progress goes to
a :class:`~steerlab.report.pipeline.Reporter` (the CLI draws one bar per stage).
"""

from steerlab.report.context import Context, ReportConfig
from steerlab.report.pipeline import STAGES, Report, Reporter, default_configs, run_report
from steerlab.report.stages import StageRecord

__all__ = [
    "STAGES",
    "Context",
    "Report",
    "ReportConfig",
    "Reporter",
    "StageRecord",
    "default_configs",
    "run_report",
]
