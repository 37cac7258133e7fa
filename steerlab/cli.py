"""The ``steerlab`` command: a thin layer that parses arguments, calls the library and shows
progress. Every subcommand has ``--help``.

    steerlab capture --model smollm2-135m-instruct --sites resid_post.6 --corpus prose \\
        --tokens 200000 --out runs/prose-l6
    steerlab store info runs/prose-l6
    steerlab view pca runs/prose-l6 --site resid_post.6 --out pca.html
    steerlab demo --out runs/demo
    steerlab vector fit --pairs data/steering/sentiment.jsonl --sites resid_post.12 --out vec
    steerlab steer --vector vec --alpha 0.5 --prompt "Describe your morning."
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

DEFAULT_SEQ_LEN = 128


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True, smoothing=0.1
    )


def cmd_capture(args: argparse.Namespace) -> int:
    from steerlab.capture import capture_to_store
    from steerlab.datasets.corpora import chunk_tokens, load_texts
    from steerlab.models import load_model
    from steerlab.sites import parse_sites

    handle = load_model(args.model, device=args.device)
    parse_sites(args.sites, handle.n_layers)  # fail on a bad site before reading the corpus
    texts = load_texts(args.corpus)
    chunks = chunk_tokens(
        handle.tokenizer,
        texts,
        seq_len=args.seq_len,
        n_tokens=args.tokens,
        prepend_bos=handle.add_bos,
    )
    total = int(chunks.input_ids.numel())
    print(
        f"capturing {total:,} tokens ({len(chunks.input_ids)} x {args.seq_len}) of "
        f"{args.corpus!r} at {args.sites} from {handle.model_id} into {args.out}"
    )
    t0 = time.perf_counter()
    with _progress_bar(total, "capture") as bar:
        store = capture_to_store(
            handle,
            chunks,
            args.sites,
            args.out,
            dtype=args.dtype,
            batch_size=args.batch_size,
            shard_tokens=args.shard_tokens,
            overwrite=args.overwrite,
            config={"corpus": args.corpus},
            progress=bar.update,
        )
    dt = time.perf_counter() - t0
    print(f"done: {store.n_tokens:,} tokens in {store.n_shards} shards, {dt:.1f} s")
    return 0


def cmd_store_info(args: argparse.Namespace) -> int:
    from steerlab.capture.store import ActivationStore

    store = ActivationStore(args.dir)
    if args.verify:
        store.verify()
    info = store.info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for k, v in info.items():
        print(f"{k:>14}: {v}")
    if args.verify:
        print(f"{'checksums':>14}: ok")
    return 0


def store_pca_figure(store_dir: str, site: str | None, max_points: int, seed: int = 0):
    """Build the principal-directions figure of a store site (hover: token in context)."""
    import torch

    from steerlab.capture.store import ActivationStore
    from steerlab.datasets.corpora import token_contexts
    from steerlab.models import load_model
    from steerlab.views import principal_directions

    store = ActivationStore(store_dir)
    site = site or next(iter(store.sites))
    n = len(store)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=g)[: min(n, max_points)].sort().values
    acts = store.site(site)[rows]
    meta = store[torch.arange(n)] if n <= 2_000_000 else store[rows]
    # rebuild the token windows from the stored ids so hovers can show context
    doc, pos, tok = meta["doc_ids"].long(), meta["positions"].long(), meta["token_ids"].long()
    ids = torch.zeros(int(doc.max()) + 1, int(pos.max()) + 1, dtype=torch.long)
    ids[doc, pos] = tok
    sel_doc, sel_pos = (doc[rows], pos[rows]) if len(doc) == n else (doc, pos)
    handle_tok = load_model(store.model_id).tokenizer
    ctx = token_contexts(handle_tok, ids, torch.stack([sel_doc, sel_pos], 1), window=10)
    title = f"{store.model_id} · {site} · {n:,} tokens"
    # The first token of each window carries the "massive activations" of an attention sink
    # and dominates PC1; colouring by it makes that visible instead of puzzling.
    labels = ["first token (attention sink)" if p == 0 else "later token" for p in sel_pos.tolist()]
    return principal_directions(
        acts,
        tokens=ctx.tokens,
        contexts=ctx.contexts,
        labels=labels,
        label_name="position",
        title=title,
        max_points=max_points,
        seed=seed,
    )


def cmd_view_pca(args: argparse.Namespace) -> int:
    from steerlab.views import write_html

    fig = store_pca_figure(args.dir, args.site, args.max_points)
    out = write_html(fig, args.out, title="Principal directions")
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Capture the prose corpus at one site of the embedded model and draw its PCA."""
    out = Path(args.out)
    ns = argparse.Namespace(
        model=args.model,
        device=args.device,
        sites=args.site,
        corpus="prose",
        tokens=args.tokens,
        seq_len=DEFAULT_SEQ_LEN,
        dtype="float32",
        batch_size=8,
        shard_tokens=16384,
        overwrite=False,
        out=str(out / "store"),
    )
    cmd_capture(ns)
    from steerlab.views import write_html

    fig = store_pca_figure(str(out / "store"), args.site, max_points=4000)
    html = write_html(
        fig,
        out / "principal_directions.html",
        title=f"steerlab demo: principal directions of {args.site}",
    )
    print(f"wrote {html}")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    """Print unsteered and steered continuations of each prompt side by side."""
    from steerlab.models import load_model
    from steerlab.steering.generate import compare, format_side_by_side, load_steering

    ivs = load_steering(args.vector, alpha=args.alpha, layer=args.layer,
                        positions=args.positions, relative=not args.absolute)  # fmt: skip
    handle = load_model(args.model, device=args.device)
    for iv in ivs:
        iv.check(handle)
    cmp = compare(handle, args.prompt, ivs, chat=not args.no_chat, system=args.system,
                  max_new_tokens=args.max_new_tokens, greedy=args.seed is None,
                  seed=args.seed or 0, temperature=args.temperature)  # fmt: skip
    where = ", ".join(iv.site for iv in ivs)
    print(f"{handle.model_id}  vector {args.vector} at {where}, alpha {args.alpha}")
    print(format_side_by_side(cmp, width=args.width, labels=("unsteered", f"alpha={args.alpha:g}")))
    return 0


