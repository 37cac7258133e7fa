# ruff: noqa: T201
"""Multi-attribute steering on the embedded model, the way the MSRS paper ran it: MSRS vs summed
CAA vectors, one LoReFT per attribute, and prompting; each attribute alone and all together;
gates off at inference (the reference code) and gates on with task-conditioned inputs.

    python steering/msrs_experiment.py --threads 1 --out runs/msrs      # resumable

**Training data** (every method): each attribute's contrast pairs in ``data/steering`` (all of
them by default), as (frame(prompt), target side): the prompt wrapped in that attribute's task
frame (``data/steering/task_frames.json``), so each attribute has its own kind of input, as the
paper's attribute datasets do. TrainConfig's defaults are the reference's ``train.py``: full
targets (up to 64 tokens), 4 epochs at batch 2, lr 5e-3; MSRS adds the gate prior (λ 0.5) and
alignment (λ 0.8) terms.

**Evaluation.** (a) The 40 neutral prompts, each attribute chosen by ``set_active``: MSRS with
the ungated edit (the reference's inference) at the last prompt token (as trained), at each
block's user-message token (centred score, :mod:`steerlab.steering.user_tokens`) and at the
paper's literal argmax token; MSRS gated (the old setting); CAA; LoReFT; prompting. (b) The
same 40 prompts in each attribute's frame, every attribute active, gates on: does the input
route the edit? Gate values at the edited tokens are reported per kind.

**Scores** (:mod:`steerlab.steering.evals`): concept towards each attribute's target pole
(sentiment: VADER; formality: projection on a layer-20 formal − casual direction fitted on
``formality_heldout.jsonl``, pairs no method trains on, with the word-list ``F_lex`` as an
independent check; topic: ocean keywords); fluency after a generic prefix; relevance to the
prompt relative to the unsteered response. Interference Δ[i][j] = c_j(steer i) − c_j(unsteered),
per prompt (seeds averaged), with a 95% bootstrap interval over prompts.

Writes ``<out>/results.json``, ``<out>/table.md``, ``<out>/figures.html``, ``<out>/log.txt``;
every generated condition is cached in ``<out>/cond/`` and every trained module in
``<out>/seed<k>/``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
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
from steerlab.datasets.pairs import ContrastPair, load_pairs, load_prompts
from steerlab.interventions import AddVector, Compose, LoReFT, load_intervention, scored
from steerlab.models import DEFAULT_MODEL, load_model
from steerlab.positions import TokenView, as_positions
from steerlab.steering.evals import (
    KeywordConcept,
    LexicalFormality,
    ProjectionConcept,
    Sentiment,
    prefix_ids,
    score_responses,
)
from steerlab.steering.generate import generate
from steerlab.steering.msrs import MSRS, GateTrace, MSRSLoss, init_bases, read_differences
from steerlab.steering.scores import (
    bootstrap_ci,
    embed,
    fluency_score,
    harmonic_mean,
    relevance_ratio,
)
from steerlab.steering.train import TrainConfig, TrainExample, evaluate_loss, train_intervention
from steerlab.steering.user_tokens import chat_markers, user_token_mean
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
RELEVANCE_FLOOR = 0.1
REPETITION_N = 4

log = logging.getLogger("msrs")


@dataclass
class Recipe:
    """The recipe's own settings; the training's come from TrainConfig."""

    model: str = DEFAULT_MODEL
    """Model: the embedded name, a local HF directory or a hub id."""
    attributes: str = "sentiment,formality,topic_ocean"
    """Comma-separated attributes to steer (sentiment, formality, topic_ocean)."""
    layer: int = 9
    """Layer of resid_post where every method steers."""
    n_train: int | None = None
    """Training pairs per attribute (the first n; None: all)."""
    shared_rank: int = 2
    """Rows of MSRS's shared block (LoReFT's rank is shared + attribute rank)."""
    attr_rank: int = 2
    """Rows of each attribute's MSRS block."""
    gate_weight: float = 0.5
    """λ of MSRS's gate prior term (the paper: 0.5)."""
    align_weight: float = 0.8
    """λ of MSRS's alignment term (the paper: 0.8)."""
    caa_alpha: float = 0.1
    """Strength of each CAA vector, as a fraction of its layer's mean activation norm."""
    n_prompts: int = 40
    """Neutral evaluation prompts (the first n, never seen in training), also framed per kind."""
    max_new_tokens: int = 24
    """Greedy tokens generated per prompt."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (MSRS and LoReFT are averaged over them)."""
    skip_loreft: bool = False
    """Leave out the LoReFT baseline."""
    frames: str = "data/steering/task_frames.json"
    """Task frame per attribute (its kind of input)."""
    formality_pairs: str = "data/steering/formality_heldout.jsonl"
    """Pairs the formality scorer is fitted on (none of them is trained on)."""
    threads: int = 1
    """Torch threads."""
    out: str = "runs/msrs"
    """Output folder (resumable)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_nonnegative(self, "layer", "gate_weight", "align_weight")
        check_positive(self, "n_train", "shared_rank", "attr_rank", "n_prompts", "caa_alpha")
        check_positive(self, "max_new_tokens", "threads")
        require(self, "seeds", len(self.seeds) > 0 and min(self.seeds) >= 0, "seeds >= 0")
        unknown = [a for a in self.attributes.split(",") if a.strip() and a.strip() not in ATTRS]
        require(self, "attributes", not unknown, f"attributes among {sorted(ATTRS)}")


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, TrainConfig]:
    return parse_configs(
        Recipe, ConfigOptions(TrainConfig, skip=("seed",)), argv=argv, description=__doc__,
    )  # fmt: skip


# --- the run ---------------------------------------------------------------------------------


class Run:
    """Shared state: model, scorers, prompt sets and the condition cache."""

    def __init__(self, args: Recipe, out: Path) -> None:
        self.args, self.out = args, out
        self.attrs = [a.strip() for a in args.attributes.split(",") if a.strip()]
        self.site = f"resid_post.{args.layer}"
        self.handle = load_model(args.model, device="cpu")
        self.encoder = load_model("minilm-l6", device="cpu")
        self.frames = json.loads(Path(args.frames).read_text())["frames"]
        neutral = load_prompts(DATA / "neutral_prompts.jsonl")[: args.n_prompts]
        self.sets = {"neutral": neutral} | {
            f"kind:{a}": [self.frames[a].format(prompt=p) for p in neutral] for a in self.attrs
        }
        self.emb = {k: embed(self.encoder, v, batch_size=16) for k, v in self.sets.items()}
        self.prefix = prefix_ids(self.handle, "Say something.")
        fp = load_pairs(args.formality_pairs)
        sv = fit_vector(self.handle, fp, f"resid_post.{PROBE_LAYER}", chat=True)
        self.concepts = {
            "sentiment": Sentiment(),
            "formality": ProjectionConcept("formality", f"resid_post.{PROBE_LAYER}",
                                           sv.directions[0]),
            "topic_ocean": KeywordConcept("topic_ocean", tuple(
                json.loads((DATA / "topic_ocean_keywords.json").read_text())["keywords"])),
        }  # fmt: skip
        self.lexical = LexicalFormality()
        (out / "cond").mkdir(parents=True, exist_ok=True)

    def condition(self, key: str, prompt_set: str, ivs, system: str | None = None) -> dict:
        """Generate and score one condition (cached on disk by ``key``)."""
        path = self.out / "cond" / f"{key.replace('/', '_')}.json"
        if path.exists():
            return json.loads(path.read_text())
        t = time.perf_counter()
        prompts = self.sets[prompt_set]
        g = generate(self.handle, prompts, ivs, system=system,
                     max_new_tokens=self.args.max_new_tokens, batch_size=16)  # fmt: skip
        rec: dict = {"key": key, "set": prompt_set, "texts": g.texts, "raw": {}}
        probe = self.concepts["formality"].probe
        r = score_responses(self.handle, self.encoder, self.emb[prompt_set], g.token_ids,
                            g.texts, self.prefix, probe=probe, repetition_n=REPETITION_N)  # fmt: skip
        for a in self.attrs:
            rec["raw"][a] = self.concepts[a].score(g.texts, r.projections).tolist()
        rec["raw"]["F_lex"] = self.lexical.score(g.texts).tolist()
        rec |= {"nll_sum": r.nll_sum.tolist(), "n_tokens": r.n_tokens.tolist(),
                "repetition": r.repetition.tolist(), "similarity": r.similarity.tolist()}  # fmt: skip
        path.write_text(json.dumps(rec))
        log.info("%-44s %.0f s  e.g. %r", key, time.perf_counter() - t, g.texts[0][:70])
        return rec


def per_prompt(rec: dict, ref: dict, concepts: dict, attrs: list[str], ppl0: float) -> dict:
    """Normalised per-prompt scores of a condition against its unsteered reference."""
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in rec.items()
         if k in ("nll_sum", "n_tokens", "repetition", "similarity")}  # fmt: skip
    s0 = torch.tensor(ref["similarity"], dtype=torch.float64)
    flu = fluency_score(t["nll_sum"], t["n_tokens"], t["repetition"], ppl0)
    rel = relevance_ratio(t["similarity"], s0, RELEVANCE_FLOOR)
    out = {"fluency": flu, "relevance": rel,
           "F_lex": torch.tensor(rec["raw"]["F_lex"], dtype=torch.float64)}  # fmt: skip
    cs = []
    for a in attrs:
        raw = torch.tensor(rec["raw"][a], dtype=torch.float64)
        c = concepts[a].normalise(
            raw, ATTRS[a][2], torch.tensor(ref["raw"][a], dtype=torch.float64)
        )
        out[f"concept:{a}"] = c
        out[f"combined:{a}"] = harmonic_mean(torch.stack([c, flu, rel], -1))
        cs.append(c)
    out["combined:joint"] = harmonic_mean(torch.stack([*cs, flu, rel], -1))
    return out


def ppl_of(rec: dict) -> float:
    n = sum(rec["n_tokens"])
    return float(torch.tensor(sum(rec["nll_sum"]) / n).exp()) if n else float("nan")


# --- training --------------------------------------------------------------------------------


def train_or_load(handle, path: Path, build, examples, tcfg: TrainConfig, extra=None) -> tuple:
    """Train a module (or load it from ``path``); returns (module, epoch CE or None)."""
    if (path / "cfg.json").exists():
        return load_intervention(path), None
    iv = build()
    t = time.perf_counter()
    res = train_intervention(handle, iv, examples, tcfg, extra_loss=extra)
    iv.save(path)
    (path / "train.json").write_text(json.dumps({"epoch_ce": res.epoch_ce,
                                                 "seconds": time.perf_counter() - t}))  # fmt: skip
    log.info("trained %s in %.0f s: CE per epoch %s", path.name, time.perf_counter() - t,
             [round(x, 3) for x in res.epoch_ce])  # fmt: skip
    return iv, res.epoch_ce


# --- gates and chosen tokens ---------------------------------------------------------------------


def gates_and_tokens(R: Run, m: MSRS, prompt_set: str) -> dict:
    """Per block: mean gate at its edited token(s) over the prompts, and the tokens chosen."""
    gates, chosen = [], {n: Counter() for n in m.names[1:]}
    tok = R.handle.tokenizer
    for p in R.sets[prompt_set]:
        ids = torch.tensor(tok(R.handle.chat(p), add_special_tokens=False)["input_ids"])
        h = capture(R.handle, ids[None], m.site,
                    positions=torch.ones(1, len(ids), dtype=torch.bool))[m.site][None]  # fmt: skip
        view = TokenView.from_mask(torch.ones(1, len(ids), dtype=torch.long), len(ids),
                                   input_ids=ids[None])  # fmt: skip
        gates.append(m.selected_gates(view, h)[0])
        masks = m.block_masks(view, h)[0]
        for name, sl in zip(m.names[1:], m.blocks()[1:]):
            for pos in masks[:, sl.start].nonzero().flatten().tolist():
                chosen[name][tok.convert_ids_to_tokens(int(ids[pos]))] += 1
    g = torch.stack(gates)
    return {"names": m.names, "mean": g.nanmean(0).tolist(),
            "sd": [float(g[:, i][~g[:, i].isnan()].std()) for i in range(g.shape[1])],
            "chosen": {n: c.most_common(5) for n, c in chosen.items()}}  # fmt: skip


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args, tcfg_base = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for h in (logging.FileHandler(out / "log.txt", mode="a"), logging.StreamHandler()):
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    t0 = time.perf_counter()
    R = Run(args, out)
    attrs, site = R.attrs, R.site
    log.info("config %s %s", asdict(args), asdict(tcfg_base))

    pairs = {}
    for a in attrs:
        ps = list(load_pairs(DATA / ATTRS[a][0]))[: args.n_train]
        pairs[a] = [ContrastPair(p.positive, p.negative, R.frames[a].format(prompt=p.prompt))
                    for p in ps]  # fmt: skip
    examples = [TrainExample(p.prompt, getattr(p, ATTRS[a][1]), a)  # type: ignore[arg-type]
                for a in attrs for p in pairs[a]]  # fmt: skip
    steps = tcfg_base.epochs * -(-len(examples) // tcfg_base.batch_size)
    log.info("data: %s training pairs (%d optimiser steps per MSRS run), %d prompts per set",
             {a: len(v) for a, v in pairs.items()}, steps, args.n_prompts)  # fmt: skip

    # --- fixed conditions: unsteered, prompting, CAA ---
    svs = {a: fit_vector(R.handle, pairs[a], site, chat=True) for a in attrs}
    caa_dir = {a: ATTRS[a][2] * svs[a].directions[0] for a in attrs}  # towards the target pole

    def caa(active: list[str]):
        return [AddVector(caa_dir[a], args.caa_alpha, site, "all",
                          relative_to=float(svs[a].norms[0])) for a in active]  # fmt: skip

    conditions = {a: [a] for a in attrs} | {"joint": attrs}
    for s in R.sets:
        R.condition(f"unsteered/{s}", s, None)
    for cond, act in conditions.items():
        R.condition(f"prompt/{cond}", "neutral", None, " ".join(ATTRS[a][3] for a in act))
        R.condition(f"caa/{cond}", "neutral", caa(act))
    log.info("fixed conditions done (%.0f s)", time.perf_counter() - t0)

    diffs = read_differences(R.handle, pairs, site, chat=True,
                             target={a: ATTRS[a][1] for a in attrs})  # fmt: skip
    init = init_bases(diffs, args.shared_rank, args.attr_rank)
    markers = chat_markers(R.handle)
    mu = user_token_mean(R.handle, [e.prompt for e in examples], site, markers)
    results: dict = {"config": asdict(args), "train": asdict(tcfg_base), "site": site,
                     "init_energy": init.energy, "optimiser_steps": steps, "seeds": {}}  # fmt: skip

    for seed in args.seeds:
        tcfg = replace(tcfg_base, seed=seed)
        sd = out / f"seed{seed}"
        torch.manual_seed(seed)
        m, ce = train_or_load(R.handle, sd / "msrs", lambda: MSRS.from_init(
            init, site, hidden=64, markers=markers, center=mu), examples, tcfg,
            MSRSLoss(args.gate_weight, args.align_weight))  # fmt: skip
        res: dict = {"msrs_epoch_ce": ce}
        if ce is not None:
            res["unsteered_ce"] = evaluate_loss(R.handle, None, examples, tcfg)
        lorefts = {}
        if not args.skip_loreft:
            for a in attrs:
                torch.manual_seed(seed)
                lorefts[a], _ = train_or_load(
                    R.handle, sd / f"loreft_{a}",
                    lambda: LoReFT(R.handle.d_model, args.shared_rank + args.attr_rank, site,
                                   "last"),
                    [e for e in examples if e.group == a], tcfg)  # fmt: skip
        assert isinstance(m, MSRS)
        # (a) neutral prompts, attribute chosen by set_active
        for cond, act in conditions.items():
            m.set_active(act)
            m.gates_at_inference = False
            for rule, pos, tr in (("last", "last", "user"), ("user", scored(), "user"),
                                  ("paper", scored(), "paper")):  # fmt: skip
                m.positions, m.token_rule = as_positions(pos), tr
                R.condition(f"s{seed}/msrs-ungated-{rule}/{cond}", "neutral", m)
            m.gates_at_inference, m.positions = True, as_positions("last")
            R.condition(f"s{seed}/msrs-gated-last/{cond}", "neutral", m)
            if lorefts:
                ivs = lorefts[act[0]] if len(act) == 1 else Compose([lorefts[a] for a in act])
                R.condition(f"s{seed}/loreft/{cond}", "neutral", ivs)
        # (b) framed prompts of each kind, every attribute active: routing by the input
        m.set_active(attrs)
        gates = {}
        for a in attrs:
            for rule, pos in (("last", "last"), ("user", scored())):
                m.positions, m.token_rule, m.gates_at_inference = as_positions(pos), "user", True
                R.condition(f"s{seed}/msrs-gated-{rule}/kind:{a}", f"kind:{a}", m)
                gates[f"{rule}/kind:{a}"] = gates_and_tokens(R, m, f"kind:{a}")
            m.positions, m.gates_at_inference = as_positions("last"), False
            R.condition(f"s{seed}/msrs-ungated-last/kind:{a}", f"kind:{a}", m)
        m.positions, m.gates_at_inference = scored(), True
        for tr in ("user", "paper"):
            m.token_rule = tr
            gates[f"{tr}/neutral"] = gates_and_tokens(R, m, "neutral")
        res["gates"] = gates
        res["angles"] = _angles(m, init, caa_dir, lorefts, attrs)
        tr0 = _gate_trace(R, m, R.sets[f"kind:{attrs[0]}"][0])
        res["gate_trace"] = tr0
        results["seeds"][str(seed)] = res
        log.info("seed %d done (%.0f s)", seed, time.perf_counter() - t0)

    summary = summarise(R, results)
    results |= summary
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    table = markdown(results, attrs)
    (out / "table.md").write_text(table)
    _figures(results, attrs, out)
    print(table)
    log.info("done in %.0f s", results["seconds"])


# --- summaries -------------------------------------------------------------------------------


def _load(R: Run, key: str) -> dict:
    return json.loads((R.out / "cond" / f"{key.replace('/', '_')}.json").read_text())


def summarise(R: Run, results: dict) -> dict:
    """Method × condition summaries (seeds averaged per prompt) and interference with CIs."""
    attrs, seeds = R.attrs, [f"s{s}" for s in R.args.seeds]
    refs = {s: _load(R, f"unsteered/{s}") for s in R.sets}
    ppl0 = ppl_of(refs["neutral"])  # one PPL₀: the prefix is the same for every prompt set

    def scores(keys: list[str], ref: dict) -> dict:
        per = [per_prompt(_load(R, k), ref, R.concepts, attrs, ppl0) for k in keys]
        avg = {m: torch.stack([p[m] for p in per]).mean(0) for m in per[0]}
        summ = {m: float(v.mean()) for m, v in avg.items()}
        if len(per) > 1:  # spread of the mean over seeds
            for m in per[0]:
                summ[f"sd:{m}"] = float(torch.stack([p[m].mean() for p in per]).std())
        summ["perplexity"] = sum(ppl_of(_load(R, k)) for k in keys) / len(keys)
        return {"summary": summ, "per_prompt": avg}

    conds = list(attrs) + ["joint"]
    methods = {"unsteered": {c: ["unsteered/neutral"] for c in conds},
               "prompt": {c: [f"prompt/{c}"] for c in conds},
               f"caa@{R.args.caa_alpha:g}": {c: [f"caa/{c}"] for c in conds}}  # fmt: skip
    for name in ("msrs-ungated-last", "msrs-ungated-user", "msrs-ungated-paper",
                 "msrs-gated-last", "loreft"):  # fmt: skip
        if (R.out / "cond" / f"{seeds[0]}_{name}_{conds[0]}.json").exists():
            methods[name] = {c: [f"{s}/{name}/{c}" for s in seeds] for c in conds}
    table, interference = {}, {}
    base = scores(["unsteered/neutral"], refs["neutral"])["per_prompt"]
    for meth, by_cond in methods.items():
        table[meth] = {}
        for c, keys in by_cond.items():
            sc = scores(keys, refs["neutral"])
            table[meth][c] = sc["summary"]
            if c in attrs and meth != "unsteered":
                interference.setdefault(meth, {})[c] = {
                    j: bootstrap_ci(sc["per_prompt"][f"concept:{j}"] - base[f"concept:{j}"])._asdict()
                    for j in attrs
                }  # fmt: skip
    routing = {}
    for name in ("msrs-gated-last", "msrs-gated-user", "msrs-ungated-last"):
        routing[name] = {}
        for a in attrs:
            kind = f"kind:{a}"
            sc = scores([f"{s}/{name}/{kind}" for s in seeds], refs[kind])
            b0 = scores([f"unsteered/{kind}"], refs[kind])["per_prompt"]
            routing[name][kind] = {
                "summary": sc["summary"],
                "delta": {j: bootstrap_ci(sc["per_prompt"][f"concept:{j}"]
                                          - b0[f"concept:{j}"])._asdict() for j in attrs},
            }  # fmt: skip
    gates: dict = {}
    for key in results["seeds"][next(iter(results["seeds"]))]["gates"]:
        per = [results["seeds"][s]["gates"][key]["mean"] for s in results["seeds"]]
        gates[key] = {"names": results["seeds"][next(iter(results["seeds"]))]["gates"][key]["names"],
                      "mean": torch.tensor(per).mean(0).tolist(),
                      "sd_over_seeds": torch.tensor(per).std(0).tolist() if len(per) > 1 else None}  # fmt: skip
    return {"table": table, "interference": interference, "routing": routing, "gates": gates,
            "ppl_reference": ppl0}  # fmt: skip


def markdown(results: dict, attrs: list[str]) -> str:
    short = {"sentiment": "sent", "formality": "form", "topic_ocean": "ocean"}
    cols = [f"concept:{a}" for a in attrs] + ["F_lex", "fluency", "relevance"]
    head = ("| method / steered | " + " | ".join(short.get(c.split(':')[-1], c) for c in cols)
            + " | combined (own) | combined (joint) |")  # fmt: skip
    lines = [head, "|---|" + "---:|" * (len(cols) + 2)]
    for meth, by_cond in results["table"].items():
        for c, s in by_cond.items():
            if meth == "unsteered" and c != "joint":
                continue
            own = f"{s[f'combined:{c}']:.3f}" if c in attrs else "—"
            label = "unsteered" if meth == "unsteered" else f"{meth} / {c}"
            lines.append(f"| {label} | " + " | ".join(f"{s[k]:.3f}" for k in cols)
                         + f" | {own} | {s['combined:joint']:.3f} |")  # fmt: skip
    lines += ["", "Interference Δ concept (row: steered attribute; column: scored), mean [95% CI]:",
              "", "| method / steered | " + " | ".join(attrs) + " |",
              "|---|" + "---:|" * len(attrs)]  # fmt: skip
    for meth, rows in results["interference"].items():
        for i, row in rows.items():
            lines.append(f"| {meth} / {i} | " + " | ".join(
                f"{row[j]['mean']:+.3f} [{row[j]['lo']:+.3f}, {row[j]['hi']:+.3f}]"
                for j in attrs) + " |")  # fmt: skip
    lines += ["", "Routing on framed prompts (every attribute active), Δ concept vs unsteered:",
              "", "| method / prompt kind | " + " | ".join(attrs) + " | fluency | relevance |",
              "|---|" + "---:|" * (len(attrs) + 2)]  # fmt: skip
    for meth, kinds in results["routing"].items():
        for kind, r in kinds.items():
            lines.append(f"| {meth} / {kind} | " + " | ".join(
                f"{r['delta'][j]['mean']:+.3f} [{r['delta'][j]['lo']:+.3f}, "
                f"{r['delta'][j]['hi']:+.3f}]" for j in attrs)
                + f" | {r['summary']['fluency']:.3f} | {r['summary']['relevance']:.3f} |")  # fmt: skip
    lines += ["", "Mean gate at the edited token(s) (seeds averaged):", "",
              "| rule / prompts | " + " | ".join(next(iter(results["gates"].values()))["names"])
              + " |", "|---|" + "---:|" * (len(attrs) + 1)]  # fmt: skip
    for key, g in results["gates"].items():
        lines.append(f"| {key} | " + " | ".join(f"{v:.3f}" for v in g["mean"]) + " |")
    return "\n".join(lines) + "\n"


def _angles(m: MSRS, init, caa_dir: dict, lorefts: dict, attrs: list[str]) -> dict:
    """Principal angles (degrees) between learned subspaces, their initial spans and CAA."""

    def sub(rows: torch.Tensor) -> Subspace:
        return Subspace.from_vectors(rows.detach().double())

    start, geo = 0, {}
    for name, size in zip(init.names, init.sizes):
        geo[f"msrs_{name}_vs_init"] = torch.rad2deg(
            m.subspace(name).principal_angles(sub(init.R[start : start + size]))
        ).tolist()
        start += size
    for a in attrs:
        span = sub(torch.cat([m.block("shared"), m.block(a)]))
        geo[f"caa_{a}_to_msrs_shared+{a}"] = float(
            torch.rad2deg(span.principal_angles(sub(caa_dir[a][None]))[0])
        )
    for i, a in enumerate(attrs):
        for b in attrs[i + 1 :]:
            if lorefts:
                geo[f"loreft_{a}_vs_{b}"] = float(
                    torch.rad2deg(
                        sub(lorefts[a].R.weight).principal_angles(sub(lorefts[b].R.weight))[0]
                    )
                )
            geo[f"caa_{a}_vs_{b}"] = float(
                torch.rad2deg(sub(caa_dir[a][None]).principal_angles(sub(caa_dir[b][None]))[0])
            )
    return geo


def _gate_trace(R: Run, m: MSRS, prompt: str) -> dict:
    g = generate(R.handle, [prompt], m, max_new_tokens=R.args.max_new_tokens)
    ids = torch.cat([g.prompt_ids[0], g.token_ids[0]])
    every = torch.ones(1, len(ids), dtype=torch.bool)
    h = capture(R.handle, ids[None], m.site, positions=every)[m.site]  # unsteered activations
    tr = m.trace(h)
    plen = len(g.prompt_ids[0])
    view = TokenView.from_mask(torch.ones(1, len(ids), dtype=torch.long), len(ids),
                               torch.tensor([plen]), ids[None])  # fmt: skip
    masks = m.block_masks(view, h[None])[0]
    chosen = {n: int(masks[:, sl.start].float().argmax()) for n, sl
              in zip(m.names[1:], m.blocks()[1:])}  # fmt: skip
    return {"tokens": R.handle.tokenizer.convert_ids_to_tokens(ids.tolist()), "prompt_len": plen,
            "gates": tr.gates.tolist(), "scores": tr.scores.tolist(), "names": tr.names,
            "chosen": chosen, "text": g.texts[0]}  # fmt: skip


def _figures(results: dict, attrs: list[str], out: Path) -> None:
    metrics = [f"concept:{a}" for a in attrs] + ["fluency", "relevance"]
    conds = [*attrs, "joint"]
    scores = {c: {m: results["table"][m][c] for m in results["table"] if m != "unsteered"}
              for c in conds}  # fmt: skip
    deltas = {m: {i: {j: v["mean"] for j, v in row.items()} for i, row in rows.items()}
              for m, rows in results["interference"].items()}  # fmt: skip
    gt = next(iter(results["seeds"].values()))["gate_trace"]
    tr = GateTrace(torch.tensor(gt["gates"]), torch.tensor(gt["scores"]), gt["names"])
    figs = [attribute_scores_figure(scores, metrics=metrics), interference_figure(deltas),
            gate_figure(tr, gt["tokens"], chosen=gt["chosen"],
                        start=max(0, min(gt["chosen"].values()) - 6))]  # fmt: skip
    write_html(figs, out / "figures.html", title="MSRS experiment")


if __name__ == "__main__":
    main()
