"""The ``steerlab`` command: a thin layer that parses arguments, calls the library and shows
progress. Every subcommand has ``--help``.

    steerlab capture --model smollm2-135m-instruct --sites resid_post.6 --corpus prose \\
        --tokens 200000 --out runs/prose-l6
    steerlab store info runs/prose-l6
    steerlab view pca runs/prose-l6 --site resid_post.6 --out pca.html
    steerlab demo --out runs/demo
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
    from steerlab.data import chunk_tokens, load_texts
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
    from steerlab.data import token_contexts
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
    return p


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