def cmd_vector_fit(args: argparse.Namespace) -> int:
    from steerlab.datasets.pairs import load_pairs
    from steerlab.models import load_model
    from steerlab.steering.vectors import fit_vector

    pairs = load_pairs(args.pairs)  # fail on bad data before loading the model
    handle = load_model(args.model, device=args.device)
    print(f"fitting {args.method} on {len(pairs)} pairs of {args.pairs} at {args.sites}")
    sv = fit_vector(handle, pairs, args.sites, method=args.method, positions=args.positions,
                    chat=args.chat, batch_size=args.batch_size)  # fmt: skip
    out = sv.save(args.out)
    norms = "" if sv.norms is None else ", mean norms " + ", ".join(f"{x:.1f}" for x in sv.norms)
    print(f"wrote {out}: layers {list(sv.layers)}{norms}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steerlab", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("capture", help="capture activations from a corpus into a store")
    c.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="embedded name, local HF directory or hub id",
    )
    c.add_argument("--sites", required=True, help="comma-separated, e.g. resid_post.6,attn_out.6")
    c.add_argument("--corpus", default="prose", help="prose | code | PATH | datasets id")
    c.add_argument("--tokens", type=int, default=200_000, help="tokens to capture")
    c.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="tokens per sequence")
    c.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    c.add_argument("--shard-tokens", type=int, default=65536, help="rows per shard")
    c.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing store")
    c.add_argument("--out", required=True, help="store directory (rerun to resume)")
    c.set_defaults(fn=cmd_capture)

    s = sub.add_parser("store", help="inspect an activation store")
    ssub = s.add_subparsers(dest="store_command", required=True)
    si = ssub.add_parser("info", help="summarise a store")
    si.add_argument("dir")
    si.add_argument("--verify", action="store_true", help="check every shard's sha256")
    si.add_argument("--json", action="store_true", help="print JSON")
    si.set_defaults(fn=cmd_store_info)

    v = sub.add_parser("view", help="write interactive HTML views")
    vsub = v.add_subparsers(dest="view_command", required=True)
    vp = vsub.add_parser("pca", help="principal directions of a store site")
    vp.add_argument("dir")
    vp.add_argument("--site", default=None, help="site (default: the store's first)")
    vp.add_argument("--max-points", type=int, default=5000)
    vp.add_argument("--out", required=True, help="output .html")
    vp.set_defaults(fn=cmd_view_pca)

    d = sub.add_parser("demo", help="the main job on the embedded model: capture + PCA page")
    d.add_argument("--model", default="smollm2-135m-instruct")
    d.add_argument("--site", default="resid_post.6")
    d.add_argument("--tokens", type=int, default=20_000)
    d.add_argument("--device", default=None)
    d.add_argument("--out", default="runs/demo")
    d.set_defaults(fn=cmd_demo)

    st = sub.add_parser("steer", help="steered vs unsteered continuations, side by side")
    st.add_argument("--model", default="smollm2-135m-instruct")
    st.add_argument(
        "--vector",
        required=True,
        help="a steering vector directory (steerlab vector fit) or an intervention",
    )
    st.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="strength; for vectors a fraction of the layer's mean norm",
    )
    st.add_argument("--layer", default=None, help="layer of a multi-layer vector, or 'all'")
    st.add_argument("--positions", default="all", help="all | prompt | generation | ...")
    st.add_argument("--absolute", action="store_true", help="alpha in raw activation units")
    st.add_argument("--prompt", action="append", required=True, help="repeat for several")
    st.add_argument("--system", default=None, help="system message")
    st.add_argument("--no-chat", action="store_true", help="plain text, no chat template")
    st.add_argument("--max-new-tokens", type=int, default=48)
    st.add_argument("--seed", type=int, default=None, help="sample with this seed (default greedy)")
    st.add_argument("--temperature", type=float, default=1.0)
    st.add_argument("--width", type=int, default=110, help="output width in characters")
    st.add_argument("--device", default=None)
    st.set_defaults(fn=cmd_steer)

    vec = sub.add_parser("vector", help="steering vectors")
    vsub2 = vec.add_subparsers(dest="vector_command", required=True)
    vf = vsub2.add_parser("fit", help="fit a steering vector from contrast pairs")
    vf.add_argument("--model", default="smollm2-135m-instruct")
    vf.add_argument("--pairs", required=True, help="contrast pairs JSONL")
    vf.add_argument(
        "--sites", required=True, help="e.g. resid_post.12 or resid_post.8,resid_post.12"
    )
    vf.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca_diff"])
    vf.add_argument(
        "--positions", default=None, help="read rule (default: generation with prompts, else last)"
    )
    vf.add_argument("--chat", action="store_true", help="render prompts with the chat template")
    vf.add_argument("--batch-size", type=int, default=16)
    vf.add_argument("--device", default=None)
    vf.add_argument("--out", required=True, help="output directory")
    vf.set_defaults(fn=cmd_vector_fit)
    _add_sae_parsers(sub)
    return p


