"""``steerlab store info``: what an activation store holds (no model is loaded)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from steerlab.capture.store import ActivationStore
from steerlab.cli.common import HelpFormatter, say, subcommand, table


def register(sub: Any) -> None:
    s = sub.add_parser("store", help="inspect an activation store",
                       description="Inspect an activation store.", formatter_class=HelpFormatter)  # fmt: skip
    ssub = s.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    p = subcommand(ssub, "info", "summarise a store: model, sites, tokens, size, settings",
                   epilog="example:\n  steerlab store info runs/prose-l6 --verify")  # fmt: skip
    p.add_argument("dir", help="store directory (from steerlab capture)")
    p.add_argument("--verify", action="store_true", help="also check every shard's sha256")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=info)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def info_rows(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rows of the ``store info`` table."""
    cfg = dict(info.get("config") or {})
    tok = cfg.pop("tokenizer", None) or {}
    rows: list[tuple[str, Any]] = [
        ("path", info["path"]),
        ("model", info["model_id"]),
        ("complete", "yes" if info["complete"] else "no (rerun the capture to finish it)"),
        ("tokens", f"{info['n_tokens']:,}"),
        ("sequences", f"{info['n_sequences']:,}"),
        ("shards", f"{info['n_shards']:,}"),
        ("size on disk", _size(info["size_bytes"])),
        ("dtype", info["dtype"]),
    ]
    rows += [(f"site {name}", f"width {width}") for name, width in info["sites"].items()]
    rows += [(k.replace("_", " "), v) for k, v in cfg.items()]
    if tok:
        rows.append(("tokenizer", ", ".join(f"{k}={v}" for k, v in tok.items())))
    rows += [(f"{k} fingerprint", v) for k, v in info.get("fingerprints", {}).items()]
    return rows


def info(args: argparse.Namespace) -> int:
    store = ActivationStore(args.dir)
    if args.verify:
        store.verify()
    summary = store.info()
    if args.verify:
        summary["checksums"] = "ok"
    if args.json:
        say(json.dumps(summary, indent=2, default=str))
        return 0
    rows = info_rows(summary)
    if args.verify:
        rows.append(("checksums", "ok (every shard's sha256 verified)"))
    say(table(rows))
    return 0
