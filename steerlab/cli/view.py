"""``steerlab view ...``: interactive HTML figures from saved stores, artifacts and results.

Each subcommand loads what was saved, calls a builder of :mod:`steerlab.views` and writes one
offline HTML page. None of them loads model weights except ``view vector --text`` (which has
to run the model on the text); the rest need at most the tokenizer.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from safetensors import SafetensorError

from steerlab.artifacts import load as load_artifact
from steerlab.artifacts import read_cfg
from steerlab.capture.store import ActivationStore
from steerlab.cli.common import (
    CliError,
    HelpFormatter,
    check_writable,
    open_model,
    open_tokenizer,
    read_json,
    say,
    subcommand,
)
from steerlab.cli.sae import load_any_sae
from steerlab.config import add_config, check_nonnegative, check_positive, check_types
from steerlab.datasets.corpora import token_contexts
from steerlab.erasure.leace import AffineEraser
from steerlab.erasure.scrub import EraserEdit
from steerlab.probes.linear import LinearProbe
from steerlab.probes.pls import PLSProbe
from steerlab.report.capture import SINK_NORM_RATIO, sink_mask
from steerlab.saes import evaluate
from steerlab.saes.formats import load_saelens_sparsity
from steerlab.steering.scores import token_projections
from steerlab.steering.vectors import SteeringVector
from steerlab.views import principal_directions, write_html
from steerlab.views.ast import f1_by_layer, f1_by_rank
from steerlab.views.common import pretty_label
from steerlab.views.erasure import accuracy_vs_rank_figure, erasure_pca_figure, probe_by_site_figure
from steerlab.views.probes import flip_rates, layer_curves
from steerlab.views.saes import density_figure, read_train_log, training_curves
from steerlab.views.steering import sweep_figure, token_projection_figure

EXAMPLES = """examples:
  steerlab view pca runs/prose-l6 --out runs/prose-l6.html
  steerlab view probe runs/numeric_pls/results.json --out probes.html
  steerlab view eraser runs/erasure/summary.json --out erasure.html
  steerlab view sae runs/sae_resid6 --out sae.html
  steerlab view vector runs/vec-sentiment --store runs/prose-l12 --out vector.html
  steerlab view sweep runs/steering/sentiment/sweep.json --out sweep.html"""


@dataclass
class ViewOptions:
    """Options every view shares."""

    out: str
    """The HTML file to write (its folder is created)."""
    max_points: int = 5000
    """Points drawn in scatter plots (a seeded subsample; PCA itself uses every row)."""
    seed: int = 0
    """Seed of the subsample."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "max_points")
        check_nonnegative(self, "seed")


def register(sub: Any) -> None:
    v = sub.add_parser("view", help="write interactive HTML figures from saved results",
                       description="Write an interactive HTML page (works offline) from a "
                       "store, a saved artifact or a recipe's results.", epilog=EXAMPLES,
                       formatter_class=HelpFormatter)  # fmt: skip
    vsub = v.add_subparsers(dest="view_command", required=True, metavar="FIGURE")

    def view(name: str, help: str, fn: Any, what: str) -> argparse.ArgumentParser:
        p = subcommand(vsub, name, help)
        p.add_argument("path", help=what)
        p.set_defaults(fn=fn, options=add_config(p, ViewOptions))
        return p

    p = view("pca", "principal directions of a store site (hover: each token in context)",
             view_pca, "store directory (from steerlab capture)")  # fmt: skip
    p.add_argument("--site", help="store site (default: the store's first site)")
    p = view("probe", "per-layer probe scores from a recipe's results, or a probe's predictions "
             "over a store", view_probe, "a probe recipe's results JSON (probes/*.py), or a "
             "saved linear or PLS probe directory (then give --store)")  # fmt: skip
    p.add_argument(
        "--store",
        help="the store whose activations the probe reads (needed with a probe directory; default: none)",
    )
    p.add_argument("--site", help="store site (default: the probe's site, else the store's first)")
    p = view("eraser", "concept erasure: probe accuracy by layer and vs rank, or PCA before and "
             "after an eraser", view_eraser, "summary.json of probes/erase_concept.py, or a "
             "saved eraser directory (then give --store)")  # fmt: skip
    p.add_argument(
        "--store",
        help="the store whose activations to erase (needed with an eraser directory; default: none)",
    )
    p.add_argument("--site", help="store site (default: the eraser's site, else the store's first)")
    p = view("sae", "SAE training curves and latent density", view_sae,
             "a steerlab sae train output directory (or a SAELens directory)")  # fmt: skip
    p.add_argument("--store", help="measure latent density on this store (default: the saved "
                   "SAELens sparsity, if any)")  # fmt: skip
    p = view("vector", "the tokens of a text coloured by their projection on a steering vector",
             view_vector, "a steering vector directory (from steerlab vector fit)")  # fmt: skip
    p.add_argument(
        "--store",
        help="project a window of this store, which must hold the vector's site (default: none)",
    )
    p.add_argument("--window", type=_nonnegative_int, default=0, help="store window to show")
    p.add_argument(
        "--text",
        help="project this text instead of a stored window; loads the model (default: none)",
    )
    p.add_argument("--layer", help="layer of a multi-layer vector (default: its first)")
    p = view("sweep", "a steering strength sweep: every score against alpha", view_sweep,
             "sweep.json of steering/sentiment_sweep.py")  # fmt: skip


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _options(args: argparse.Namespace) -> ViewOptions:
    """The shared options, checked (and --out found writable) before anything is read."""
    o: ViewOptions = args.options.build(args, parser=args.parser)
    check_writable(o.out)
    return o