# --- sae ------------------------------------------------------------------------------------
# `steerlab sae train` / `steerlab sae eval`. The training options are generated from
# TrainConfig's fields (types, defaults and attribute docstrings), so the CLI and the library
# cannot drift apart.

SAE_TRAIN_LOG = "train_log.jsonl"
SAE_TRAIN_SUMMARY = "train.json"
SAE_EVAL_JSON = "eval.json"
# TrainConfig fields the CLI sets itself or does not expose, and renamed options
_TRAIN_SKIP = ("checkpoint_dir", "betas")
_TRAIN_RENAME = {"max_tokens": "tokens"}


def _field_docs(cls: type) -> dict[str, str]:
    """First sentence of each attribute docstring of a dataclass (for ``--help``)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in zip(body, body[1:], strict=False):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)):  # fmt: skip
            text = " ".join(str(b.value.value).split())
            docs[a.target.id] = text.replace("%", "%%")
    return docs


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip=(), rename=None) -> None:
    """One ``--kebab-case`` option per field of ``cls`` (int/float/str, Optional, Literal)."""
    import dataclasses
    import types
    import typing

    rename = rename or {}
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, choices = hints[f.name], None
        if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is typing.Literal:
            choices, tp = list(typing.get_args(tp)), str
        if tp not in (int, float, str):
            continue
        flag = "--" + rename.get(f.name, f.name).replace("_", "-")
        parser.add_argument(flag, dest=f.name, type=tp, choices=choices, default=f.default,
                            help=f"{docs.get(f.name, '')} (default: %(default)s)")  # fmt: skip


def _sae_postfix(m: dict[str, float]) -> dict[str, str]:
    dead = f"{100 * m['dead_frac']:.1f}%"
    return {"FVU": f"{m['fvu']:.4f}", "L0": f"{m['l0']:.1f}", "dead": dead}


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (those after the checkpoint are replayed on resume)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def cmd_sae_train(args: argparse.Namespace) -> int:
    """Train one SAE on a store site; rerun with the same arguments to resume."""
    import dataclasses

    from steerlab.capture.store import ActivationStore
    from steerlab.saes import SaeConfig, TrainConfig, save_sae, save_saelens, train
    from steerlab.saes.formats import STATE_JSON, find_checkpoint

    store = ActivationStore(args.store)
    if args.site not in store.sites:
        have = sorted(store.sites)
        raise KeyError(f"store {args.store} has no site {args.site!r}; it holds {have}")
    sae_cfg = SaeConfig(
        d_in=store.sites[args.site], d_sae=args.width, architecture=args.arch, k=args.k,
        l1_coefficient=args.l1_coefficient, site=args.site, model_id=store.model_id,
        init=args.init.replace("-", "_"), init_var=args.init_var, init_dim=args.init_dim,
        dtype=args.dtype, name=args.name,
    )  # fmt: skip
    out = Path(args.out)
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(_TRAIN_SKIP)
    tcfg = TrainConfig(**{n: getattr(args, n) for n in names}, checkpoint_dir=str(out))
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / SAE_TRAIN_LOG
    ckpt = find_checkpoint(out) if not args.restart else None
    start = json.loads((ckpt / STATE_JSON).read_text())["tokens"] if ckpt else 0
    _truncate_log(log_path, json.loads((ckpt / STATE_JSON).read_text())["step"] if ckpt else -1)
    per_epoch = store.n_tokens // tcfg.batch_size * tcfg.batch_size
    steps = None if tcfg.max_tokens is None else -(-tcfg.max_tokens // tcfg.batch_size)
    total = per_epoch if steps is None else steps * tcfg.batch_size
    verb = f"resuming at {start:,} tokens" if ckpt else "training"
    print(f"{verb}: {sae_cfg.name} on {args.store} ({store.n_tokens:,} tokens), "
          f"{total:,} tokens in batches of {tcfg.batch_size}")  # fmt: skip
    t0 = time.perf_counter()
    with _progress_bar(total, "sae train") as bar, log_path.open("a") as log:
        bar.update(start)

        def on_progress(p) -> None:
            m = p.metrics[sae_cfg.name]
            log.write(json.dumps({"step": p.step, "tokens": p.tokens,
                                  "tokens_per_s": p.tokens_per_s, **m}) + "\n")  # fmt: skip
            log.flush()
            bar.update(p.tokens - bar.n)
            bar.set_postfix(_sae_postfix(m), refresh=False)

        result = train(store, [sae_cfg], tcfg, callback=on_progress, resume=not args.restart)
    sae = result.saes[sae_cfg.name]
    save_sae(sae, out / "sae")
    save_saelens(sae, out / "saelens")
    summary = {
        "sae": sae_cfg.to_dict(), "train": dataclasses.asdict(tcfg), "store": str(args.store),
        "steps": result.steps, "tokens": result.tokens, "skipped_rows": result.skipped_rows,
        "init": result.init_reports.get(sae_cfg.name),
        "last_metrics": result.last_metrics.get(sae_cfg.name),
        "wall_s_this_run": time.perf_counter() - t0,
    }  # fmt: skip
    (out / SAE_TRAIN_SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    m = result.last_metrics.get(sae_cfg.name) or {}
    tail = "  ".join(f"{k} {v}" for k, v in _sae_postfix(m).items()) if m else ""
    print(f"done: {result.tokens:,} tokens, {result.steps} steps  {tail}")
    print(f"wrote {out / 'sae'} (steerlab) and {out / 'saelens'} (SAELens)")
    return 0


def _load_any_sae(path: Path):
    """An SAE from a `sae train` output directory, a steerlab SAE or a SAELens directory."""
    from steerlab.saes import load_sae, load_saelens
    from steerlab.saes.formats import SAELENS_WEIGHTS

    if (path / "sae").is_dir():
        path = path / "sae"
    if (path / SAELENS_WEIGHTS).is_file():
        return load_saelens(path)
    return load_sae(path)


def cmd_sae_eval(args: argparse.Namespace) -> int:
    """Reconstruction metrics on a store, and CE/KL loss recovered with the SAE spliced in."""
    from steerlab.capture.store import ActivationStore
    from steerlab.saes import activation_stats, evaluate, save_saelens

    path = Path(args.dir)
    sae = _load_any_sae(path)
    store = ActivationStore(args.store)
    site = args.site or sae.cfg.site
    metrics = evaluate(sae, store, site, n_tokens=args.tokens, batch_size=args.batch_size)
    report: dict = {"sae": sae.cfg.to_dict(), "store": str(args.store), "site": site,
                    "metrics": metrics.as_dict()}  # fmt: skip
    print(f"{sae.cfg.name} on {metrics.n_tokens:,} tokens of {site}")
    for k, v in metrics.as_dict().items():
        print(f"{k:>20}: {v:.6g}" if isinstance(v, float) else f"{k:>20}: {v:,}")
    if args.loss_windows > 0:
        from steerlab.models import load_model
        from steerlab.saes.splice import spliced_losses, store_windows

        handle = load_model(args.model or store.model_id, device=args.device)
        ids = store_windows(store, args.loss_windows)
        mean = activation_stats(store, site, n_tokens=args.mean_tokens).mean.float()
        with _progress_bar(ids.shape[0], "loss recovered") as bar:
            bar.unit = "win"
            losses = spliced_losses(handle, sae, ids, site=site, mean=mean,
                                    batch_size=args.loss_batch_size,
                                    progress=lambda n: bar.update(n - bar.n))  # fmt: skip
        report["loss"] = losses.as_dict()
        for name, r in (("CE", losses.ce), ("KL", losses.kl)):
            print(f"{name:>4} clean {r.clean:.4f}  spliced {r.spliced:.4f}  zero-abl "
                  f"{r.zero_abl:.4f}  mean-abl {r.mean_abl:.4f}  recovered vs zero "
                  f"{r.vs_zero:.4f}  vs mean {r.vs_mean:.4f}")  # fmt: skip
        print(f"     over {losses.n_tokens:,} predicted tokens of {ids.shape[0]} windows")
    out = Path(args.out) if args.out else (path / SAE_EVAL_JSON)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")
    if args.saelens:
        save_saelens(sae, args.saelens, density=metrics.density)
        print(f"wrote {args.saelens} (SAELens layout with sparsity.safetensors)")
    return 0


def _add_sae_parsers(sub) -> None:
    from steerlab.saes import TrainConfig

    sae = sub.add_parser("sae", help="train and evaluate sparse autoencoders")
    ssub = sae.add_subparsers(dest="sae_command", required=True)
    t = ssub.add_parser(
        "train", help="train an SAE on a store site (rerun to resume)",
        description="Train a TopK or ReLU-L1 SAE on one site of an activation store. "
        "Checkpoints go to OUT/checkpoint; rerunning the same command resumes exactly.",
    )  # fmt: skip
    t.add_argument("--store", required=True, help="activation store directory")
    t.add_argument("--site", required=True, help="store site, e.g. resid_post.6")
    t.add_argument("--width", type=int, required=True, help="latents (d_sae)")
    t.add_argument("--k", type=int, default=32, help="latents kept per token (TopK)")
    t.add_argument("--arch", default="topk", choices=["topk", "relu_l1"])
    t.add_argument("--init", default="active-subspace",
                   choices=["active-subspace", "tied", "random"])  # fmt: skip
    t.add_argument("--init-var", type=float, default=0.99,
                   help="active-subspace: variance fraction defining its dimension")  # fmt: skip
    t.add_argument("--init-dim", type=int, default=None, help="active-subspace: explicit dim")
    t.add_argument("--l1-coefficient", type=float, default=0.05, help="ReLU-L1 penalty weight")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--name", default=None, help="SAE name (default: derived from the config)")
    _add_dataclass_args(t, TrainConfig, skip=_TRAIN_SKIP, rename=_TRAIN_RENAME)
    t.add_argument("--restart", action="store_true", help="ignore and replace a checkpoint")
    t.add_argument("--out", required=True, help="output directory (rerun to resume)")
    t.set_defaults(fn=cmd_sae_train)

    e = ssub.add_parser("eval", help="FVU, L0, dead %% and CE/KL loss recovered of an SAE")
    e.add_argument("dir", help="`sae train` output, a steerlab SAE or a SAELens directory")
    e.add_argument("--store", required=True, help="activation store to evaluate on")
    e.add_argument("--site", default=None, help="default: the SAE's site")
    e.add_argument("--tokens", type=int, default=None, help="tokens for the metrics (default all)")
    e.add_argument("--batch-size", type=int, default=4096)
    e.add_argument("--loss-windows", type=int, default=32,
                   help="store windows for CE/KL loss recovered (0: skip)")  # fmt: skip
    e.add_argument("--loss-batch-size", type=int, default=8, help="windows per forward")
    e.add_argument("--mean-tokens", type=int, default=65536,
                   help="tokens for the mean of mean-ablation")  # fmt: skip
    e.add_argument("--model", default=None, help="default: the store's model")
    e.add_argument("--device", default=None)
    e.add_argument("--out", default=None, help=f"JSON report (default DIR/{SAE_EVAL_JSON})")
    e.add_argument("--saelens", default=None, help="also write the SAELens layout with sparsity")
    e.set_defaults(fn=cmd_sae_eval)


# --- end sae ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"steerlab: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
