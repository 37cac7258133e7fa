"""Recipe: the AST-Probe on a model: a layer sweep, a rank sweep and two baselines.

    python probes/ast_probe.py                     # embedded SmolLM2-135M, all snippets, all layers
    python probes/ast_probe.py --model minilm-l6 --random-layers all   # the bidirectional encoder
    python probes/ast_probe.py --n-train 300 --layers 0,10,20 --ranks 32,128 --out /tmp/ast

One capture pass per model pools leaf vectors (each leaf tokenised on its own with the
source's spacing, so no token belongs to two leaves; ``--tokenization text`` gives the old
whole-string pooling) at the embeddings (``resid_pre.0``, depth 0) and the outputs of the
requested blocks (``resid_post.L``, depth L+1), cached under OUT/features/. Then:

1. layer sweep: a rank-``--rank`` probe per depth, scored on dev and test;
2. baselines: depth 0 (token embeddings only) and the same architecture with random weights
   (``--random-layers``);
3. rank sweep at the best depth (chosen by dev F1, reported on test);
4. the best probe's syntactic subspace and its principal angles to the top principal
   directions of the same layer.

The probe trains with the paper's settings (AstProbeConfig: Adam 1e-3, batch 32, 20 epochs,
early-stopping patience 5, rank 128) on every training snippet unless ``--n-train`` says
otherwise. The features of all snippets take ``n_leaves × d_model`` float16 per depth in memory
(0.55 GB per depth for SmolLM2): ``--layers every2`` (16 depths, ~9 GB) is the sweep of
docs/results_probes.md (42 min of capture, then ~40 s per probe on 2 cores); on a smaller
machine sweep a subset (``--n-train 3000``) and rerun the best depths on all snippets
(``--layers 0,16 --ranks ...``).

Each probe's scores are appended to OUT/results.json as soon as it is trained; rerunning with
the same data and training settings skips them. Writes OUT/report.html, OUT/probe/ and
OUT/subspace/.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from steerlab.config import (
    ConfigOptions,
    check_nonnegative,
    check_positive,
    check_types,
    parse_configs,
    require,
)
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.probes.ast.data import load_ast_snippets
from steerlab.probes.ast.features import (
    Tokenization,
    cached_leaf_features,
    layer_sites,
    random_init_model,
    subsample_splits,
)
from steerlab.probes.ast.probe import (
    AstProbe,
    AstProbeConfig,
    evaluate_ast_probe,
    fit_ast_probe,
    predict_trees,
    split_data,
)
from steerlab.subspace import Subspace
from steerlab.views import write_html
from steerlab.views.ast import f1_by_layer, f1_by_rank, pick_example, tree_pair

PAPER = {"code models (best layer)": 0.7545, "embeddings / random baselines": 0.36}
"""AST-Probe Table 2, Python: GraphCodeBERT-L4 and the mean of CodeBERT-0 / CodeBERTrand."""


@dataclass
class Recipe:
    """The recipe's own settings; the probe's come from AstProbeConfig (the library's
    defaults), its ``rank`` being the rank of the layer sweep."""

    model: str = DEFAULT_MODEL
    """Model to probe: the embedded name, a local HF directory or a hub id."""
    n_train: int | None = None
    """Training snippets (a seeded random subset; None: all, as the paper trains)."""
    n_dev: int | None = None
    """Dev snippets (early stopping and the choice of the best depth; None: all)."""
    n_test: int | None = None
    """Test snippets (the reported F1; None: all)."""
    tokenization: Tokenization = "leaves"
    """How leaves get tokens: ``leaves`` (each leaf tokenised alone, with the whitespace
    before it: no token straddles two leaves, as in the reference) or ``text`` (the snippet as
    one string; a token spanning two leaves is pooled into both)."""
    max_leaves: int = 100
    """Drop functions with more leaves than this."""
    seed: int = 0
    """Seed of the data split, the subsample, the probes' initialisation and batch order, and
    the random-weights baseline."""
    ranks: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 576)
    """Ranks of the rank sweep at the best depth (ranks above d_model are left out)."""
    layers: str = "all"
    """Depths to probe: 'all', 'everyN' (every N-th and the last) or a list such as 0,10,20."""
    random_layers: str = "0,5,10,15,20"
    """Depths probed on the random model ('all', 'everyN', a list, or 'none' to skip the
    baseline); the best depth of the model is always added (its capture stops after the
    deepest one). The default's depths beyond a smaller model's are left out."""
    features_only: bool = False
    """Capture the leaf features, then stop."""
    threads: int | None = None
    """Torch threads (default: torch's choice)."""
    out: str = "runs/ast_probe"
    """Output folder: results.json, report.html, probe/, subspace/ and the feature cache."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "n_train", "n_dev", "n_test", "max_leaves", "threads")
        check_nonnegative(self, "seed")
        require(self, "ranks", len(self.ranks) > 0 and min(self.ranks) >= 1, "ranks >= 1")


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, AstProbeConfig]:
    return parse_configs(
        Recipe,
        ConfigOptions(AstProbeConfig, skip=("seed",), rename={"max_epochs": "epochs"}),
        argv=argv,
        description=__doc__,
    )


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _depths(spec: str | None, n: int) -> list[int]:
    if spec is None or spec == "all":
        return list(range(n))
    if spec.startswith("every"):
        step = int(spec[5:])
        return sorted(set(range(0, n, step)) | {n - 1})
    bad = [d for d in _ints(spec) if not 0 <= d < n]
    if bad:
        raise SystemExit(f"depths {bad} out of range 0..{n - 1}")
    return _ints(spec)


class Results:
    """OUT/results.json: settings plus one record per trained probe, saved after each."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        self.data = {"settings": settings, "runs": []}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("settings") == settings:
                self.data["runs"] = old.get("runs", [])
                print(f"resuming: {len(self.data['runs'])} probes already in {path}")
            else:
                print(f"{path} holds other settings; starting over")

    def get(self, model: str, site: str, rank: int) -> dict | None:
        for r in self.data["runs"]:
            if (r["model"], r["site"], r["rank"]) == (model, site, rank):
                return r
        return None

    def add(self, record: dict) -> None:
        self.data["runs"].append(record)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def main(argv: list[str] | None = None) -> None:
    args, probe_cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_start = time.perf_counter()

    handle = load_model(args.model, device="cpu")
    ds = load_ast_snippets(max_leaves=args.max_leaves, seed=args.seed, tokenizer=handle.tokenizer)
    splits = subsample_splits(ds, args.n_train, args.n_dev, args.n_test, seed=args.seed)
    snippets = splits["train"] + splits["dev"] + splits["test"]
    sites = layer_sites(handle.n_layers)
    n = len(sites)
    depths = sorted(set(_depths(args.layers, n)) | {0})  # depth 0: the embeddings baseline
    n_tokens = sum(len(x) for x in handle.tokenizer([s.code for s in snippets])["input_ids"])
    sizes = {k: len(v) for k, v in splits.items()}
    print(
        f"snippets {sizes} of {ds.counts['kept']} kept ({ds.counts}); "
        f"{sum(len(s.leaf_spans) for s in snippets)} leaves, {n_tokens} tokens"
    )

    def features(h, feature_sites: list[str]):
        t = time.perf_counter()
        f = cached_leaf_features(
            h, snippets, out / "features" / h.model_id, feature_sites, part_size=500,
            chunk_size=32, tokenization=args.tokenization,
        )  # fmt: skip
        print(
            f"{h.model_id} leaf features: {f} in {time.perf_counter() - t:.0f} s "
            f"(straddling tokens: {f.meta['straddling_tokens']})"
        )
        return f

    feats = {"model": features(handle, [sites[d] for d in depths])}
    if args.features_only:
        return

    # what a trained probe depends on: resuming keeps the runs only while these agree
    recipe = {
        k: v
        for k, v in asdict(args).items()
        if k not in ("layers", "random_layers", "ranks", "features_only", "threads", "out")
    }
    settings = {**recipe, **{k: v for k, v in asdict(probe_cfg).items() if k != "rank"}}
    results = Results(out / "results.json", settings)
    results.data["data"] = {
        "sizes": sizes,
        "counts": ds.counts,
        "tokens": n_tokens,
        "leaves": feats["model"].n_leaves,
        "straddling_tokens": feats["model"].meta["straddling_tokens"],
        "tokenization": args.tokenization,
    }

    def run(model: str, depth: int, rank: int) -> dict:
        site = sites[depth]
        done = results.get(model, site, rank)
        if done is not None:
            return done
        data = split_data(feats[model], site, splits)
        cfg = replace(probe_cfg, rank=rank, seed=args.seed)
        t = time.perf_counter()
        fit = fit_ast_probe(data["train"], data["dev"], cfg, meta={"site": site, "model": model})
        fit.probe.save(out / "probes" / f"{model}-{site}-rank{rank}")
        dev, test = (
            evaluate_ast_probe(fit.probe, data["dev"]),
            evaluate_ast_probe(fit.probe, data["test"]),
        )
        rec = {
            "model": model,
            "site": site,
            "depth": depth,
            "rank": rank,
            "dev_f1": dev.f1,
            "f1": test.f1,
            "precision": test.precision,
            "recall": test.recall,
            "c_accuracy": test.c_accuracy,
            "u_accuracy": test.u_accuracy,
            "best_epoch": fit.best_epoch,
            "epochs": len(fit.history),
            "orth": fit.history[fit.best_epoch - 1]["orth"],
            "seconds": time.perf_counter() - t,
        }
        print(
            f"{model:>6} depth {depth:2d} {site:>13} rank {rank:3d}: test F1 {test.f1:.3f} "
            f"(P {test.precision:.3f} R {test.recall:.3f}) dev F1 {dev.f1:.3f} "
            f"c {test.c_accuracy:.3f} u {test.u_accuracy:.3f} epochs {len(fit.history)} "
            f"{rec['seconds']:.0f} s",
            flush=True,
        )
        results.add(rec)
        return rec

    layer_runs = [run("model", d, probe_cfg.rank) for d in depths]
    best = max(layer_runs, key=lambda r: r["dev_f1"])
    emb = results.get("model", sites[0], probe_cfg.rank) or run("model", 0, probe_cfg.rank)
    rank_runs = [run("model", best["depth"], r) for r in args.ranks if r <= handle.d_model]
    peak = max(rank_runs, key=lambda r: r["dev_f1"])
    rand_runs, rand_best = [], None
    if args.random_layers not in ("", "none"):
        spec = args.random_layers
        if spec == Recipe.random_layers:  # the default suits 30 blocks; keep what a model has
            spec = ",".join(str(d) for d in _ints(spec) if d < n)
        rand_depths = sorted(set(_depths(spec, n)) | {best["depth"]})
        rand_handle = random_init_model(handle, seed=args.seed)
        feats["random"] = features(rand_handle, [sites[d] for d in rand_depths])
        rand_runs = [run("random", d, probe_cfg.rank) for d in rand_depths]
        rand_best = max(rand_runs, key=lambda r: r["dev_f1"])

    data = split_data(feats["model"], best["site"], splits)
    probe = AstProbe.load(out / "probes" / f"model-{best['site']}-rank{probe_cfg.rank}")
    probe.save(out / "probe")
    sub = probe.subspace()
    sub.save(out / "subspace")
    x_train = data["train"].x[data["train"].index[data["train"].index >= 0]].float()
    pca = Subspace.from_pca(x_train, k=probe.rank)
    gen = torch.Generator().manual_seed(args.seed)
    rnd = Subspace.from_vectors(
        torch.randn(probe.rank, handle.d_model, generator=gen, dtype=torch.float64)
    )
    ang_pca = torch.rad2deg(sub.principal_angles(pca))
    ang_rnd = torch.rad2deg(sub.principal_angles(rnd))
    angles = {"pca_top": pca.k, "to_pca_deg": ang_pca.tolist(), "to_random_deg": ang_rnd.tolist()}

    trees = predict_trees(probe, data["test"])
    test_eval = evaluate_ast_probe(probe, data["test"])
    summary = {
        "best": best,
        "embeddings": emb,
        "random_best": rand_best,
        "rank_peak": peak,
        "paper": PAPER,
        "angles": angles,
        "seconds": time.perf_counter() - t_start,
    }
    results.data["summary"] = summary
    results.save()

    k = pick_example(test_eval.per_snippet, [len(t.leaves) for t in data["test"].targets])
    leaves = splits["test"][k].leaves
    figs = {
        "F1 by layer": f1_by_layer(layer_runs, rand_runs, emb["f1"], reference=PAPER),
        "F1 by rank": f1_by_rank(rank_runs, d_model=handle.d_model),
        f"Test snippet {k}: predicted vs gold (F1 {test_eval.per_snippet[k].f1:.2f})": tree_pair(
            trees[k], data["test"].trees[k], leaves, code=splits["test"][k].code
        ),
    }
    rand_note = (
        "no random-weights baseline"
        if rand_best is None
        else f"random weights (best depth {rand_best['depth']}) {rand_best['f1']:.3f}"
    )
    notes = (
        f"{handle.model_id}; {sizes['train']:,} train / {sizes['dev']:,} dev / "
        f"{sizes['test']:,} test functions ({n_tokens:,} tokens), tokenization "
        f"{args.tokenization}, rank {probe_cfg.rank}, {probe_cfg.max_epochs} epochs max, lr "
        f"{probe_cfg.lr}. Best depth by dev F1: {best['depth']} ({best['site']}), test F1 "
        f"{best['f1']:.3f}; embeddings {emb['f1']:.3f}; {rand_note}; F1 peaks at rank "
        f"{peak['rank']} ({peak['f1']:.3f}). Paper (Python): about 0.75 vs about 0.36."
    )
    write_html(figs, out / "report.html", title="AST-Probe", notes=notes)

    print("\n depth  site            test F1   dev F1   P       R       c acc   u acc")
    for r in layer_runs:
        mark = "  <- best" if r is best else ""
        print(
            f" {r['depth']:5d}  {r['site']:<14} {r['f1']:.3f}     {r['dev_f1']:.3f}    "
            f"{r['precision']:.3f}   {r['recall']:.3f}   {r['c_accuracy']:.3f}   "
            f"{r['u_accuracy']:.3f}{mark}"
        )
    print("\n random-weights model:", ", ".join(f"d{r['depth']} {r['f1']:.3f}" for r in rand_runs))
    print(
        " rank sweep at depth",
        best["depth"],
        ":",
        ", ".join(f"{r['rank']}: {r['f1']:.3f}" for r in rank_runs),
    )
    print(
        f"\nbest depth {best['depth']} ({best['site']}): test F1 {best['f1']:.3f}; "
        f"embeddings (depth 0) {emb['f1']:.3f}; {rand_note}; rank peak {peak['rank']} "
        f"(F1 {peak['f1']:.3f})"
    )
    print(
        f"syntactic subspace (rank {sub.k}) vs top-{pca.k} PCA: median principal angle "
        f"{ang_pca.median():.1f} deg (random subspace: {ang_rnd.median():.1f} deg)"
    )
    print(f"total {summary['seconds'] / 60:.1f} min; wrote {out}/results.json, report.html")
    if math.isnan(best["f1"]):
        raise SystemExit("F1 is NaN")


if __name__ == "__main__":
    main()