def _write(args: argparse.Namespace, o: ViewOptions, figs: Any, title: str) -> int:
    path = write_html(figs, o.out, title=title, notes=f"From {args.path}.")
    say(f"wrote {path}")
    return 0


def _load(path: str) -> Any:
    """A saved artifact, with one-line errors for a missing or damaged one."""
    try:
        return load_artifact(path)
    except SafetensorError as e:
        raise CliError(f"{path}: cannot read its tensors ({e}); the file is truncated or "
                       "damaged") from None  # fmt: skip


def _store_site(store: ActivationStore, site: str | None, artifact_site: str | None = None) -> str:
    site = site or (artifact_site if artifact_site in store.sites else None)
    site = site or next(iter(store.sites))
    if site not in store.sites:
        raise CliError(f"store {store.path} has no site {site!r}; it holds {sorted(store.sites)}")
    return site


def _sample(store: ActivationStore, o: ViewOptions) -> torch.Tensor:
    """Sorted rows of a seeded subsample of at most ``max_points`` rows."""
    g = torch.Generator().manual_seed(o.seed)
    n = len(store)
    return torch.randperm(n, generator=g)[: min(n, o.max_points)].sort().values


def store_pca_figure(store: ActivationStore, site: str, o: ViewOptions) -> go.Figure:
    """Principal directions of a store site; hover shows each token in its context."""
    rows = _sample(store, o)
    acts = store.site(site)[rows]
    doc = store.site("doc_ids").to_tensor().long()
    pos = store.site("positions").to_tensor().long()
    tok = store.site("token_ids").to_tensor().long()
    # rebuild the token windows from the stored ids so hovers can show context
    ids = torch.zeros(int(doc.max()) + 1, int(pos.max()) + 1, dtype=torch.long)
    ids[doc, pos] = tok
    ctx = token_contexts(open_tokenizer(store.model_id), ids,
                         torch.stack([doc[rows], pos[rows]], 1), window=10)  # fmt: skip
    # Attention sinks (the first token of each window, and a few later tokens with massive
    # norms) would take PC1 for themselves: they are left out of the fit and drawn apart.
    sink = sink_mask(acts.float().norm(dim=1)[:, None], pos[rows], SINK_NORM_RATIO)
    n_sink = int(sink.sum())
    sample = f"a {len(rows):,}-row sample" if len(rows) < len(store) else "all rows"
    title = (f"{store.model_id} · {site} · PCA of {len(rows) - n_sink:,} rows: {sample} of the "
             f"store's {len(store):,} tokens, {n_sink:,} attention sinks left out")  # fmt: skip
    return principal_directions(acts, tokens=ctx.tokens, contexts=ctx.contexts, exclude=sink,
                                max_points=o.max_points, seed=o.seed, title=title)  # fmt: skip


def view_pca(args: argparse.Namespace) -> int:
    o = _options(args)
    store = ActivationStore(args.path)
    site = _store_site(store, args.site)
    return _write(args, o, store_pca_figure(store, site, o), "Principal directions")


