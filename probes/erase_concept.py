"""Erase a concept from a model's residual stream: LEACE, R-LACE and INLP at the best layer.

    python probes/erase_concept.py                       # gender, embedded SmolLM2-135M
    python probes/erase_concept.py --n 600 --rlace-ranks 1 --ce-tokens 2048   # quicker

1. Capture every layer's ``resid_post`` at the last token of each text, in one pass (cached in
   ``OUT/capture.safetensors``).
2. Probe every layer (held-out logistic regression); the best layer is where to erase.
3. At that layer, fit LEACE, R-LACE (ranks ``--rlace-ranks``) and INLP on the train split and
   score a fresh probe on the held-out split: accuracy vs rank, against the majority rate.
   Each fitted eraser is kept in ``OUT/fits/`` and reused while its settings match.
4. INLP's regularisation sweep (``--inlp-Cs``): one INLP run per ``C`` to ``--inlp-n-iter``
   directions, the held-out accuracy after each prefix, and how close the first direction is
   to the class-mean difference.
5. Apply each eraser inside the model (``steer``), check a fresh probe on activations captured
   that way, and measure the language-modelling cost: next-token cross-entropy on a prose
   sample with and without the eraser (nats/token).
6. Optionally scrub several layers (``--scrub-layers``), each fitted after the earlier ones.

``--stages`` picks among capture, erase, inlp_sweep, in_model, scrub (capture always runs or
loads). Writes ``summary.json``, ``report.html`` and the erasers (``erasers/<method>/``) to
``--out``. The data file is JSONL with ``text`` and ``label`` (class index) and optionally
``split`` (``train``/``test``; otherwise a seeded 25% of rows is held out).

R-LACE and INLP run with the library's defaults (RlaceConfig, InlpConfig: the rlace-icml
README's 50,000 steps). The README's figures use the paper's Bias in Bios settings (60,000
game steps, SGD lr 0.005, predictor momentum 0.9, ε 0.002) and 40 INLP directions::

    python probes/erase_concept.py --rlace-max-iter 60000 --rlace-lr-P 0.005 \
        --rlace-lr-predictor 0.005 --rlace-momentum 0.9 --rlace-epsilon 0.002 \
        --rlace-dtype float32 --inlp-n-iter 40 --inlp-epsilon 0
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import steerlab.artifacts
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
    RankCurves,
    best_site,
    constant_rate,
    directions_needed,
    inlp_prefix,
    inlp_sweep_point,
    probe_by_site,
    rank_curve,
    rlace_rescaled,
)
from steerlab.erasure.inlp import InlpConfig, inlp
from steerlab.erasure.leace import AffineEraser, LeaceEraser, majority_rate, probe_scores
from steerlab.erasure.rlace import RlaceConfig
from steerlab.erasure.scrub import EraserEdit, lm_cost, scrub
from steerlab.interventions import steer
from steerlab.io import atomic_file
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.views.erasure import (
    accuracy_vs_rank_figure,
    erasure_pca_figure,
    probe_by_site_figure,
)
from steerlab.views.report import write_html

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("erase", "inlp_sweep", "in_model", "scrub")


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
    stages: tuple[str, ...] = STAGES
    """Stages to run: erase, inlp_sweep, in_model, scrub (the capture always runs or loads)."""
    rlace_ranks: tuple[int, ...] = (1, 2, 4)
    """Ranks of the R-LACE games (one game each)."""
    inlp_Cs: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """Regularisation strengths of the INLP sweep (inlp_sweep stage; the other settings are
    InlpConfig's, except that each run goes to ``--inlp-n-iter`` directions without stopping)."""
    inlp_sweep_ranks: tuple[int, ...] = (1, 2, 3, 5, 10, 15, 20, 30, 40)
    """Numbers of INLP directions scored in the sweep."""
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
    """Output folder: summary.json, report.html, erasers/, the capture and fits/ caches."""
    tag: str = ""
    """Suffix of summary<tag>.json and report<tag>.html."""

    def __post_init__(self) -> None:
        check_types(self)
        check_nonnegative(self, "n", "seed", "tolerance")
        check_positive(self, "batch_size", "ce_tokens", "threads")
        require(self, "rlace_ranks", len(self.rlace_ranks) > 0 and min(self.rlace_ranks) >= 1,
                "ranks >= 1")  # fmt: skip
        require(self, "stages", set(self.stages) <= set(STAGES), f"stages among {STAGES}")
        require(self, "inlp_Cs", all(c > 0 for c in self.inlp_Cs), "positive values")


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, RlaceConfig, InlpConfig]:
    return parse_configs(
        Recipe,
        ConfigOptions(RlaceConfig, prefix="rlace", skip=("rank", "seed")),
        ConfigOptions(InlpConfig, prefix="inlp", skip=("seed",)),
        argv=argv,
        description=__doc__,
    )


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _jsonable(obj: object) -> object:
    return json.loads(json.dumps(obj, default=str))


