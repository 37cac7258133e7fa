"""Stage ``capture``: one pass of the model over prose, every site the report reads, into one
store; the attention-sink rows marked.

Sites: ``resid_post`` at each report layer and ``attn_out`` at the atlas layer. The forward pass
stops after the last of them. Attention sinks (Xiao et al. 2024; "massive activations", Sun et
al. 2024): the first token of every window, and a few later tokens (often " the" or a newline),
carry residual norms many times the rest (on the embedded model ~700 against ~100 at layers
3-6, ~23,000 against ~150 from layer 12 on). They hold a large share of the variance, so PCA,
SAE statistics and FVU leave them out, as SAELens and Gemma Scope do; the report says so
wherever it does. The rule, :func:`sink_mask`: position 0, or a norm above ``norm_ratio`` times
the median norm of the later rows at any captured site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlab.capture import capture_to_store
from steerlab.capture.store import ActivationStore, StoreMismatchError
from steerlab.config import check_positive, check_types, require
from steerlab.datasets.corpora import chunk_tokens, load_texts
from steerlab.report.context import Context
from steerlab.report.page import Section, plural, table_html
from steerlab.report.stages import StageResult

__all__ = ["SINK_NORM_RATIO", "CaptureConfig", "run", "section", "sink_mask", "sites"]

SINK_NORM_RATIO = 4.0
"""Default of :func:`sink_mask`: a later row is a sink above this multiple of the median norm."""


@dataclass
class CaptureConfig:
    """The one capture pass every section reads."""

    tokens: int = 12_288
    """Prose tokens to capture (whole windows of seq_len)."""
    seq_len: int = 128
    """Tokens per window."""
    batch_size: int = 8
    """Windows per forward pass."""
    attn_out: bool = True
    """Also capture attn_out at the atlas layer (its effective rank is drawn beside the
    residual stream's)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    """Number format of the stored activations (float16 halves the store; the fits read them
    in float64)."""
    sink_norm_ratio: float = SINK_NORM_RATIO
    """A later token is an attention sink when its norm exceeds this multiple of the median
    norm at some captured site."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "tokens", "batch_size", "sink_norm_ratio")
        require(self, "seq_len", self.seq_len >= 2, ">= 2")


def sites(ctx: Context, cfg: CaptureConfig) -> list[str]:
    """The captured sites: resid_post at every report layer, attn_out at the atlas layer."""
    out = ctx.layer_sites()
    if cfg.attn_out:
        out.append(ctx.site(ctx.config.atlas_layer, "attn_out"))
    return out


def sink_mask(
    norms: Float[Tensor, "n sites"], positions: Int[Tensor, " n"], norm_ratio: float
) -> Bool[Tensor, " n"]:
    """Attention-sink rows: position 0, or a norm above ``norm_ratio`` × the median norm of
    the rows at later positions, at any site (a column of ``norms``).

    The median is taken over the later rows, which the sinks hardly move (they are ~1-2% of
    them), so the threshold does not depend on how many sinks there are.
    """
    pos = torch.as_tensor(positions).reshape(-1)
    if norms.ndim != 2 or norms.shape[0] != pos.shape[0]:
        raise ValueError(f"norms must be [n={pos.shape[0]}, sites], got {tuple(norms.shape)}")
    sink = pos == 0
    later = ~sink
    if bool(later.any()):
        median = norms[later].median(dim=0).values  # [sites]
        sink |= (norms > norm_ratio * median).any(dim=1)
    return sink


def _row_norms(store: ActivationStore, names: list[str]) -> Tensor:
    """``[n, sites]`` float32 norms of every row at every site, read shard by shard."""
    cols = []
    for site in names:
        parts = [x.float().norm(dim=1) for x in
                 store.iter_batches(site, 8192, shuffle=False, drop_last=False)]  # fmt: skip
        cols.append(torch.cat(parts))
    return torch.stack(cols, 1)


def run(ctx: Context, cfg: CaptureConfig, key: str) -> StageResult:
    """Capture the prose windows into ``DIR/store`` (resuming an interrupted capture of the same
    key), then mark the sink rows."""
    tokenizer = ctx.tokenizer
    chunks = chunk_tokens(tokenizer, load_texts("prose"), seq_len=cfg.seq_len, n_tokens=cfg.tokens)
    names = sites(ctx, cfg)
    step = ctx.counter("capture prose tokens", int(chunks.input_ids.numel()))
    kw = {"dtype": cfg.dtype, "batch_size": cfg.batch_size, "shard_tokens": 1 << 15,
          "config": {"report_stage_key": key}, "progress": step}  # fmt: skip
    try:
        store = capture_to_store(ctx.handle, chunks, names, str(ctx.store_path), **kw)
    except StoreMismatchError:  # a store of another configuration: this one replaces it
        kw["progress"] = ctx.counter("capture prose tokens", int(chunks.input_ids.numel()))
        store = capture_to_store(ctx.handle, chunks, names, str(ctx.store_path), overwrite=True,
                                 **kw)  # fmt: skip
    ctx.progress("row norms", 0, len(names))
    norms = _row_norms(store, names)
    if not torch.isfinite(norms).all():
        raise ValueError(f"non-finite activations in {store.path}: capture with --dtype float32")
    positions = store.site("positions").to_tensor().long()
    sink = sink_mask(norms, positions, cfg.sink_norm_ratio)
    first = positions == 0
    later = ~first
    per_site = {
        s: {"median_norm": float(norms[later, i].median()),
            "first_token_median_norm": float(norms[first, i].median()) if first.any() else None,
            "max_norm": float(norms[:, i].max()),
            "massive_later_rows": int((later & (norms[:, i] > cfg.sink_norm_ratio
                                                * norms[later, i].median())).sum())}
        for i, s in enumerate(names)
    }  # fmt: skip
    data = {
        "model_id": store.model_id,
        "sites": names,
        "n_tokens": store.n_tokens,
        "n_windows": int(chunks.input_ids.shape[0]),
        "seq_len": cfg.seq_len,
        "corpus_fingerprint": chunks.fingerprint,
        "sink_norm_ratio": cfg.sink_norm_ratio,
        "n_sinks": int(sink.sum()),
        "n_first": int(first.sum()),
        "n_massive_later": int((sink & later).sum()),
        "per_site": per_site,
    }
    return StageResult(data, {"sink": sink.to(torch.uint8), "norms": norms.float()})


def section(res: StageResult, ctx: Context, cfg: CaptureConfig) -> Section:
    d = res.data
    per = d["per_site"]
    text = (
        f"One forward pass over {d['n_tokens']:,} tokens of prose ({d['n_windows']} windows of "
        f"{d['seq_len']}: Python's own documentation, offline) stores the activations at "
        f"{len(d['sites'])} sites, and the principal directions and the SAE below read them from "
        f"this store. {plural(d['n_sinks'], 'row')} are attention sinks: the first token of "
        f"every window and {d['n_massive_later']} later tokens whose norm exceeds "
        f"{cfg.sink_norm_ratio:g}× the median at some site. The table shows why they are left "
        f"out of every fit: their norms dwarf the others'."
    )
    del ctx
    rows = [[s, v["median_norm"], v["first_token_median_norm"] or float("nan"), v["max_norm"],
             v["massive_later_rows"]] for s, v in per.items()]  # fmt: skip
    table = table_html(["site", "median ‖h‖ (later tokens)", "median ‖h‖ (first tokens)",
                        "largest ‖h‖", f"later rows above {cfg.sink_norm_ratio:g}× median"],
                       rows)  # fmt: skip
    return Section("capture", "The capture: one pass, every site", text, blocks=[table])
