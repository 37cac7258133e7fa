"""``steerlab capture``: activations of a corpus at some sites, into a resumable store."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Literal

from steerlab import distributed as dist
from steerlab.capture import capture_to_store
from steerlab.capture.store import ActivationStore
from steerlab.cli.common import (
    CliError,
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
  torchrun --nproc_per_node=4 -m steerlab capture --sites resid_post.6 --tokens 20000000 \
      --out runs/big                     # 4 processes (GPUs), each captures a quarter

Interrupting a capture and rerunning the same command resumes after the last complete shard
(under torchrun: each rank after its own; rerun with the same number of processes).
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
    """cpu, cuda, cuda:1, ... (default: cuda when available, else cpu; under torchrun each
    rank's own GPU)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Number format of the model's weights and forward pass (--dtype is the stored one)."""
    device_map: str | None = None
    """Spread the model's layers over devices (auto, balanced, sequential): for a model that
    fits no single device; not with --device."""
    offload_folder: str | None = None
    """With --device-map: where layers that fit no device are offloaded to disk."""
    overwrite: bool = False
    """Replace an existing store at --out instead of resuming it."""
    distributed: bool = False
    """Split the corpus over the processes of a torchrun launch (each rank writes its own
    shards, rank 0 commits the store); on by itself when torchrun starts several processes."""

    def __post_init__(self) -> None:
        check_types(self)
        require(self, "device_map", self.device_map is None or self.device is None,
                "not together with --device")  # fmt: skip
        check_positive(self, "tokens", "batch_size", "shard_tokens")
        require(self, "seq_len", self.seq_len >= 2, ">= 2")
        require(self, "sites", bool(self.sites.strip(" ,")), "at least one site")


def register(sub: Any) -> None:
    p = subcommand(sub, "capture", "capture activations of a corpus into a store on disk",
                   epilog=EXAMPLES)  # fmt: skip
    p.set_defaults(fn=run, options=add_config(p, CaptureOptions))


def capture_store(o: CaptureOptions, *, config: dict[str, Any] | None = None) -> ActivationStore:
    """Tokenise the corpus (tokenizer only), then load the model and fill the store."""
    if o.distributed and not dist.launched_by_torchrun():
        raise CliError("--distributed needs a torchrun launch: torchrun --nproc_per_node=N "
                       "-m steerlab capture ...")  # fmt: skip
    info = dist.init()  # a no-op outside torchrun
    check_writable(o.out)
    tokenizer = open_tokenizer(o.model)
    texts = corpus_texts(o.corpus)
    chunks = chunk_tokens(tokenizer, texts, seq_len=o.seq_len, n_tokens=o.tokens)
    device = o.device
    if device is None and o.device_map is None and info.world_size > 1:
        device = str(info.device)
    handle = open_model(o.model, device=device, dtype=o.model_dtype, device_map=o.device_map,
                        offload_folder=o.offload_folder)  # fmt: skip
    parse_sites(o.sites, handle.n_layers)  # a bad site fails before the store is created
    total = int(chunks.input_ids.numel())
    main = info.rank == 0
    if main:
        ranks = f" on {info.world_size} ranks" if info.world_size > 1 else ""
        say(f"capturing {total:,} tokens ({len(chunks.input_ids)} x {o.seq_len}) of {o.corpus!r} "
            f"at {o.sites} from {handle.model_id} into {o.out}{ranks}")  # fmt: skip
    share = total // info.world_size if info.world_size > 1 else total
    with progress_bar(share, "capture", disable=not main) as bar:
        return capture_to_store(
            handle, chunks, o.sites, o.out, dtype=o.dtype, batch_size=o.batch_size,
            shard_tokens=o.shard_tokens, overwrite=o.overwrite,
            config={"corpus": o.corpus, **(config or {})}, progress=advance(bar),
            distributed=info.world_size > 1,
        )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    o: CaptureOptions = args.options.build(args, parser=args.parser)
    t0 = time.perf_counter()
    opened = not dist.is_distributed()  # close only a process group this command opened
    store = capture_store(o)
    if dist.is_main():
        say(f"done: {store.n_tokens:,} tokens in {store.n_shards} shards, "
            f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    if opened:
        dist.shutdown()
    return 0