# --------------------------------------------------------------------------- probes


def _row_lists(data: Any, path: str = "") -> Iterator[tuple[str, list[dict]]]:
    """Every list of result rows (dicts) inside a JSON document, with its path."""
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        yield path, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _row_lists(v, f"{path} / {k}" if path else str(k))


_LAYER_METRICS = (
    (("task_acc", "control_acc", "selectivity", "majority"), "held-out accuracy / selectivity"),
    (("r2",), "held-out R²"),
    (("score",), "held-out score"),
)


def probe_result_figures(data: dict) -> dict[str, go.Figure]:
    """The figures of a probe recipe's results: AST-probe sweeps, per-layer curves, flips."""
    figs: dict[str, go.Figure] = {}
    runs, summary = data.get("runs"), data.get("summary") or {}
    if runs and all("depth" in r and "f1" in r for r in runs) and "best" in summary:
        best = summary["best"]
        rank = best["rank"]
        model = [r for r in runs if r["model"] == "model" and r["rank"] == rank]
        rand = [r for r in runs if r["model"] == "random" and r["rank"] == rank]
        by_rank = [r for r in runs if r["model"] == "model" and r["depth"] == best["depth"]]
        emb = (summary.get("embeddings") or {}).get("f1")
        figs["F1 by layer"] = f1_by_layer(model, rand, emb, reference=summary.get("paper"))
        if len(by_rank) > 1:
            figs["F1 by rank"] = f1_by_rank(sorted(by_rank, key=lambda r: r["rank"]))
        return figs
    for metrics, y_title in _LAYER_METRICS:
        curves = {p: rows for p, rows in _row_lists(data)
                  if "layer" in rows[0] and all(m in rows[0] for m in metrics)}  # fmt: skip
        if curves:
            figs[f"{y_title} per layer"] = layer_curves(
                curves if len(curves) > 1 else next(iter(curves.values())), list(metrics),
                title=f"{y_title} per layer", y_title=y_title,
            )  # fmt: skip
            break
    for p, rows in _row_lists(data):
        if "alpha" in rows[0] and "direction" in rows[0]:
            rate = "flip_rate" if "flip_rate" in rows[0] else "directed_rate"
            if rate in rows[0]:
                figs[f"{p}: {pretty_label(rate)} against α"] = flip_rates(rows, rate=rate, title=p)
    return figs


def view_probe(args: argparse.Namespace) -> int:
    o = _options(args)
    path = Path(args.path)
    if path.is_file():
        figs = probe_result_figures(read_json(path, "a probe recipe's results"))
        if not figs:
            raise CliError(f"{path}: no per-layer probe results, AST-probe runs or flip rates")
        return _write(args, o, figs, "Probes")
    probe = _load(args.path)
    if not isinstance(probe, LinearProbe | PLSProbe):
        raise CliError(f"{path} holds a {read_cfg(path).get('kind')!r} artifact; view probe "
                       "draws linear and PLS probes (or a results JSON)")  # fmt: skip
    if not args.store:
        raise CliError("view probe with a probe directory needs --store (the activations)")
    store = ActivationStore(args.store)
    site = _store_site(store, args.site, probe.meta.get("site"))
    x = store.site(site)[_sample(store, o)]
    if isinstance(probe, LinearProbe) and probe.kind == "logistic":
        labels: Any = [f"class {int(c)}" for c in probe.predict(x)]
    else:
        pred = probe.predict(x) if isinstance(probe, LinearProbe) else probe(x)
        labels = pred.reshape(len(x), -1)[:, 0].double()
    fig = principal_directions(x, labels=labels, label_name="probe prediction",
                               max_points=o.max_points, seed=o.seed,
                               title=f"{site} of {args.store}, coloured by {path.name}")  # fmt: skip
    return _write(args, o, fig, "Probe predictions")


# --------------------------------------------------------------------------- erasure