def cached_capture(handle, texts, sites, batch_size: int, path: Path, key: str) -> dict:
    """Last-token activations at ``sites``, reusing ``path`` while its key matches."""
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("key")
        if stored == key:
            print(f"reusing the capture in {path}")
            return load_file(str(path))
        print(f"{path} holds another capture (key {stored} != {key}); capturing again")
    cap = capture(handle, texts, sites, positions="last", batch_size=batch_size)
    acts = {s: cap[s].contiguous() for s in sites}
    with atomic_file(path) as tmp:
        save_file(acts, str(tmp), metadata={"key": key})
    return acts


def fitted(path: Path, settings: dict, fit) -> AffineEraser:
    """The eraser saved at ``path`` if it was fitted with ``settings``, else ``fit()`` (saved)."""
    want = _jsonable(settings)
    if (path / "cfg.json").is_file():
        old = steerlab.artifacts.load(path)
        if old.meta.get("recipe_settings") == want:
            return old
    t = time.time()
    e = fit()
    e = replace(e, meta={**e.meta, "recipe_settings": want, "fit_seconds": time.time() - t})
    e.save(path)
    return e


def _inlp_ranks(full) -> list[int]:
    """The rank after each INLP classifier (a multiclass classifier adds C − 1 directions)."""
    return sorted(({h["rank"] for h in full.meta["history"]} | {full.rank}) - {0})


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

    def note(msg: str) -> None:
        print("  " + msg, flush=True)

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

    # 1-2. one capture pass at every site (cached); probe each; the best site
    data_key = _digest([handle.model_id, handle.tokenizer_fingerprint(), texts, y.tolist(),
                        test.tolist(), sites])  # fmt: skip
    acts = cached_capture(handle, texts, sites, args.batch_size, out / "capture.safetensors",
                          data_key)  # fmt: skip
    lap("capture")
    scores = probe_by_site(acts, y, train, test)
    site = args.site or best_site(scores)
    lap("probe by site")
    x = acts[site].double()
    xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]
    print(f"best site {site}: held-out probe accuracy {scores[site].accuracy:.4f}")
    acc0, maj = scores[site].accuracy, majority_rate(yte)
    fit_key = {"data": data_key, "site": site}
    rcfg = replace(rlace_cfg, seed=args.seed)
    icfg = replace(inlp_cfg, seed=args.seed)
    summary: dict = {
        "model": handle.model_id, "data": str(args.data), "n_train": int(train.sum()),
        "n_test": int(test.sum()), "site": site, "majority": maj,
        "probe_by_site": {s: v._asdict() for s, v in scores.items()},
        "settings": {**asdict(args), "rlace": asdict(rcfg), "inlp": asdict(icfg)},
    }  # fmt: skip
    figs: dict = {"Probe accuracy by layer": probe_by_site_figure(scores, maj)}

    # 3. accuracy vs rank for the three methods (each fit cached in OUT/fits/)
    chosen: dict[str, AffineEraser] = {}
    if {"erase", "in_model"} & set(args.stages):
        fits = out / "fits"
        leace = fitted(fits / "leace", {**fit_key, "method": "leace"},
                       lambda: LeaceEraser.fit(xtr, ytr))  # fmt: skip
        # the orthogonal projection of the class-mean differences: the rank-1 orthogonal guard
        # that R-LACE and INLP search for, in closed form (concept-erasure's method="orth")
        orth = fitted(fits / "leace_orth", {**fit_key, "method": "leace_orth"},
                      lambda: LeaceEraser.fit(xtr, ytr, method="orth"))  # fmt: skip
        games = []
        for r in args.rlace_ranks:
            cfg_r = replace(rcfg, rank=r)
            name = f"rlace_rank{r}" if cfg_r.init == "random" else f"rlace_{cfg_r.init}_rank{r}"
            games.append(fitted(fits / name, {**fit_key, "rlace": asdict(cfg_r)},
                                lambda c=cfg_r: rlace_rescaled(xtr, ytr, c)))  # fmt: skip
            b = games[-1].meta["best"]
            note(f"R-LACE rank {r}: best P at step {b['iter']} of "
                 f"{games[-1].meta['history'][-1]['iter'] + 1} (dev accuracy {b['accuracy']:.3f}, "
                 f"{games[-1].meta['fit_seconds']:.0f} s)")  # fmt: skip
        full = fitted(fits / "inlp", {**fit_key, "inlp": asdict(icfg)},
                      lambda: inlp(xtr, ytr, icfg))  # fmt: skip
        kw = {"accuracy_before": acc0, "progress": note}
        curves = RankCurves(
            {
                "leace": rank_curve("leace", [leace], xtr, ytr, xte, yte, **kw),
                "leace_orth": rank_curve("leace_orth", [orth], xtr, ytr, xte, yte, **kw),
                "rlace": rank_curve("rlace", games, xtr, ytr, xte, yte, **kw),
                "inlp": rank_curve("inlp", [inlp_prefix(full, r) for r in _inlp_ranks(full)],
                                   xtr, ytr, xte, yte, **kw),
            },
            maj, acc0, constant_rate(ytr, yte),
        )  # fmt: skip
        lap("accuracy vs rank")
        inlp_curve = curves.curves["inlp"]
        needed = directions_needed(inlp_curve, maj, args.tolerance)
        chosen = {
            "leace": leace,
            "rlace_rank1": curves.curves["rlace"].erasers[1],
            "inlp": inlp_curve.erasers[inlp_curve.ranks.index(needed) if needed else -1],
        }
        summary.update({
            "constant": curves.constant, "accuracy_vs_rank": curves.to_json(),
            "inlp_directions_needed": needed, "tolerance": args.tolerance,
            "rlace_games": {str(g.meta["config"]["rank"]): {
                "best": g.meta["best"], "steps": g.meta["history"][-1]["iter"] + 1,
                "fit_seconds": g.meta.get("fit_seconds"), "history": g.meta["history"]}
                for g in games},
        })  # fmt: skip
        erased = {f"{k} (rank {e.edit_rank})": e(xte) for k, e in chosen.items()}
        figs["Accuracy vs rank"] = accuracy_vs_rank_figure(
            curves, title=f"{site}: accuracy vs rank"
        )
        figs["PCA before and after erasure"] = erasure_pca_figure(
            xte, erased, yte, class_names=names
        )

    # 4. INLP's regularisation sweep (one cached run per C)
    if "inlp_sweep" in args.stages:
        path = out / "inlp_sweep.json"
        cache = json.loads(path.read_text()) if path.is_file() else {}
        rows = []
        for C in args.inlp_Cs:
            cfg_c = replace(icfg, C=C, epsilon=None)  # the whole curve, whatever the accuracy
            key = _digest([fit_key, asdict(cfg_c), list(args.inlp_sweep_ranks)])
            if key not in cache:
                t = time.time()
                pt = inlp_sweep_point(xtr, ytr, xte, yte, cfg_c, args.inlp_sweep_ranks,
                                      accuracy_before=acc0)  # fmt: skip
                c = pt.curve
                cache[key] = {
                    "C": C, "ranks": c.ranks, "accuracy": c.accuracy, "mse": c.mse,
                    "first_direction_cosine": pt.first_direction_cosine,
                    "directions_needed": directions_needed(c, maj, args.tolerance),
                    "seconds": time.time() - t,
                }  # fmt: skip
                path.write_text(json.dumps(cache, indent=1))
            row = cache[key]
            rows.append(row)
            acc = dict(zip(row["ranks"], row["accuracy"]))
            note(f"INLP C={C:g}: cos(first direction, mean difference) "
                 f"{row['first_direction_cosine']:.4f}; held-out accuracy "
                 + ", ".join(f"{r}: {acc[r]:.3f}" for r in row["ranks"]))  # fmt: skip
        summary["inlp_sweep"] = rows
        lap("inlp sweep")

    # 5. in the model: a fresh probe on activations captured with the eraser, and the LM cost
    in_model: dict[str, dict] = {}
    base = None
    prose = None
    if {"in_model", "scrub"} & set(args.stages):
        prose = chunk_tokens(handle.tokenizer, prose_corpus(docstrings=False), seq_len=128,
                             n_tokens=args.ce_tokens)  # fmt: skip
    downstream = f"{args.site_kind}.{handle.n_layers - 1}"
    for name, eraser in chosen.items() if "in_model" in args.stages else ():
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
    if in_model:
        summary["in_model"] = in_model
        lap("in-model erasure")

    # 6. optional scrubbing across layers
    if args.scrub_layers and "scrub" in args.stages:
        scrub_sites = [f"{args.site_kind}.{layer}" for layer in args.scrub_layers]
        res = scrub(handle, [texts[i] for i in train.nonzero().flatten().tolist()], ytr,
                    scrub_sites, apply_positions=args.ce_positions,
                    batch_size=args.batch_size)  # fmt: skip
        last = max(res.erasers, key=lambda s: int(s.split(".")[1]))
        with steer(handle, res.interventions):
            c3 = capture(handle, texts, site, positions="last", batch_size=args.batch_size)[site]
        _, acc = probe_scores(c3[train], ytr, c3[test], yte)
        cost = lm_cost(handle, prose, res.interventions, base=base)
        summary["scrub"] = {"sites": list(res.erasers), "probe_site": site, "probe_accuracy": acc,
                            "last_site": last, "ce_base": cost.ce_base,
                            "ce_erased": cost.ce_edited, "ce_increase": cost.increase}  # fmt: skip
        print(f"  scrubbed {summary['scrub']['sites']}: probe at {site} {acc:.4f}; "
              f"CE +{cost.increase:.4f} nats/token", flush=True)  # fmt: skip
        lap("scrub")

    summary["timings_s"] = timings
    (out / f"summary{args.tag}.json").write_text(json.dumps(summary, indent=2))
    notes = f"{handle.model_id}, concept from {args.data}; best site {site}. Held-out probe " \
            f"accuracy before {acc0:.4f}, majority {maj:.4f}."  # fmt: skip
    if "accuracy_vs_rank" in summary:
        c = summary["accuracy_vs_rank"]["curves"]
        notes += (f" After LEACE {c['leace']['accuracy'][1]:.4f}, R-LACE rank 1 "
                  f"{c['rlace']['accuracy'][1]:.4f}; INLP reaches majority + {args.tolerance} "
                  f"at rank {summary['inlp_directions_needed']}.")  # fmt: skip
    write_html(figs, out / f"report{args.tag}.html", title="Concept erasure", notes=notes)
    lap("report")
    print(f"wrote {out / f'summary{args.tag}.json'} and {out / f'report{args.tag}.html'}")
    return summary


if __name__ == "__main__":
    main()
