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

Results: runs/linear_sweep/results.json and report.html.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from steerlab import load_model
from steerlab.datasets.numeric import load_number_sentences
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default="runs/linear_sweep")
    ap.add_argument("--stages", nargs="+", default=["tokens", "years"],
                    choices=["tokens", "years"])  # fmt: skip
    ap.add_argument("--n-snippets", type=int, default=40)
    ap.add_argument("--n-years", type=int, default=500)
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="default: all")
    ap.add_argument("--C", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    results: dict = {"model": model.model_id, "args": vars(args)}
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
        cfg = ProbeConfig(C_grid=tuple(args.C), n_folds=args.folds, test_fraction=0.25)
        rows = selectivity_sweep(cap.acts, labels, types, cfg, groups=cap.doc_ids)
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
        rows = probe_sweep(cap.acts, y, ProbeConfig(kind="ridge", n_folds=args.folds))
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
