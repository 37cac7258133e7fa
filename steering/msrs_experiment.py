# ruff: noqa: T201
"""Multi-attribute steering on the embedded model: MSRS vs summed CAA vectors, one LoReFT per
attribute, and prompting; each attribute alone and all together, with interference.

    python steering/msrs_experiment.py --attributes sentiment,formality --layer 9 --seeds 0

Training data: (prompt, target side) of each attribute's contrast pairs in ``data/steering``
(first ``--n-train`` pairs; targets cut to ``--max-target-tokens``). Evaluation: the first
``--n-prompts`` neutral prompts (never seen in training), greedy, ``--max-new-tokens`` tokens.
Scores (as in :mod:`steerlab.steering.evals`): each attribute's concept score normalised
towards its target pole (0–1), fluency and relevance against the unsteered continuations, and
per attribute the harmonic mean H(concept, fluency, relevance); "joint" = H over every
attribute's concept, fluency and relevance. Interference Δ[i][j] = c_j(steer i) − c_j(unsteered).

Writes ``<out>/results.json``, ``<out>/figures.html`` and logs to ``<out>/log.txt``. Training
settings are the library's TrainConfig (``steerlab.steering.train``; each seed of ``--seeds``
sets its ``seed``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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
from steerlab.datasets.pairs import load_pairs, load_prompts
from steerlab.interventions import AddVector, Compose, LoReFT, scored
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.positions import as_positions
from steerlab.steering.evals import KeywordConcept, ProjectionConcept, Sentiment
from steerlab.steering.generate import generate
from steerlab.steering.msrs import MSRS, GateTrace, MSRSLoss, init_bases, read_differences
from steerlab.steering.scores import (
    continuation_scores,
    cosine,
    embed,
    harmonic_mean,
    repetition_rate,
)
from steerlab.steering.train import TrainConfig, TrainExample, evaluate_loss, train_intervention
from steerlab.steering.vectors import fit_vector
from steerlab.subspace import Subspace
from steerlab.views import write_html
from steerlab.views.msrs import attribute_scores_figure, gate_figure, interference_figure

DATA = Path("data/steering")
# attribute -> pair file, side steered towards, its pole, the prompting baseline's message
ATTRS = {
    "sentiment": ("sentiment.jsonl", "negative", -1,
                  "Always answer in a very negative, sad and gloomy tone."),
    "formality": ("formality.jsonl", "negative", -1,
                  "Always answer very casually, in informal slang, like texting a friend."),
    "topic_ocean": ("topic_ocean.jsonl", "positive", 1, "Always talk about the ocean and the sea."),
}  # fmt: skip
PROBE_LAYER = 20  # formality is scored by projection at a later layer than the steering site

log = logging.getLogger("msrs")


def _setup_log(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for h in (logging.FileHandler(out / "log.txt", mode="a"), logging.StreamHandler()):
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)


def _concepts(handle, attrs: list[str]) -> dict:
    out = {}
    for a in attrs:
        if a == "sentiment":
            out[a] = Sentiment()
        elif a == "topic_ocean":
            kw = json.loads((DATA / "topic_ocean_keywords.json").read_text())["keywords"]
            out[a] = KeywordConcept("topic_ocean", tuple(kw))
        else:  # formality: projection on the formal − casual mean difference at PROBE_LAYER
            sv = fit_vector(handle, DATA / ATTRS[a][0], f"resid_post.{PROBE_LAYER}", chat=True)
            out[a] = ProjectionConcept(a, f"resid_post.{PROBE_LAYER}", sv.directions[0])
    return out


def _score(handle, encoder, prompt_ids, gen, concepts, attrs) -> dict:
    """Per-prompt raw concept scores, fluency parts and embeddings of one condition."""
    probes = {a: c.probe for a, c in concepts.items() if c.probe is not None}
    s = continuation_scores(handle, prompt_ids, gen.token_ids, batch_size=16)
    raw = {}
    for a in attrs:
        proj = None
        if a in probes:
            proj = continuation_scores(handle, prompt_ids, gen.token_ids, site=probes[a][0],
                                       direction=probes[a][1], batch_size=16).projections  # fmt: skip
        raw[a] = concepts[a].score(gen.texts, proj)
    n_tok = torch.tensor([len(x) for x in s.nll], dtype=torch.float64)
    rep = torch.tensor([repetition_rate(t, 4) for t in gen.texts], dtype=torch.float64)
    return {"raw": raw, "ppl": s.perplexity(), "n_tok": n_tok, "rep": rep,
            "nll_sum": torch.stack([x.sum() for x in s.nll]).double(),
            "emb": embed(encoder, gen.texts, batch_size=16), "texts": gen.texts}  # fmt: skip


def _summarise(sc: dict, ref: dict, concepts: dict, attrs: list[str], ppl0: float) -> dict:
    flu = torch.where(sc["n_tok"] > 0, (ppl0 / sc["ppl"]).clamp(max=1) * (1 - sc["rep"]),
                      torch.zeros_like(sc["rep"]))  # fmt: skip
    flu = torch.nan_to_num(flu, nan=0.0)
    rel = cosine(sc["emb"], ref["emb"]).clamp(0, 1)
    out = {"fluency": float(flu.mean()), "relevance": float(rel.mean())}
    cs = []
    for a in attrs:
        pole = ATTRS[a][2]
        c = concepts[a].normalise(sc["raw"][a], pole, ref["raw"][a])
        cs.append(c)
        r = sc["raw"][a]
        out[f"raw:{a}"] = float(r[~r.isnan()].mean()) if (~r.isnan()).any() else float("nan")
        out[f"concept:{a}"] = float(c.mean())
        out[f"combined:{a}"] = float(harmonic_mean(torch.stack([c, flu, rel], -1)).mean())
    out["combined:joint"] = float(harmonic_mean(torch.stack([*cs, flu, rel], -1)).mean())
    n = sc["n_tok"].sum()
    out["perplexity"] = math.exp(float(sc["nll_sum"].sum() / n)) if n > 0 else float("nan")
    return out


@dataclass
class Recipe:
    """The recipe's own settings; the training's come from TrainConfig."""

    model: str = DEFAULT_MODEL
    """Model: the embedded name, a local HF directory or a hub id."""
    attributes: str = "sentiment,formality"
    """Comma-separated attributes to steer (sentiment, formality, topic_ocean)."""
    layer: int = 9
    """Layer of resid_post where every method steers."""
    n_train: int = 96
    """Training pairs per attribute (the first n)."""
    shared_rank: int = 2
    """Rows of MSRS's shared block (LoReFT's rank is shared + attribute rank)."""
    attr_rank: int = 2
    """Rows of each attribute's MSRS block."""
    gate_weight: float = 0.5
    """λ of MSRS's gate prior term (the paper: 0.5)."""
    align_weight: float = 0.8
    """λ of MSRS's alignment term (the paper: 0.8)."""
    caa_alphas: tuple[float, ...] = (0.1, 0.2)
    """Strengths of the summed CAA vectors, as fractions of the mean activation norm."""
    n_prompts: int = 16
    """Neutral evaluation prompts (the first n, never seen in training)."""
    max_new_tokens: int = 24
    """Greedy tokens generated per prompt."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds (MSRS and LoReFT are averaged over them)."""
    skip_loreft: bool = False
    """Leave out the LoReFT baseline."""
    threads: int = 1
    """Torch threads."""
    out: str = "runs/msrs"
    """Output folder: results.json, figures.html, log.txt and the trained modules."""

    def __post_init__(self) -> None:
        check_types(self)
        check_nonnegative(self, "layer", "gate_weight", "align_weight")
        check_positive(self, "n_train", "shared_rank", "attr_rank", "n_prompts")
        check_positive(self, "max_new_tokens", "threads")
        require(self, "seeds", len(self.seeds) > 0 and min(self.seeds) >= 0, "seeds >= 0")
        unknown = [a for a in self.attributes.split(",") if a.strip() and a.strip() not in ATTRS]
        require(self, "attributes", not unknown, f"attributes among {sorted(ATTRS)}")


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, TrainConfig]:
    return parse_configs(
        Recipe, ConfigOptions(TrainConfig, skip=("seed",)), argv=argv, description=__doc__
    )