def view_eraser(args: argparse.Namespace) -> int:
    o = _options(args)
    path = Path(args.path)
    if path.is_file():
        s = read_json(path, "summary.json of probes/erase_concept.py")
        if "accuracy_vs_rank" not in s or "probe_by_site" not in s:
            raise CliError(f"{path}: no 'accuracy_vs_rank' and 'probe_by_site' (expected the "
                           "summary.json of probes/erase_concept.py)")  # fmt: skip
        figs = {
            "Probe accuracy by layer": probe_by_site_figure(s["probe_by_site"], s.get("majority")),
            "Accuracy vs rank": accuracy_vs_rank_figure(s["accuracy_vs_rank"]),
        }
        return _write(args, o, figs, "Concept erasure")
    obj = _load(args.path)
    site_hint = obj.site if isinstance(obj, EraserEdit) else None
    eraser = obj.eraser if isinstance(obj, EraserEdit) else obj
    if not isinstance(eraser, AffineEraser):
        raise CliError(f"{path} holds a {read_cfg(path).get('kind')!r} artifact, not an eraser")
    if not args.store:
        raise CliError("view eraser with an eraser directory needs --store (the activations)")
    store = ActivationStore(args.store)
    site = _store_site(store, args.site, site_hint or eraser.meta.get("site"))
    rows = _sample(store, o)
    x = store.site(site)[rows]
    pos = store.site("positions")[rows]
    labels = ["first token" if p == 0 else "later token" for p in pos.tolist()]
    fig = erasure_pca_figure(x, eraser(x), labels, max_points=o.max_points, seed=o.seed,
                             title=f"{site} of {args.store} before and after {path.name}")  # fmt: skip
    return _write(args, o, fig, "Erasure")


# --------------------------------------------------------------------------- SAEs, vectors


def view_sae(args: argparse.Namespace) -> int:
    o = _options(args)
    path = Path(args.path)
    figs: dict[str, go.Figure] = {}
    if (path / "train_log.jsonl").is_file():
        figs["Training curves"] = training_curves(read_train_log(path / "train_log.jsonl"))
    if args.store:
        sae = load_any_sae(path)
        figs["Latent density"] = density_figure(evaluate(sae, ActivationStore(args.store)).density)
    else:
        for d in (path / "saelens", path):
            log_density = load_saelens_sparsity(d) if d.is_dir() else None
            if log_density is not None:
                figs["Latent density"] = density_figure(10 ** log_density.double())
                break
    if not figs:
        raise CliError(f"{path}: no train_log.jsonl and no saved sparsity; give --store to "
                       "measure the latent density")  # fmt: skip
    return _write(args, o, figs, "Sparse autoencoder")


def view_vector(args: argparse.Namespace) -> int:
    o = _options(args)
    sv = _load(args.path)
    if not isinstance(sv, SteeringVector):
        raise CliError(f"{args.path} holds a {read_cfg(args.path).get('kind')!r} artifact, not "
                       "a steering vector")  # fmt: skip
    layer: int | str = sv.layers[0] if args.layer is None else args.layer
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
        layer = int(layer)
    site = sv.sites[sv.index(layer)]
    direction = sv.direction(layer).double()
    if args.text is not None:
        tp = token_projections(open_model(sv.model_id or "smollm2-135m-instruct"), args.text,
                               direction, site)  # fmt: skip
        tokens, scores = tp.tokens, tp.scores
    elif args.store:
        store = ActivationStore(args.store)
        if site not in store.sites:
            raise CliError(f"store {args.store} has no site {site!r} (the vector's); it holds "
                           f"{sorted(store.sites)}")  # fmt: skip
        rows = (store.site("doc_ids").to_tensor() == args.window).nonzero().squeeze(1)
        if len(rows) == 0:
            raise CliError(f"store {args.store} has no window {args.window}")
        h = store.site(site)[rows].double()
        scores = h @ (direction / direction.norm())
        tok = open_tokenizer(store.model_id)
        tokens = [tok.decode([i]) for i in store.site("token_ids")[rows].tolist()]
    else:
        raise CliError("view vector needs --store (a stored window) or --text")
    fig = token_projection_figure(tokens, scores, title=f"Projection on {args.path} at {site}")
    return _write(args, o, fig, "Steering vector")


def view_sweep(args: argparse.Namespace) -> int:
    o = _options(args)
    data = read_json(args.path, "sweep.json of steering/sentiment_sweep.py")
    if not isinstance(data, dict) or "table" not in data:
        raise CliError(f"{args.path}: no 'table' (expected the sweep.json of "
                       "steering/sentiment_sweep.py)")  # fmt: skip
    return _write(args, o, sweep_figure(data), "Steering sweep")
