"""Linear probes per layer: token-level selectivity with control tasks, and ridge on years.

    python probes/linear_sweep.py                      # embedded SmolLM2-135M

- ``tokens``: small standard-library functions, every token labelled by its lexical role
  (keyword, builtin, definition name, attribute, name, number, string, operator;
  ``steerlab.probes.sweep.code_token_task``). A logistic probe per layer on the last subword
  of each token, and the same probe on Hewitt & Liang's control task (each word type gets a
  random label from the empirical distribution); selectivity = task − control accuracy on
  held-out snippets.
- ``years``: a ridge probe per layer from the year's last digit to the year (R², for
  comparison with the PLS probe of probes/numeric_pls.py).

Results: runs/linear_sweep/results.json and report.html. The probes' settings are
ProbeConfig's (the library's defaults: C in 0.01, 0.1, 1, 10 by 5-fold CV, 20% held out); the
README's token table used ``--stages tokens --C 1.0 --test-fraction 0.25 --n-snippets 120``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from steerlab.config import ConfigOptions, check_positive, check_types, parse_configs, require
from steerlab.datasets.numeric import load_number_sentences
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.probes.linear import ProbeConfig
from steerlab.probes.sweep import (
    TOKEN_CLASSES,
    capture_layers,
    code_token_task,
    format_table,
    probe_sweep,
    selectivity_sweep,
)
from steerlab.views import write_html
from steerlab.views.probes import layer_curves

STAGES = ("tokens", "years")


@dataclass
class Recipe:
    """The recipe's own settings; the probes' come from ProbeConfig."""

    model: str = DEFAULT_MODEL
    """Model: the embedded name, a local HF directory or a hub id."""
    out: str = "runs/linear_sweep"
    """Output folder: results.json and report.html."""
    stages: tuple[str, ...] = STAGES
    """Stages to run: tokens, years."""
    n_snippets: int = 40
    """Standard-library functions whose tokens are labelled (tokens stage)."""
    n_years: int = 500
    """Sentences with a year (years stage)."""
    layers: tuple[int, ...] | None = None
    """Layers to probe (default: all)."""
    batch_size: int = 16
    """Texts per forward pass."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "n_snippets", "n_years", "batch_size")
        require(self, "stages", set(self.stages) <= set(STAGES), f"stages among {STAGES}")


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, ProbeConfig]:
    # the kind of probe is the stage's (logistic on token roles, ridge on years)
    return parse_configs(
        Recipe,
        ConfigOptions(ProbeConfig, skip=("kind",), rename={"C_grid": "C", "n_folds": "folds"}),
        argv=argv,
        description=__doc__,
    )


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    results: dict = {"model": model.model_id, "args": asdict(args), "probe": asdict(cfg)}
    figs = {}
    if "tokens" in args.stages:
        task = code_token_task(args.n_snippets)
        t0 = time.time()
        cap = capture_layers(model, task.texts, task.spans, layers=args.layers,
                             batch_size=args.batch_size)  # fmt: skip
        # one row per (snippet, span); spans sharing their last subword merge into one row
        doc, span = cap.doc_ids.tolist(), cap.span_ids.tolist()
        labels = torch.tensor([task.labels[d][s] for d, s in zip(doc, span)])
        words = [task.words[d][s] for d, s in zip(doc, span)]
        vocab: dict[str, int] = {}
        types = torch.tensor([vocab.setdefault(w, len(vocab)) for w in words])
        counts = torch.bincount(labels, minlength=len(TOKEN_CLASSES)).tolist()
        print(
            f"[tokens] {len(task.texts)} snippets, {len(labels)} tokens, {len(vocab)} types; "
            f"labels {dict(zip(TOKEN_CLASSES, counts))} ({time.time() - t0:.0f} s capture)"
        )
        rows = selectivity_sweep(cap.acts, labels, types, replace(cfg, kind="logistic"),
                                 groups=cap.doc_ids)  # fmt: skip
        print(format_table(rows, ["layer", "task_acc", "control_acc", "selectivity",
                                  "majority", "C_task", "C_control"]))  # fmt: skip
        best = max(rows, key=lambda r: r["selectivity"])
        print(
            f"most selective layer {best['layer']}: task {best['task_acc']:.3f}, control "
            f"{best['control_acc']:.3f}, selectivity {best['selectivity']:.3f}"
        )
        results["tokens"] = {"n_tokens": len(labels), "n_types": len(vocab),
                             "label_counts": dict(zip(TOKEN_CLASSES, counts)), "rows": rows}  # fmt: skip
        figs["Token roles: task vs control accuracy, selectivity"] = layer_curves(
            rows,
            ["task_acc", "control_acc", "selectivity", "majority"],
            title="Logistic probe on code-token roles (Hewitt & Liang control task)",
            y_title="held-out accuracy / selectivity",
        )
    if "years" in args.stages:
        sents = load_number_sentences(kind="year")[: args.n_years]
        cap = capture_layers(model, [s.text for s in sents], [s.span for s in sents],
                             layers=args.layers, batch_size=args.batch_size)  # fmt: skip
        y = torch.tensor([s.value for s in sents], dtype=torch.float64)
        rows = probe_sweep(cap.acts, y, replace(cfg, kind="ridge"))
        print(f"\n[years, ridge] n={len(sents)}")
        print(format_table(rows, ["layer", "score", "train_score", "strength"]))
        results["years_ridge"] = {"n": len(sents), "rows": rows}
        figs["Years in text: ridge R² per layer"] = layer_curves(
            rows, ["score"], title="Ridge probe: held-out R² per layer", y_title="R²"
        )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_html(figs, out / "report.html", title="Linear probes per layer",
               notes=f"Model {model.model_id}. Command: python {' '.join(sys.argv)}")  # fmt: skip
    print(f"\nwrote {out / 'results.json'} and {out / 'report.html'}")


if __name__ == "__main__":
    main()
