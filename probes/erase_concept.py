"""Erase a concept from a model's residual stream: LEACE, R-LACE and INLP at the best layer.

    python probes/erase_concept.py                       # gender, embedded SmolLM2-135M
    python probes/erase_concept.py --n 600 --rlace-ranks 1 --ce-tokens 2048   # quicker

1. Capture every layer's ``resid_post`` at the last token of each text, in one pass.
2. Probe every layer (held-out logistic regression); the best layer is where to erase.
3. At that layer, fit LEACE, R-LACE (ranks ``--rlace-ranks``) and INLP on the train split and
   score a fresh probe on the held-out split: accuracy vs rank, against the majority rate.
4. Apply each eraser inside the model (``steer``), check a fresh probe on activations captured
   that way, and measure the language-modelling cost: next-token cross-entropy on a prose
   sample with and without the eraser (nats/token).
5. Optionally scrub several layers (``--scrub-layers``), each fitted after the earlier ones.

Writes ``summary.json``, ``report.html`` and the erasers (``erasers/<method>/``) to ``--out``.
The data file is JSONL with ``text`` and ``label`` (class index) and optionally ``split``
(``train``/``test``; otherwise a seeded 25% of rows is held out).

R-LACE and INLP run with the library's defaults (RlaceConfig, InlpConfig: the rlace-icml
README's 50,000 steps). The README's figures used the paper's Bias in Bios settings, fewer
steps and 40 INLP directions (with lr 0.02 and no momentum the game stalls at 0.56 on gender)::

    python probes/erase_concept.py --rlace-max-iter 4000 --rlace-lr-P 0.005 \
        --rlace-lr-predictor 0.005 --rlace-momentum 0.9 --rlace-eval-every 250 \
        --rlace-dtype float32 --inlp-n-iter 40
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from steerlab.capture import capture
from steerlab.config import (
    ConfigOptions,
    check_nonnegative,
    check_positive,
    check_types,
    parse_configs,
    require,
)
from steerlab.datasets.concepts import load_concept
from steerlab.datasets.corpora import chunk_tokens, prose_corpus
from steerlab.erasure.evaluation import (
    accuracy_vs_rank,
    best_site,
    directions_needed,
    probe_by_site,
)
from steerlab.erasure.inlp import InlpConfig
from steerlab.erasure.leace import probe_scores
from steerlab.erasure.rlace import RlaceConfig
from steerlab.erasure.scrub import EraserEdit, lm_cost, scrub
from steerlab.interventions import steer
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.views.erasure import (
    accuracy_vs_rank_figure,
    erasure_pca_figure,
    probe_by_site_figure,
)
from steerlab.views.report import write_html

ROOT = Path(__file__).resolve().parent.parent


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


@dataclass
class Recipe:
    """The recipe's own settings; R-LACE's and INLP's come from RlaceConfig and InlpConfig
    (``--rlace-*``, ``--inlp-*``, the library's defaults)."""

    model: str = DEFAULT_MODEL
    """Model: the embedded name, a local HF directory or a hub id."""
    data: str = str(ROOT / "data/erasure/gender.jsonl")
    """JSONL with text, label (class index) and optionally split (train/test)."""
    n: int = 0
    """Use a seeded random n of the rows (0: all)."""
    site_kind: str = "resid_post"
    """Kind of the sites probed and erased."""
    layers: str = "all"
    """'all' or comma-separated layers to probe."""
    site: str | None = None
    """Erase at this site instead of the best one (default: the best probed site)."""
    batch_size: int = 32
    """Texts per forward pass."""
    rlace_ranks: tuple[int, ...] = (1, 2, 4)
    """Ranks of the R-LACE games (one game each)."""
    tolerance: float = 0.02
    """How close to the majority rate counts as 'at majority'."""
    ce_tokens: int = 8192
    """Prose tokens for the language-modelling cost."""
    ce_positions: str = "all"
    """Where the eraser acts inside the model."""
    in_model_probe: Literal["leace", "all", "none"] = "leace"
    """Which in-model erasers get a fresh probe on re-captured activations."""
    scrub_layers: tuple[int, ...] = ()
    """Also scrub these layers, each fitted after the earlier ones (e.g. 10,15,20,25)."""
    threads: int = 1
    """Torch and BLAS threads."""
    seed: int = 0
    """Seed of the row subsample, the split and of R-LACE and INLP."""
    out: str = str(ROOT / "runs/erasure")
    """Output folder: summary.json, report.html and erasers/."""

    def __post_init__(self) -> None:
        check_types(self)
        check_nonnegative(self, "n", "seed", "tolerance")
        check_positive(self, "batch_size", "ce_tokens", "threads")
        require(self, "rlace_ranks", len(self.rlace_ranks) > 0 and min(self.rlace_ranks) >= 1,
                "ranks >= 1")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, RlaceConfig, InlpConfig]:
    return parse_configs(
        Recipe,
        ConfigOptions(RlaceConfig, prefix="rlace", skip=("rank", "seed")),
        ConfigOptions(InlpConfig, prefix="inlp", skip=("seed",)),
        argv=argv,
        description=__doc__,
    )