def main(argv: list[str] | None = None) -> None:
    args, tcfg_base = parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    _setup_log(out)
    t0 = time.perf_counter()
    attrs = [a.strip() for a in args.attributes.split(",") if a.strip()]
    site = f"resid_post.{args.layer}"
    handle = load_model(args.model, device="cpu")
    encoder = load_model("minilm-l6", device="cpu")
    log.info("config %s %s", asdict(args), asdict(tcfg_base))

    pairs = {a: load_pairs(DATA / ATTRS[a][0]) for a in attrs}
    train_pairs = {a: list(pairs[a])[: args.n_train] for a in attrs}
    examples = [TrainExample(p.prompt, getattr(p, ATTRS[a][1]), a)
                for a in attrs for p in train_pairs[a]]  # fmt: skip
    prompts = load_prompts(DATA / "neutral_prompts.jsonl")[: args.n_prompts]
    concepts = _concepts(handle, attrs)
    log.info(
        "data: %s training pairs, %d eval prompts (%.0f s)",
        {a: len(v) for a, v in train_pairs.items()},
        len(prompts),
        time.perf_counter() - t0,
    )

    # --- CAA vectors (fit once: deterministic) ---
    svs = {a: fit_vector(handle, train_pairs[a], site, chat=True) for a in attrs}
    caa_dir = {a: ATTRS[a][2] * svs[a].directions[0] for a in attrs}  # towards the target pole

    def caa(active: list[str], alpha: float):
        return [AddVector(caa_dir[a], alpha, site, "all", relative_to=float(svs[a].norms[0]))
                for a in active]  # fmt: skip

    # --- unsteered reference and prompting ---
    gkw = {"max_new_tokens": args.max_new_tokens, "batch_size": 16}
    plain = generate(handle, prompts, None, **gkw)
    ref = _score(handle, encoder, plain.prompt_ids, plain, concepts, attrs)
    tot = float(ref["nll_sum"].sum())
    ppl0 = math.exp(tot / float(ref["n_tok"].sum()))
    conditions = {a: [a] for a in attrs} | ({"joint": attrs} if len(attrs) > 1 else {})

    def run(label: str, ivs, system: str | None = None) -> dict:
        t = time.perf_counter()
        g = generate(handle, prompts, ivs, system=system, **gkw)
        sc = _score(handle, encoder, plain.prompt_ids, g, concepts, attrs)
        summ = _summarise(sc, ref, concepts, attrs, ppl0)
        summ["examples"] = g.texts[:3]
        log.info("%-28s %s (%.0f s)", label, " ".join(
            f"{k}={v:.3f}" for k, v in summ.items() if isinstance(v, float)),
            time.perf_counter() - t)  # fmt: skip
        return summ

    results: dict = {"config": asdict(args), "train": asdict(tcfg_base), "site": site, "ppl_reference": ppl0,
                     "unsteered": _summarise(ref, ref, concepts, attrs, ppl0), "seeds": {}}  # fmt: skip
    results["unsteered"]["examples"] = plain.texts[:3]
    fixed: dict = {}
    for cond, act in conditions.items():
        fixed.setdefault("prompt", {})[cond] = run(
            f"prompt/{cond}", None, " ".join(ATTRS[a][3] for a in act)
        )
        for alpha in args.caa_alphas:
            fixed.setdefault(f"caa@{alpha:g}", {})[cond] = run(f"caa@{alpha:g}/{cond}",
                                                              caa(act, alpha))  # fmt: skip
    results["fixed"] = fixed

    diffs = read_differences(handle, train_pairs, site, chat=True,
                             target={a: ATTRS[a][1] for a in attrs})  # fmt: skip
    init = init_bases(diffs, args.shared_rank, args.attr_rank)
    results["init_energy"] = init.energy
    log.info("init energy %s", json.dumps(init.energy))

    for seed in args.seeds:
        torch.manual_seed(seed)
        res: dict = {}
        tcfg = replace(tcfg_base, seed=seed)
        m = MSRS.from_init(init, site, hidden=64)
        base_loss = evaluate_loss(handle, None, examples, tcfg)
        t = time.perf_counter()
        tr = train_intervention(handle, m, examples, tcfg,
                                extra_loss=MSRSLoss(args.gate_weight, args.align_weight),
                                progress=lambda _: None)  # fmt: skip
        log.info("seed %d MSRS trained in %.0f s: CE per epoch %s (unsteered %.3f)", seed,
                 time.perf_counter() - t, [round(x, 3) for x in tr.epoch_ce], base_loss)  # fmt: skip
        m.save(out / f"seed{seed}" / "msrs")
        res["train"] = {"msrs_epoch_ce": tr.epoch_ce, "unsteered_ce": base_loss,
                        "msrs_last": tr.history[-1]}  # fmt: skip
        lorefts = {}
        if not args.skip_loreft:
            for a in attrs:
                torch.manual_seed(seed)
                lf = LoReFT(handle.d_model, args.shared_rank + args.attr_rank, site, "last")
                t = time.perf_counter()
                tl = train_intervention(handle, lf, [e for e in examples if e.group == a], tcfg)
                log.info("seed %d LoReFT[%s] trained in %.0f s: CE %s", seed, a,
                         time.perf_counter() - t, [round(x, 3) for x in tl.epoch_ce])  # fmt: skip
                res["train"][f"loreft_{a}_epoch_ce"] = tl.epoch_ce
                lorefts[a] = lf
        for cond, act in conditions.items():
            for mode, rule in (("last", "last"), ("argmax", scored())):
                m.positions = as_positions(rule)
                m.set_active(act)
                res.setdefault(f"msrs-{mode}", {})[cond] = run(f"s{seed} msrs-{mode}/{cond}", m)
            if lorefts:
                ivs = lorefts[act[0]] if len(act) == 1 else Compose([lorefts[a] for a in act])
                res.setdefault("loreft", {})[cond] = run(f"s{seed} loreft/{cond}", ivs)
        m.set_active(attrs)
        m.positions = scored()
        # subspace geometry
        geo = {}
        for a in attrs:
            sub = m.subspace(a)
            geo[f"msrs_{a}_vs_init_deg"] = torch.rad2deg(
                sub.principal_angles(_rows_sub(init.R[_block(init, a)]))
            ).tolist()
            span = _rows_sub(torch.cat([m.block("shared").detach(), m.block(a).detach()]))
            geo[f"caa_{a}_to_msrs_shared+{a}_deg"] = float(
                torch.rad2deg(span.principal_angles(_rows_sub(caa_dir[a][None]))[0])
            )
            for b in attrs:
                if b != a:
                    geo[f"caa_{a}_to_msrs_{b}_deg"] = float(
                        torch.rad2deg(
                            m.subspace(b).principal_angles(_rows_sub(caa_dir[a][None]))[0]
                        )
                    )
        if lorefts and len(attrs) > 1:
            a, b = attrs[:2]
            geo[f"loreft_{a}_vs_{b}_deg"] = torch.rad2deg(
                _rows_sub(lorefts[a].R.weight.detach()).principal_angles(
                    _rows_sub(lorefts[b].R.weight.detach())
                )
            ).tolist()
        geo[f"caa_{attrs[0]}_vs_caa_{attrs[-1]}_deg"] = float(
            torch.rad2deg(
                _rows_sub(caa_dir[attrs[0]][None]).principal_angles(
                    _rows_sub(caa_dir[attrs[-1]][None])
                )[0]
            )
        )
        res["angles"] = geo
        log.info("angles %s", json.dumps(geo))
        # gates over one steered text (token-level mode)
        res["gate_trace"] = _gate_trace(handle, m, prompts[0], gkw)
        results["seeds"][str(seed)] = res
        (out / "results.json").write_text(json.dumps(results, indent=1, default=float))

    results["interference"] = _interference(results, attrs)
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    _figures(results, attrs, out)
    print(_table(results, attrs))
    log.info("done in %.0f s", results["seconds"])


