"""PLS subspaces for numeric attributes, after El-Shangiti et al. (NAACL 2025), on one model.

    python probes/numeric_pls.py                       # embedded SmolLM2-135M, all stages
    python probes/numeric_pls.py --stages years        # only numbers in text

Stages (each writes into --out, default runs/numeric_pls/):

- ``years``: sentences mentioning a year (and a quantity) from data/numeric/numbers_in_text.jsonl;
  residuals at the number's last digit, every layer in one capture pass; a PLS probe per layer
  (components by 5-fold CV, 10% held out): held-out R² and MAE per layer.
- ``entities``: birth years, populations (log10), atomic numbers. The factual-recall check
  (greedy completion, cached in recall_<attribute>.json) filters the entities; the entity's last
  token in its comparison prompt ("Was X born before") is probed per layer, for all curated
  entities and for the recall-filtered ones.
- ``shifts``: the same direction (below) moves each recalled person in "X was born in the
  year" by α at the name's last token; the year the model then states moves the intended way
  (directed changes, Wilson 95% intervals) against random directions of the same norm.
- ``flips``: the first PLS direction of birth years (fitted on all curated people at the best
  layer of the first half of the network) moves X in "Was X born before Y? Answer:" (X, Y among the recalled people) by α, in
  units of the people's spread along it; answer flips (sign of logit " Yes" − logit " No")
  against random directions of the same norm, with Wilson 95% intervals; and SetCoords to the
  PLS coordinates of value(Y) ± 100 years.

- ``compare``: the comparison this model does, "Which year is later, X or Y?" with both years
  in the prompt (answer read at the later year's digit). A PLS probe of X's year at X's last
  digit, fitted on training prompts; on held-out prompts X is moved along its first PLS
  direction by α (flips against random directions of the same norm), and its PLS coordinates
  are set to those of value(Y) ± 100.
- ``compare_paper``: the same comparison with El-Shangiti et al.'s protocol: a PLS probe of Y's
  year at Y's last digit (the token before "?"), Y moved along ``w·σ`` (their direction; and
  along ``w/σ`` for comparison) by α × the mean ‖x‖ of Y's states, at every layer 0–15,
  against random directions of the same norm.

Results: results.json (every number printed) and report.html (figures).

The PLS settings are PLSConfig's (the library's defaults: components by 5-fold CV, 10% held
out, as in the paper) for every stage. The README's entity, shift/flip and comparison figures
held out 20% (``--test-fraction 0.2``); its years-in-text figures use the default.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from steerlab.config import check_nonnegative, check_positive, check_types, parse_configs, require
from steerlab.datasets.numeric import (
    ATTRIBUTES,
    comparison_prompts,
    load_entities,
    load_number_sentences,
    year_comparisons,
)
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.probes.numeric import (
    comparison_margins,
    recall_check,
    recall_records,
    score_completions,
)
from steerlab.probes.numeric_causal import (
    flip_experiment,
    set_value_experiment,
    value_shift_experiment,
)
from steerlab.probes.pls import PLSConfig, fit_pls
from steerlab.probes.sweep import capture_layers, format_table, pls_sweep
from steerlab.views import write_html
from steerlab.views.probes import flip_rates, layer_curves, pls_components

STAGES = ("years", "entities", "shifts", "flips", "compare", "compare_paper")


def _best(rows):
    return max(rows, key=lambda r: r["r2"])


def stage_years(model, args, cfg, results, figs):
    sents = load_number_sentences()
    for kind, n in (("year", args.n_years), ("quantity", args.n_quantities)):
        rows_in = [s for s in sents if s.kind == kind][:n]
        if not rows_in:
            continue
        t0 = time.time()
        cap = capture_layers(model, [s.text for s in rows_in], [s.span for s in rows_in],
                             batch_size=args.batch_size)  # fmt: skip
        y = torch.tensor([s.value for s in rows_in], dtype=torch.float64)
        rows = pls_sweep(cap.acts, y, cfg)
        best = _best(rows)
        print(f"\n[{kind}s in text] n={len(rows_in)}  ({time.time() - t0:.0f} s)")
        print(format_table(rows, ["layer", "r2", "mae", "cv_r2", "n_components"]))
        print(f"best layer {best['layer']}: held-out R² {best['r2']:.3f}, MAE {best['mae']:.1f}")
        results[f"{kind}s_in_text"] = {"n": len(rows_in), "rows": rows, "best": best}
        figs[f"{kind}s in text"] = rows


def stage_entities(model, args, cfg, results, figs, out):
    ents = {}
    for attr in args.attributes:
        e = load_entities(attr)
        cache = out / f"recall_{attr}.json"
        if cache.is_file() and not args.redo_recall:
            rec = json.loads(cache.read_text())["rows"]
            if [r["name"] for r in rec] != e.names:
                raise SystemExit(f"{cache} is stale (other entities); rerun with --redo-recall")
            # re-scored from the cached completions, so parser fixes need no new generation
            keep = score_completions(e, [r["completion"] for r in rec]).correct
        else:
            t0 = time.time()
            r = recall_check(model, e, batch_size=args.batch_size)
            cache.write_text(json.dumps({"attribute": attr, "model": model.model_id,
                                         "tolerance": e.attribute.tolerance,
                                         "rows": recall_records(e, r)}, indent=1))  # fmt: skip
            keep = r.correct
            print(f"recall check {attr}: {time.time() - t0:.0f} s")
        spec = e.attribute
        prefix = spec.compare[: spec.compare.index("{a}")]
        t0 = time.time()
        cap = capture_layers(model, [prefix + n for n in e.names], "last",
                             batch_size=args.batch_size)  # fmt: skip
        info = {"n_curated": len(e.names), "n_kept": int(keep.sum()),
                "tolerance": spec.tolerance, "target": "log10" if spec.log_target else "value"}  # fmt: skip
        for which, mask in (("all", torch.ones_like(keep)), ("kept", keep)):
            if int(mask.sum()) < 30:
                info[which] = None
                continue
            acts = {L: x[mask] for L, x in cap.acts.items()}
            rows = pls_sweep(acts, e.targets[mask], cfg)
            info[which] = {"rows": rows, "best": _best(rows)}
            figs[f"{attr} ({which})"] = rows
        print(f"\n[{attr}] curated {info['n_curated']}, kept by recall {info['n_kept']} "
              f"({time.time() - t0:.0f} s)")  # fmt: skip
        for which in ("all", "kept"):
            if info[which] is not None:
                b = info[which]["best"]
                print(
                    f"  {which:>4}: best layer {b['layer']}: held-out R² {b['r2']:.3f}, "
                    f"MAE {b['mae']:.3g} (n_test {b['n_test']}, {b['n_components']} comps)"
                )
        results.setdefault("entities", {})[attr] = info
        ents[attr] = (e, keep, cap)
    return ents


_DIRECTION: dict = {}  # the fitted birth-year direction, shared by the shifts and flips stages


def _year_direction(model, args, cfg, results, ents):
    """The first PLS direction of birth years at the flip layer, fitted on all curated people
    (more rows: a steadier direction); computed once for the later stages."""
    if "fit" in _DIRECTION:
        return _DIRECTION["fit"]
    e, keep, cap = ents["birth_year"]
    rows = results["entities"]["birth_year"]["all"]["rows"]
    # an edit of resid_post.L at X only reaches the answer through the blocks after L, and the
    # last block's output at X is read by nothing: search the first half of the network
    early = [r for r in rows if r["layer"] < model.n_layers // 2]
    layer = args.flip_layer if args.flip_layer is not None else _best(early)["layer"]
    x = cap.acts[layer].double()
    res = fit_pls(x, e.targets, cfg, meta={"site": f"resid_post.{layer}", "target": "birth_year"})
    probe = res.probe
    u, unit = probe.steering_direction(x)  # α > 0 raises the predicted birth year
    _DIRECTION["fit"] = (layer, x, res, probe, u, unit)
    return _DIRECTION["fit"]


def stage_shifts(model, args, cfg, results, ents, figures):
    """Causal test on a task the model does: move each recalled person along the PLS direction
    in "X was born in the year" and read the year it then states."""
    e, keep, _ = ents["birth_year"]
    layer, _, res, _, u, unit = _year_direction(model, args, cfg, results, ents)
    sub_e = e.subset(keep)
    t0 = time.time()
    out = value_shift_experiment(model, sub_e, u, layer, args.alphas, unit=unit,
                                 n_random=args.n_random,
                                 batch_size=args.batch_size)  # fmt: skip
    print(f"\n[value shifts] birth_year, {len(sub_e.names)} recalled people, resid_post.{layer}, "
          f"α unit = {unit:.3g}; edit at the name's last token of \"X was born in the year\" "
          f"({time.time() - t0:.0f} s)")  # fmt: skip
    print(format_table(out["rows"], ["direction", "alpha", "n", "directed", "changed",
                                     "directed_rate", "ci_low", "ci_high", "mean_shift",
                                     "median_shift"]))  # fmt: skip
    results["value_shifts"] = {"layer": layer, "n_entities": len(sub_e.names), "unit": unit,
                               "probe_test_r2": res.test.r2, **out}  # fmt: skip
    figures["α vs directed changes of the recalled birth year (PLS vs random)"] = flip_rates(
        out["rows"],
        rate="directed_rate",
        title=f"Recalled birth year moved in the intended direction, resid_post.{layer}",
    )


def stage_flips(model, args, cfg, results, ents, figures):
    e, keep, _ = ents["birth_year"]
    layer, x, res, probe, u, unit = _year_direction(model, args, cfg, results, ents)
    scores = probe.transform(x)
    if probe.n_components < 2:
        scores = torch.stack([scores[:, 0], torch.zeros(len(x), dtype=scores.dtype)], 1)
    figures["birth years in the top two PLS components"] = pls_components(
        scores[:, :2], e.values, e.names, value_name="birth year",
        title=f"People in the top two PLS components (resid_post.{layer}); "
              f"{int(keep.sum())} recalled of {len(e.names)}",
    )  # fmt: skip
    use = keep if int(keep.sum()) >= 20 else torch.ones_like(keep)
    which = "kept" if use is keep else "all"
    sub_e = e.subset(use)
    cmp = comparison_prompts(sub_e, per_entity=args.per_entity, min_gap=args.min_gap, seed=0)
    g = torch.Generator().manual_seed(0)
    cmp = [cmp[i] for i in torch.randperm(len(cmp), generator=g)[: args.n_prompts].tolist()]
    t0 = time.time()
    exp = flip_experiment(model, cmp, u, layer, args.alphas, unit=unit,
                          yes_if_less=True, n_random=args.n_random,
                          batch_size=args.batch_size)  # fmt: skip
    print(f"\n[flips] birth_year ({which}: {len(sub_e.names)} people), resid_post.{layer}, "
          f"{len(cmp)} prompts, unsteered accuracy {exp.accuracy:.3f}; α unit = {unit:.3g} "
          f"(spread of the PLS coordinate); PLS test R² {res.test.r2:.3f} "
          f"({time.time() - t0:.0f} s)")  # fmt: skip
    print(
        format_table(
            exp.rows,
            [
                "direction",
                "alpha",
                "flips",
                "n",
                "flip_rate",
                "ci_low",
                "ci_high",
                "directed",
                "directed_rate",
                "mean_shift",
            ],
        )
    )
    setc = set_value_experiment(model, cmp, probe, layer, sub_e, offset=args.set_offset,
                                batch_size=args.batch_size, baseline=exp.baseline)  # fmt: skip
    print(
        f"[set coords] k={setc['k']} to value(Y) ± {args.set_offset:g}: answers agreeing with "
        f"the set value {setc['agree_before']}/{setc['n']} before → {setc['agree_after']}/"
        f"{setc['n']} after (95% CI {setc['after_ci'][0]:.3f}–{setc['after_ci'][1]:.3f})"
    )
    results["flips"] = {"layer": layer, "entities": which, "n_entities": len(sub_e.names),
                        "n_prompts": len(cmp), "unit": unit, "accuracy": exp.accuracy,
                        "probe_test_r2": res.test.r2, "n_components": res.n_components,
                        "rows": exp.rows, "set_coords": setc}  # fmt: skip
    figures["α vs answer flips (PLS vs random)"] = flip_rates(
        exp.rows, title=f"Answer flips, birth-year comparisons, resid_post.{layer}"
    )


def stage_compare(model, args, cfg, results, figures):
    """The comparison the model does: "Which year is later, X or Y?" with both years in the
    prompt. A PLS probe of X's year at X's last digit (fitted on training prompts, one capture
    pass for all the layers), then, at each --compare-layers layer, X moved along its first PLS direction
    in held-out prompts, against random directions of the same norm; and X's PLS coordinates
    set to those of value(Y) ± --set-offset."""
    train_e, train = year_comparisons(model, args.n_compare_train, seed=1)
    years, test = year_comparisons(model, args.n_compare, seed=0)
    train_years = train_e.values[[c.a for c in train]]
    t0 = time.time()
    cap = capture_layers(model, [c.text for c in train], [c.span_a for c in train],
                         layers=sorted(set(args.compare_layers)), batch_size=args.batch_size)  # fmt: skip
    out = {"n_train": len(train), "n_test": len(test), "layers": {}}
    for layer in args.compare_layers:
        x = cap.acts[layer].double()
        res = fit_pls(x, train_years, cfg,
                      meta={"site": f"resid_post.{layer}", "target": "year_in_context"})  # fmt: skip
        probe = res.probe
        u, unit = probe.steering_direction(x)  # α > 0 raises X's year
        exp = flip_experiment(model, test, u, layer, args.alphas, unit=unit, yes_if_less=False,
                              n_random=args.n_random, batch_size=args.batch_size)  # fmt: skip
        print(f"\n[compare] \"Which year is later, X or Y?\" resid_post.{layer}: PLS of X's year "
              f"on {len(train)} training prompts, held-out R² {res.test.r2:.3f} "
              f"({res.n_components} comps); {len(test)} test prompts, unsteered accuracy "
              f"{exp.accuracy:.3f}; α unit = {unit:.3g} ({time.time() - t0:.0f} s)")  # fmt: skip
        print(format_table(exp.rows, ["direction", "alpha", "flips", "n", "flip_rate", "ci_low",
                                      "ci_high", "directed", "eligible", "mean_shift"]))  # fmt: skip
        setc = set_value_experiment(model, test, probe, layer, years, offset=args.set_offset,
                                    batch_size=args.batch_size, baseline=exp.baseline)  # fmt: skip
        print(f"[set coords] k={setc['k']}, X set to the coordinates of value(Y) ± "
              f"{args.set_offset:g}: answers agreeing with the set value {setc['agree_before']}/"
              f"{setc['n']} before → {setc['agree_after']}/{setc['n']} after (95% CI "
              f"{setc['after_ci'][0]:.3f}–{setc['after_ci'][1]:.3f})")  # fmt: skip
        out["layers"][str(layer)] = {"probe_test_r2": res.test.r2, "n_components": res.n_components,
                                     "unit": unit, "accuracy": exp.accuracy, "rows": exp.rows,
                                     "set_coords": setc}  # fmt: skip
        figures[f"α vs answer flips, years in context, resid_post.{layer}"] = flip_rates(
            exp.rows, title=f'Answer flips, "Which year is later, X or Y?", resid_post.{layer}'
        )
    results["compare"] = out


def stage_compare_paper(model, args, cfg, results, figures, out_dir):
    """El-Shangiti et al.'s protocol on "Which year is later, X or Y?": the PLS probe of Y's year
    at Y's last digit (the token before the question mark), at every layer of
    --paper-layers from one capture pass; Y moved along ``w₁·σ`` (the paper's direction,
    ``--paper-conventions covariance``) and along ``w₁/σ`` (the score's gradient,
    ``gradient``) by α × the mean norm of Y's states at that layer, against random directions
    of the same norm. Each (layer, direction) is cached in paper_flips.json."""
    train_e, train = year_comparisons(model, args.n_compare_train, seed=1)
    _, test = year_comparisons(model, args.n_compare, seed=0)
    train_years = train_e.values[[c.b for c in train]]
    cache_path = out_dir / "paper_flips.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    key0 = {"model": model.model_id, "pls": asdict(cfg), "n_train": len(train),
            "n_test": len(test), "alphas": list(args.paper_alphas), "n_random": args.n_random}  # fmt: skip
    t0 = time.time()
    cap = capture_layers(model, [c.text for c in train], [c.span_b for c in train],
                         layers=sorted(set(args.paper_layers)), batch_size=args.batch_size)  # fmt: skip
    print(f"\n[compare, paper protocol] PLS of Y's year at Y's last digit, {len(train)} training "
          f"prompts, layers {list(args.paper_layers)} ({time.time() - t0:.0f} s)")  # fmt: skip
    m0 = None
    out = {"n_train": len(train), "n_test": len(test), "alphas": list(args.paper_alphas),
           "unit": "mean norm of Y's state at the layer", "layers": {}}  # fmt: skip
    for layer in args.paper_layers:
        x = cap.acts[layer].double()
        res = fit_pls(x, train_years, cfg,
                      meta={"site": f"resid_post.{layer}", "target": "year_in_context_b"})  # fmt: skip
        probe = res.probe
        norm = float(x.norm(dim=1).mean())
        cos = float(probe.direction @ probe.covariance_direction)
        entry = {"probe_test_r2": res.test.r2, "n_components": res.n_components,
                 "mean_norm": norm, "cos_gradient_covariance": abs(cos), "rows": []}  # fmt: skip
        for i, conv in enumerate(args.paper_conventions):
            key = json.dumps({**key0, "layer": layer, "convention": conv,
                              "random": i == 0}, sort_keys=True)  # fmt: skip
            if key not in cache:
                if m0 is None:
                    m0 = comparison_margins(model, test, batch_size=args.batch_size)
                u, _ = probe.steering_direction(x, convention=conv)  # α > 0 raises Y's year
                t1 = time.time()
                # random directions once per layer (they do not depend on the PLS direction)
                exp = flip_experiment(model, test, u, layer, args.paper_alphas, unit=norm,
                                      yes_if_less=False, n_random=args.n_random if i == 0 else 0,
                                      entity="b", baseline=m0, batch_size=args.batch_size)  # fmt: skip
                rows = [{**r, "direction": conv if r["direction"] == "pls" else "random"}
                        for r in exp.rows]  # fmt: skip
                cache[key] = {"rows": rows, "accuracy": exp.accuracy,
                              "seconds": time.time() - t1}  # fmt: skip
                cache_path.write_text(json.dumps(cache, indent=1))
            entry["rows"] += cache[key]["rows"]
            entry["accuracy"] = cache[key]["accuracy"]
        print(f"layer {layer:2d}: R² {res.test.r2:.3f} ({res.n_components} comps), mean ‖x‖ "
              f"{norm:.1f}, |cos(w·σ, w/σ)| {abs(cos):.2f}; unsteered accuracy "
              f"{entry['accuracy']:.3f}")  # fmt: skip
        print(format_table(entry["rows"], ["direction", "alpha", "flips", "n", "flip_rate",
                                           "ci_low", "ci_high", "directed", "eligible",
                                           "mean_shift"]))  # fmt: skip
        out["layers"][str(layer)] = entry
    results["compare_paper"] = out
    series: dict = {}
    for layer, entry in out["layers"].items():
        for r in entry["rows"]:
            name = f"{r['direction']} α={r['alpha']:+g}"
            series.setdefault(name, []).append({"layer": int(layer), "flip_rate": r["flip_rate"]})
    figures["Answer flips by layer, paper protocol (Y moved, α × ‖x‖)"] = layer_curves(
        series, ["flip_rate"], title='"Which year is later, X or Y?": flips by layer, Y moved',
        y_title="flip rate",
    )  # fmt: skip


@dataclass
class Recipe:
    """The recipe's own settings; the PLS probes' come from PLSConfig."""

    model: str = DEFAULT_MODEL
    """Model: the embedded name, a local HF directory or a hub id."""
    out: str = "runs/numeric_pls"
    """Output folder."""
    stages: tuple[str, ...] = STAGES
    """Stages to run: years, entities, shifts, flips, compare."""
    n_years: int = 1000
    """Sentences with a year (years stage)."""
    n_quantities: int = 300
    """Sentences with a quantity (years stage)."""
    attributes: tuple[str, ...] = tuple(ATTRIBUTES)
    """Entity attributes (entities stage; shifts and flips add birth_year)."""
    batch_size: int = 32
    """Texts per forward pass."""
    redo_recall: bool = False
    """Redo the factual-recall check instead of reusing its cached completions."""
    tag: str = ""
    """Suffix of results<tag>.json and report<tag>.html."""
    flip_layer: int | None = None
    """Layer of the birth-year direction (default: the best R² layer in the first half of the
    network)."""
    alphas: tuple[float, ...] = (-8.0, -4.0, 4.0, 8.0)
    """Steering strengths, in units of the spread of the PLS coordinate."""
    n_prompts: int = 120
    """Comparison prompts (flips stage)."""
    n_random: int = 2
    """Random directions of the same norm per α (the control)."""
    per_entity: int = 4
    """Prompts per person as Y."""
    min_gap: float = 20.0
    """Years between X and Y."""
    set_offset: float = 100.0
    """SetCoords target: the coordinates of value(Y) ± this."""
    compare_layers: tuple[int, ...] = (5, 8)
    """Layers of the years-in-context flip test (compare stage)."""
    n_compare: int = 200
    """Test prompts (compare stage)."""
    n_compare_train: int = 400
    """Prompts the compare stages' PLS probes are fitted on."""
    threads: int | None = None
    """Torch threads (default: torch's choice; 1 leaves the other cores to other jobs)."""
    paper_layers: tuple[int, ...] = tuple(range(16))
    """Layers of the paper-protocol flip test (compare_paper stage)."""
    paper_alphas: tuple[float, ...] = (-1.0, -0.5, 0.5, 1.0)
    """Steering strengths of the compare_paper stage, as fractions of the mean norm of the
    edited (Y's) states at the layer."""
    paper_conventions: tuple[str, ...] = ("covariance", "gradient")
    """Directions of the compare_paper stage: ``covariance`` (w·σ, the paper's), ``gradient``
    (w/σ, the compare stage's)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "n_years", "n_quantities", "batch_size", "n_prompts", "n_random")
        check_positive(self, "per_entity", "n_compare", "n_compare_train", "threads")
        check_nonnegative(self, "flip_layer", "min_gap", "set_offset")
        require(self, "stages", set(self.stages) <= set(STAGES), f"stages among {STAGES}")
        require(self, "attributes", set(self.attributes) <= set(ATTRIBUTES),
                f"attributes among {tuple(ATTRIBUTES)}")  # fmt: skip
        require(self, "paper_conventions",
                len(self.paper_conventions) > 0
                and set(self.paper_conventions) <= {"covariance", "gradient"},
                "covariance and/or gradient")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, PLSConfig]:
    return parse_configs(Recipe, PLSConfig, argv=argv, description=__doc__)


def main(argv: list[str] | None = None) -> None:
    args, pls_cfg = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    results: dict = {"model": model.model_id, "args": asdict(args), "pls": asdict(pls_cfg)}
    curves: dict = {}
    figures: dict = {}
    if "years" in args.stages:
        stage_years(model, args, pls_cfg, results, curves)
    ents = {}
    if {"entities", "flips", "shifts"} & set(args.stages):
        if {"flips", "shifts"} & set(args.stages) and "birth_year" not in args.attributes:
            args = replace(args, attributes=(*args.attributes, "birth_year"))
        ents = stage_entities(model, args, pls_cfg, results, curves, out)
    if "shifts" in args.stages:
        stage_shifts(model, args, pls_cfg, results, ents, figures)
    if "flips" in args.stages:
        stage_flips(model, args, pls_cfg, results, ents, figures)
    if "compare" in args.stages:
        stage_compare(model, args, pls_cfg, results, figures)
    if "compare_paper" in args.stages:
        stage_compare_paper(model, args, pls_cfg, results, figures, out)
    figs = {}
    if curves:
        figs["Held-out R² of the PLS probe per layer"] = layer_curves(
            curves, ["r2"], title="PLS probe: held-out R² per layer", y_title="held-out R²"
        )
    figs.update(figures)
    (out / f"results{args.tag}.json").write_text(json.dumps(results, indent=1, default=float))
    if figs:
        write_html(
            figs,
            out / f"report{args.tag}.html",
            title="Numeric PLS probes",
            notes=f"Model {model.model_id}. Command: python {' '.join(sys.argv)}",
        )
    print(f"\nwrote {out}/results{args.tag}.json and report{args.tag}.html")


if __name__ == "__main__":
    main()
