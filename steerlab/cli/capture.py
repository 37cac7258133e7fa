"""``steerlab capture``: activations of a corpus at some sites, into a resumable store."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Literal

from steerlab.capture import capture_to_store
from steerlab.capture.store import ActivationStore
from steerlab.cli.common import (
    advance,
    check_writable,
    corpus_texts,
    open_model,
    open_tokenizer,
    progress_bar,
    say,
    subcommand,
)
from steerlab.config import add_config, check_positive, check_types, require
from steerlab.datasets.corpora import chunk_tokens
from steerlab.models import DEFAULT_MODEL
from steerlab.sites import parse_sites

EXAMPLES = """examples:
  steerlab capture --sites resid_post.6 --tokens 200000 --out runs/prose-l6
  steerlab capture --sites resid_post.6,attn_out.6 --corpus prose+code --tokens 2000000 \\
      --out runs/sae_store
  steerlab capture --sites resid_post.12 --corpus notes/ --out runs/notes   # your own texts

Interrupting a capture and rerunning the same command resumes after the last complete shard.
A store that holds another model's or other sites' activations is refused, untouched."""


@dataclass
class CaptureOptions:
    """What ``steerlab capture`` reads, where it reads it and how it stores it."""

    sites: str
    """Comma-separated sites, e.g. resid_post.6,attn_out.6 (kinds: resid_pre, attn_out,
    resid_mid, mlp_post, mlp_out, resid_post; layers count from 0, negative from the end)."""
    out: str
    """Store directory (created; rerun the same command to resume)."""
    model: str = DEFAULT_MODEL
    """Embedded model name, local Hugging Face model directory, or hub id."""
    corpus: str = "prose"
    """Text to run through the model: a named corpus (prose, code; join them with + to
    interleave, e.g. prose+code), a local .txt/.md/.py/.jsonl file or a directory of them, or a
    Hugging Face datasets id written owner/name."""
    tokens: int = 200_000
    """Tokens to capture (whole windows of --seq-len; the last one may go past it)."""
    seq_len: int = 128
    """Tokens per window (the corpus is packed into consecutive windows)."""
    batch_size: int = 8
    """Windows per forward pass."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Number format of the stored activations."""
    shard_tokens: int = 65536
    """Rows per shard file (a resumed capture restarts after the last complete shard)."""
    device: str | None = None
    """cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)."""
    overwrite: bool = False
    """Replace an existing store at --out instead of resuming it."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "tokens", "batch_size", "shard_tokens")
        require(self, "seq_len", self.seq_len >= 2, ">= 2")
        require(self, "sites", bool(self.sites.strip(" ,")), "at least one site")


def register(sub: Any) -> None:
    p = subcommand(sub, "capture", "capture activations of a corpus into a store on disk",
                   epilog=EXAMPLES)  # fmt: skip
    p.set_defaults(fn=run, options=add_config(p, CaptureOptions))


def capture_store(o: CaptureOptions, *, config: dict[str, Any] | None = None) -> ActivationStore:
    """Tokenise the corpus (tokenizer only), then load the model and fill the store."""
    check_writable(o.out)
    tokenizer = open_tokenizer(o.model)
    texts = corpus_texts(o.corpus)
    chunks = chunk_tokens(tokenizer, texts, seq_len=o.seq_len, n_tokens=o.tokens)
    handle = open_model(o.model, device=o.device)
    parse_sites(o.sites, handle.n_layers)  # a bad site fails before the store is created
    total = int(chunks.input_ids.numel())
    say(f"capturing {total:,} tokens ({len(chunks.input_ids)} x {o.seq_len}) of {o.corpus!r} "
        f"at {o.sites} from {handle.model_id} into {o.out}")  # fmt: skip
    with progress_bar(total, "capture") as bar:
        return capture_to_store(
            handle, chunks, o.sites, o.out, dtype=o.dtype, batch_size=o.batch_size,
            shard_tokens=o.shard_tokens, overwrite=o.overwrite,
            config={"corpus": o.corpus, **(config or {})}, progress=advance(bar),
        )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    o: CaptureOptions = args.options.build(args, parser=args.parser)
    t0 = time.perf_counter()
    store = capture_store(o)
    say(f"done: {store.n_tokens:,} tokens in {store.n_shards} shards, "
        f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0