def _block(init, name: str) -> slice:
    start = sum(init.sizes[: init.names.index(name)])
    return slice(start, start + init.sizes[init.names.index(name)])


def _rows_sub(rows: torch.Tensor):
    return Subspace.from_vectors(rows.double())


def _gate_trace(handle, m: MSRS, prompt: str, gkw: dict) -> dict:
    g = generate(handle, [prompt], m, **gkw)
    ids = torch.cat([g.prompt_ids[0], g.token_ids[0]])
    every = torch.ones(1, len(ids), dtype=torch.bool)
    h = capture(handle, ids[None], m.site, positions=every)[m.site]  # unsteered activations
    tr = m.trace(h)
    plen = len(g.prompt_ids[0])
    chosen = {n: int(tr.scores[:plen, i].argmax()) for i, n in enumerate(tr.names) if i > 0}
    return {"tokens": handle.tokenizer.convert_ids_to_tokens(ids.tolist()), "prompt_len": plen,
            "gates": tr.gates.tolist(), "scores": tr.scores.tolist(), "names": tr.names,
            "chosen": chosen, "text": g.texts[0]}  # fmt: skip


def _methods(results: dict) -> dict:
    """method -> condition -> summary (seeds averaged)."""
    out = dict(results["fixed"])
    seeds = list(results["seeds"].values())
    for name in ("msrs-last", "msrs-argmax", "loreft"):
        if name not in seeds[0]:
            continue
        out[name] = {}
        for cond in seeds[0][name]:
            keys = [k for k, v in seeds[0][name][cond].items() if isinstance(v, float)]
            out[name][cond] = {k: sum(s[name][cond][k] for s in seeds) / len(seeds) for k in keys}
            if len(seeds) > 1:
                for k in keys:
                    vals = [s[name][cond][k] for s in seeds]
                    mu = out[name][cond][k]
                    out[name][cond][f"sd:{k}"] = (sum((v - mu) ** 2 for v in vals)
                                                  / (len(vals) - 1)) ** 0.5  # fmt: skip
    return out