def main(argv: list[str] | None = None) -> dict:
    args, rlace_cfg, inlp_cfg = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    try:  # sklearn's BLAS pool oversubscribes a busy machine (25x slower probes measured)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.time() - t0 - sum(timings.values()), 1)
        print(f"[{time.time() - t0:7.1f}s] {name} done", flush=True)

    handle = load_model(args.model)
    data = load_concept(args.data, n=args.n or None, seed=args.seed)
    texts, y, test, names = data.texts, data.labels, data.test, data.class_names
    train = ~test
    layers = range(handle.n_layers) if args.layers == "all" else _ints(args.layers)
    sites = [f"{args.site_kind}.{layer}" for layer in layers]
    if args.site and args.site not in sites:
        sites.append(args.site)
    print(f"{len(texts)} texts ({int(train.sum())} train / {int(test.sum())} test), "
          f"{len(sites)} sites, model {handle.model_id}")  # fmt: skip

    # 1-2. one capture pass at every site; probe each; the best site
    cap = capture(handle, texts, sites, positions="last", batch_size=args.batch_size)
    lap("capture")
    scores = probe_by_site(cap.acts, y, train, test)
    site = args.site or best_site(scores)
    lap("probe by site")
    x = cap[site].double()
    xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]
    print(f"best site {site}: held-out probe accuracy {scores[site].accuracy:.4f}")

    # 3. accuracy vs rank for the three methods
    rcfg = replace(rlace_cfg, seed=args.seed)
    icfg = replace(inlp_cfg, seed=args.seed)
    curves = accuracy_vs_rank(xtr, ytr, xte, yte, rlace_ranks=list(args.rlace_ranks),
                              rlace_config=rcfg, inlp_config=icfg,
                              progress=lambda m: print("  " + m, flush=True))  # fmt: skip
    lap("accuracy vs rank")
    maj = curves.majority
    inlp_curve = curves.curves["inlp"]
    needed = directions_needed(inlp_curve, maj, args.tolerance)
    chosen = {
        "leace": curves.curves["leace"].erasers[1],
        "rlace_rank1": curves.curves["rlace"].erasers[1],
        "inlp": inlp_curve.erasers[inlp_curve.ranks.index(needed) if needed else -1],
    }

    # 4. in the model: a fresh probe on activations captured with the eraser, and the LM cost
    prose = chunk_tokens(handle.tokenizer, prose_corpus(docstrings=False), seq_len=128,
                         n_tokens=args.ce_tokens)  # fmt: skip
    in_model: dict[str, dict] = {}
    base = None
    downstream = f"{args.site_kind}.{handle.n_layers - 1}"
    for name, eraser in chosen.items():
        iv = EraserEdit(eraser, site, positions=args.ce_positions)
        iv.save(out / "erasers" / name)
        entry: dict = {"rank": eraser.edit_rank}
        if args.in_model_probe == "all" or (args.in_model_probe == "leace" and name == "leace"):
            # the site itself (only its last-token edit is read) and the last layer: does the
            # concept come back downstream of the erasure?
            probe_sites = list(dict.fromkeys([site, downstream]))
            with steer(handle, iv):
                c2 = capture(handle, texts, probe_sites, positions="last",
                             batch_size=args.batch_size)  # fmt: skip
            for key, s in (("probe_accuracy", site), ("probe_accuracy_downstream", downstream)):
                entry[key] = probe_scores(c2[s][train], ytr, c2[s][test], yte)[1]
            entry["downstream_site"] = downstream
            entry["downstream_accuracy_before"] = (
                scores[downstream].accuracy if downstream in scores else None
            )
            print(
                f"  in-model {name}: fresh probe at {site} {entry['probe_accuracy']:.4f}, at "
                f"{downstream} {entry['probe_accuracy_downstream']:.4f} (majority {maj:.4f})"
            )
        cost = lm_cost(handle, prose, iv, base=base)
        base = cost.ce_base
        entry.update({"ce_base": cost.ce_base, "ce_erased": cost.ce_edited,
                      "ce_increase": cost.increase, "n_tokens": cost.n_tokens})  # fmt: skip
        in_model[name] = entry
        print(f"  in-model {name} (rank {eraser.edit_rank}, positions {args.ce_positions}): CE "
              f"{cost.ce_base:.4f} -> {cost.ce_edited:.4f} nats/token (+{cost.increase:.4f})",
              flush=True)  # fmt: skip
    lap("in-model erasure")

    # 5. optional scrubbing across layers
    scrubbed = None
    if args.scrub_layers:
        scrub_sites = [f"{args.site_kind}.{layer}" for layer in args.scrub_layers]
        res = scrub(handle, [texts[i] for i in train.nonzero().flatten().tolist()], ytr,
                    scrub_sites, apply_positions=args.ce_positions,
                    batch_size=args.batch_size)  # fmt: skip
        last = max(res.erasers, key=lambda s: int(s.split(".")[1]))
        with steer(handle, res.interventions):
            c3 = capture(handle, texts, site, positions="last", batch_size=args.batch_size)[site]
        _, acc = probe_scores(c3[train], ytr, c3[test], yte)
        cost = lm_cost(handle, prose, res.interventions, base=base)
        scrubbed = {"sites": list(res.erasers), "probe_site": site, "probe_accuracy": acc,
                    "last_site": last, "ce_base": cost.ce_base, "ce_erased": cost.ce_edited,
                    "ce_increase": cost.increase}  # fmt: skip
        print(f"  scrubbed {scrubbed['sites']}: probe at {site} {acc:.4f}; "
              f"CE +{cost.increase:.4f} nats/token", flush=True)  # fmt: skip
        lap("scrub")

    summary = {
        "model": handle.model_id,
        "data": str(args.data),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "site": site,
        "majority": maj,
        "constant": curves.constant,
        "probe_by_site": {s: v._asdict() for s, v in scores.items()},
        "accuracy_vs_rank": curves.to_json(),
        "inlp_directions_needed": needed,
        "tolerance": args.tolerance,
        "in_model": in_model,
        "scrub": scrubbed,
        "settings": {**asdict(args), "rlace": asdict(rcfg), "inlp": asdict(icfg)},
        "timings_s": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    erased = {f"{k} (rank {e.edit_rank})": e(xte) for k, e in chosen.items()}
    figs = {
        "Probe accuracy by layer": probe_by_site_figure(scores, maj),
        "Accuracy vs rank": accuracy_vs_rank_figure(curves, title=f"{site}: accuracy vs rank"),
        "PCA before and after erasure": erasure_pca_figure(xte, erased, yte, class_names=names),
    }
    notes = (f"{handle.model_id}, concept from {args.data}; best site {site}. Held-out probe "
             f"accuracy before {curves.accuracy_before:.4f}, majority {maj:.4f}; after LEACE "
             f"{curves.curves['leace'].accuracy[1]:.4f}, R-LACE rank 1 "
             f"{curves.curves['rlace'].accuracy[1]:.4f}; INLP reaches majority + "
             f"{args.tolerance} at rank {needed}.")  # fmt: skip
    write_html(figs, out / "report.html", title="Concept erasure", notes=notes)
    lap("report")
    print(json.dumps({k: summary[k] for k in ("site", "majority", "inlp_directions_needed")}))
    print(f"wrote {out / 'summary.json'} and {out / 'report.html'}")
    return summary


if __name__ == "__main__":
    main()