def _interference(results: dict, attrs: list[str]) -> dict:
    base = results["unsteered"]
    out = {}
    for method, conds in _methods(results).items():
        out[method] = {i: {j: conds[i][f"concept:{j}"] - base[f"concept:{j}"] for j in attrs}
                       for i in attrs if i in conds}  # fmt: skip
    return out


def _table(results: dict, attrs: list[str]) -> str:
    cols = (
        [f"concept:{a}" for a in attrs]
        + ["fluency", "relevance"]
        + [f"combined:{a}" for a in attrs]
        + (["combined:joint"] if len(attrs) > 1 else [])
    )
    head = f"{'method/condition':<26}" + "".join(f"{c.split(':')[-1][:9]:>10}" for c in cols)
    sub = f"{'':<26}" + "".join(f"{c.split(':')[0][:9]:>10}" for c in cols)
    lines = [head, sub, "-" * len(head)]
    u = results["unsteered"]
    lines.append(f"{'unsteered':<26}" + "".join(f"{u[c]:10.3f}" for c in cols))
    for method, conds in _methods(results).items():
        for cond, s in conds.items():
            lines.append(f"{method + '/' + cond:<26}" + "".join(f"{s[c]:10.3f}" for c in cols))
    lines += ["", "interference Δ concept (row: steered attribute, column: scored attribute)"]
    for method, mat in results["interference"].items():
        for i, row in mat.items():
            lines.append(
                f"{method + ' steer ' + i:<34}" + "".join(f"{j}:{v:+.3f}  " for j, v in row.items())
            )
    return "\n".join(lines)


def _figures(results: dict, attrs: list[str], out: Path) -> None:
    methods = _methods(results)
    metrics = [f"concept:{a}" for a in attrs] + ["fluency", "relevance"]
    conds = list(next(iter(methods.values())))
    scores = {c: {m: methods[m][c] for m in methods if c in methods[m]} for c in conds}
    figs = [
        attribute_scores_figure(scores, metrics=metrics),
        interference_figure(results["interference"]),
    ]
    gt = next(iter(results["seeds"].values()))["gate_trace"]
    tr = GateTrace(torch.tensor(gt["gates"]), torch.tensor(gt["scores"]), gt["names"])
    figs.append(gate_figure(tr, gt["tokens"], chosen=gt["chosen"],
                            start=max(0, gt["prompt_len"] - 12)))  # fmt: skip
    write_html(figs, out / "figures.html", title="MSRS experiment")


if __name__ == "__main__":
    main()
