"""Leaf vectors for the AST-Probe: every layer of a model from one capture pass.

AST-Probe (Hernández López et al., ASE 2022; martin-wey/ast-probe) represents each AST leaf by
the mean of the hidden states of its subword tokens (the reference's ``scatter_mean``):

    ``h_i = (1 / |T_i|) Σ_{j ∈ T_i} x_j``

where ``T_i`` are the tokens of leaf ``i``. The reference tokenises every leaf on its own
(``match_tokenized_to_untokenized_roberta``), so no token belongs to two leaves.
:func:`encode_leaves` does the same while keeping the spacing the source had: piece ``i`` is
the text between the end of leaf ``i − 1`` and the end of leaf ``i`` (the whitespace before the
leaf, then the leaf), tokenised alone, so a BPE merge such as ``"):"`` or ``"()"`` cannot
form across a leaf boundary and each token's character offsets fall inside one piece. Tokens
are matched to leaves by those offsets (:func:`steerlab.probes.ast.data.leaf_token_alignment`,
refusing any token that overlaps two leaves); a whitespace-only token belongs to no leaf.
``tokenization="text"`` tokenises the snippet as one string instead (a token straddling two
leaves is then pooled into both, and counted in ``meta["straddling_tokens"]``), as steerlab did
before: about 6% of adjacent leaf pairs then share all their tokens and get the same vector.

:func:`capture_leaf_features` runs the model once over all snippets and pools every requested
site on the fly, so only ``n_leaves × d_model`` per site is ever held (stored as float16 by
default). :class:`LeafFeatures` is an artifact directory (``cfg.json`` +
``ast_features.safetensors``) whose sites load one at a time, and
:func:`cached_leaf_features` reuses it when the model, tokenizer, snippets, sites and
tokenization match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import AutoModel, AutoModelForCausalLM

from steerlab.artifacts import read_cfg, register, save_artifact, tensors_name
from steerlab.capture import capture
from steerlab.errors import FormatError
from steerlab.models import ModelHandle, from_hf
from steerlab.probes.ast.data import (
    AstSnippet,
    extract_snippets,
    leaf_token_alignment,
    straddling_tokens,
)
from steerlab.sites import site_width
from steerlab.tokens import Encoded, encode_texts, model_context, pad
from steerlab.validation import open_tensors, reading

logger = logging.getLogger(__name__)

__all__ = [
    "KIND",
    "LeafFeatures",
    "Tokenization",
    "cached_leaf_features",
    "capture_leaf_features",
    "encode_leaves",
    "features_key",
    "layer_sites",
    "random_init_model",
    "snippet_from_code",
    "subsample_splits",
]

KIND = "ast_features"
"""Artifact kind (``cfg.json``) of :class:`LeafFeatures`."""
_OFFSETS = "__offsets__"

Tokenization = Literal["leaves", "text"]
"""``"leaves"``: each leaf tokenised on its own with its leading whitespace
(:func:`encode_leaves`, the reference's way; no token straddles two leaves); ``"text"``: the
snippet tokenised as one string (straddling tokens shared by their leaves)."""


def encode_leaves(handle: ModelHandle, snippets: Sequence[AstSnippet]) -> Encoded:
    """Tokenise each snippet leaf by leaf, keeping the source's spacing (module docstring).

    Piece ``i`` is ``code[end_{i−1}:end_i]``: the layout before leaf ``i`` and the leaf itself.
    The pieces are tokenised without special tokens and concatenated, each token's offsets
    shifted into ``code``; then the model's own special tokens are added as
    :func:`steerlab.tokens.encode_texts` adds them (BOS for a causal LM with
    ``handle.add_bos``; ``[CLS] … [SEP]`` for an encoder).

    Returns:
        A right-padded :class:`~steerlab.tokens.Encoded` batch with character offsets into
        each snippet's :attr:`~steerlab.probes.ast.data.AstSnippet.code`.

    Raises:
        ValueError: a snippet without leaves, or one longer than the model's context (the
            message names it: drop it, e.g. with ``load_ast_snippets(max_tokens=...)``).
    """
    tok = handle.tokenizer
    limit = model_context(handle)
    if handle.is_causal:
        head = [tok.bos_token_id] if handle.add_bos else []
        tail: list[int] = []
    else:
        if tok.cls_token_id is None or tok.sep_token_id is None:
            raise ValueError(f"{handle.model_id}: an encoder tokenizer needs [CLS] and [SEP]")
        head, tail = [tok.cls_token_id], [tok.sep_token_id]
    seqs, offs = [], []
    for s in snippets:
        if not s.leaf_spans:
            raise ValueError(f"snippet {s.path}:{s.line} ({s.name}) has no leaves")
        ends = [e for _, e in s.leaf_spans]
        starts = [0, *ends[:-1]]
        enc = tok([s.code[a:b] for a, b in zip(starts, ends)], add_special_tokens=False,
                  return_offsets_mapping=True)  # fmt: skip
        ids = list(head)
        off = [(0, 0)] * len(head)
        for p_ids, p_off, a in zip(enc["input_ids"], enc["offset_mapping"], starts):
            ids += p_ids
            off += [(a + i, a + j) for i, j in p_off]
        ids += tail
        off += [(0, 0)] * len(tail)
        if len(ids) > limit:
            raise ValueError(
                f"snippet {s.path}:{s.line} ({s.name}) has {len(ids)} tokens tokenised leaf by "
                f"leaf, more than {handle.model_id}'s context ({limit}); leave it out"
            )
        seqs.append(ids)
        offs.append(off)
    return pad(handle, seqs, offsets=offs)


def layer_sites(n_layers: int) -> list[str]:
    """The embeddings and the output of every block: ``resid_pre.0, resid_post.0 … .{L-1}``.

    Index ``k`` of the list is "layer k" in the AST-Probe's sense: 0 is the token embeddings
    (the paper's ``-0`` baseline) and ``k >= 1`` the output of block ``k - 1``.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return ["resid_pre.0"] + [f"resid_post.{layer}" for layer in range(n_layers)]


def subsample_splits(
    dataset: Any,
    n_train: int | None = None,
    n_dev: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> dict[str, list[AstSnippet]]:
    """A seeded random subset of each split of an :class:`~steerlab.probes.ast.data.AstDataset`.

    ``load_ast_snippets(max_snippets=...)`` fills the splits in file-hash order, so its first
    snippets all come from train files; load everything and subsample here instead.

    Returns:
        ``{"train": [...], "dev": [...], "test": [...]}`` (a split keeps all its snippets when
        its size is None or larger than the split).
    """
    rng = random.Random(seed)
    out = {}
    for name, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        pool = list(getattr(dataset, name))
        out[name] = pool if n is None or n >= len(pool) else rng.sample(pool, n)
    return out


def random_init_model(handle: ModelHandle, seed: int = 0) -> Any:
    """The same architecture with random weights: the AST-Probe's ``rand`` baseline.

    ``AutoModelForCausalLM.from_config(config)`` under ``torch.manual_seed(seed)`` (the
    transformers initialisation of the architecture), wrapped with
    :func:`steerlab.models.from_hf` and the original tokenizer, with model id
    ``"<model_id>-random-seed<seed>"`` so its cached features never mix with the model's.
    """
    cls = AutoModelForCausalLM if handle.is_causal else AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(handle.model.config)
    model = model.to(device=handle.device, dtype=handle.dtype).eval()
    model.requires_grad_(False)
    rand = from_hf(
        model, handle.tokenizer, f"{handle.model_id}-random-seed{seed}", add_bos=handle.add_bos
    )
    rand.source = handle.source
    return rand


def snippet_from_code(code: str, path: str = "<string>") -> AstSnippet:
    """Clean and parse one function given as text (the first ``def`` in it).

    Raises:
        ValueError: the text holds no function that survives cleaning (it does not parse, has
            no ``def``, or only a docstring); the message gives the counted reasons.
    """
    snippets, counts = extract_snippets(code, path)
    if not snippets:
        reasons = {k: v for k, v in counts.items() if v and k not in ("kept",)}
        raise ValueError(
            f"no usable function in the given code ({reasons or 'no def found'}); "
            "the AST probe needs a function that tree-sitter parses without errors"
        )
    return snippets[0]


def features_key(
    model_id: str,
    tokenizer_fingerprint: str,
    snippets: Sequence[AstSnippet],
    sites: Sequence[str],
    tokenization: Tokenization = "leaves",
) -> str:
    """A hash of everything leaf vectors depend on: model, tokenizer, snippet texts and spans,
    sites, tokenization."""
    h = hashlib.sha256()
    h.update(json.dumps([model_id, tokenizer_fingerprint, list(sites), tokenization]).encode())
    for s in snippets:
        h.update(hashlib.sha256(s.code.encode()).digest())
        h.update(json.dumps(s.leaf_spans).encode())
    return h.hexdigest()[:24]


@register(KIND)
@dataclass(frozen=True, eq=False, repr=False)
class LeafFeatures:
    """Mean-pooled leaf vectors of a list of snippets at several sites.

    Snippet ``i``'s leaves are rows ``offsets[i]:offsets[i + 1]`` of every site's matrix, in
    leaf order; a snippet that was skipped (no leaves) has an empty range.
    """

    acts: dict[str, Float[Tensor, "leaf d_model"]]
    """Site name -> leaf vectors of all snippets, concatenated."""
    offsets: Int[Tensor, " snippet_plus_1"]
    """Row offsets of each snippet's leaves (length ``n_snippets + 1``)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Model id, key, counts (``n_leaves``, ``straddling_tokens``, ``no_leaves``)."""

    def __post_init__(self) -> None:
        n = int(self.offsets[-1]) if len(self.offsets) else -1
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or int(self.offsets[0]) != 0:
            raise ValueError("offsets must be a 1-D tensor starting at 0")
        if bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError("offsets must be non-decreasing")
        for site, x in self.acts.items():
            if x.ndim != 2 or x.shape[0] != n:
                raise ValueError(f"site {site}: expected [{n}, d_model] rows, got {tuple(x.shape)}")

    def __repr__(self) -> str:
        return (
            f"LeafFeatures(n_snippets={self.n_snippets}, n_leaves={self.n_leaves}, "
            f"sites={len(self.acts)}, model_id={self.meta.get('model_id')!r})"
        )

    @property
    def sites(self) -> list[str]:
        """Sites held, in capture order."""
        return list(self.acts)

    @property
    def n_snippets(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_leaves(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, site: str) -> Float[Tensor, "leaf d_model"]:
        if site not in self.acts:
            raise KeyError(f"site {site!r} not in these features; held: {self.sites}")
        return self.acts[site]

    def snippet(self, i: int, site: str) -> Float[Tensor, "leaf d_model"]:
        """Leaf vectors of snippet ``i`` at ``site``."""
        return self[site][int(self.offsets[i]) : int(self.offsets[i + 1])]

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``cfg.json`` and ``ast_features.safetensors`` (one tensor per site).

        The header's ``d_in`` is the sites' common width (null if they differ), ``site`` the
        sites, ``tokenizer_hash`` the fingerprint recorded at capture (``meta["tokenizer"]``).
        """
        cfg = {"sites": self.sites, "n_snippets": self.n_snippets, "meta": self.meta}
        tensors = {**self.acts, _OFFSETS: self.offsets}
        widths = {int(x.shape[1]) for x in self.acts.values()}
        tok = self.meta.get("tokenizer")
        return save_artifact(
            path, KIND, cfg, tensors,
            d_in=widths.pop() if len(widths) == 1 else None,
            site=",".join(self.sites) or None,
            model_id=self.meta.get("model_id"),
            tokenizer_hash=tok if isinstance(tok, str) else None,
        )  # fmt: skip

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        sites: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> LeafFeatures:
        """Read features written by :meth:`save`; only ``sites`` (default all) are read."""
        cfg = read_cfg(path)
        if cfg["kind"] != KIND:
            raise FormatError(path, f"holds a {cfg['kind']!r} artifact, expected {KIND!r}")
        with reading(path, "LeafFeatures"):
            stored = [str(s) for s in cfg["sites"]]
        wanted = stored if sites is None else list(sites)
        missing = [s for s in wanted if s not in stored]
        if missing:
            raise KeyError(f"{path} has no sites {missing}; it holds {stored}")
        # safe_open reads only the requested tensors: one site of 31 is 1/31 of the file
        tfile = Path(path) / tensors_name(KIND)
        with reading(path, "LeafFeatures"), open_tensors(tfile, str(device)) as (f, _):
            offsets = f.get_tensor(_OFFSETS)
            acts = {s: f.get_tensor(s) for s in wanted}
            return cls(acts, offsets, cfg["meta"])


def _pool_batch(
    handle: ModelHandle,
    snippets: Sequence[AstSnippet],
    sites: Sequence[str],
    batch_size: int,
    tokenization: Tokenization,
) -> tuple[dict[str, Tensor], int]:
    """Leaf vectors (float32) of a few snippets at ``sites``, and the straddling-token count."""
    if tokenization == "leaves":
        enc = encode_leaves(handle, snippets)
    else:
        enc = encode_texts(handle, [s.code for s in snippets])
    cap = capture(handle, enc, list(sites), positions="all", batch_size=batch_size,
                  dtype=torch.float32)  # fmt: skip
    B, T = enc.input_ids.shape
    row_of = torch.full((B, T), -1, dtype=torch.long)
    row_of[cap.doc_ids, cap.positions] = torch.arange(len(cap.doc_ids))
    leaf_idx: list[int] = []
    rows: list[int] = []
    weights: list[float] = []
    n_leaf, n_straddle = 0, 0
    rule = "refuse" if tokenization == "leaves" else "share"
    for b, s in enumerate(snippets):
        offsets = enc.offsets[b][enc.attention_mask[b].bool()]  # type: ignore[index]
        try:
            groups = leaf_token_alignment(s.leaf_spans, offsets, straddling=rule)
        except ValueError as e:
            raise ValueError(f"snippet {s.path}:{s.line} ({s.name}): {e}") from None
        n_straddle += len(straddling_tokens(s.leaf_spans, offsets))
        for toks in groups:
            r = row_of[b, toks]
            if bool((r < 0).any()):  # a token the capture did not return (special or padding)
                raise ValueError(f"snippet {s.path}:{s.line}: a leaf maps to a special token")
            leaf_idx += [n_leaf] * len(toks)
            rows += r.tolist()
            weights += [1.0 / len(toks)] * len(toks)
            n_leaf += 1
    idx = torch.tensor(leaf_idx)
    r = torch.tensor(rows)
    w = torch.tensor(weights, dtype=torch.float32)[:, None]
    out = {}
    for site in sites:
        x = cap[site]
        out[site] = torch.zeros(n_leaf, x.shape[1]).index_add_(0, idx, x[r] * w)
    return out, n_straddle


def capture_leaf_features(
    handle: ModelHandle,
    snippets: Sequence[AstSnippet],
    sites: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    chunk_size: int = 64,
    dtype: torch.dtype = torch.float16,
    tokenization: Tokenization = "leaves",
    progress: Callable[[int], None] | None = None,
) -> LeafFeatures:
    """Mean-pool each leaf's subword tokens at every site, in one forward pass per batch.

    Snippets are run in order of length (less padding) and stored in the given order.

    Args:
        handle: a :class:`steerlab.models.ModelHandle`.
        snippets: the snippets (e.g. ``train + dev + test`` of
            :func:`steerlab.probes.ast.data.load_ast_snippets`).
        sites: sites to pool; default :func:`layer_sites` of the model (all layers).
        batch_size: sequences per forward pass.
        chunk_size: snippets captured and pooled together (bounds the token rows held).
        dtype: storage dtype of the leaf vectors (pooling is done in float32).
        tokenization: ``"leaves"`` (:func:`encode_leaves`, default) or ``"text"``.
        progress: called with the number of snippets done after each chunk.

    Returns:
        :class:`LeafFeatures`; snippets without leaves are skipped (an empty range) and counted
        in ``meta["no_leaves"]``.

    Raises:
        ValueError: a leaf that overlaps no token (the text was truncated).
    """
    sites = layer_sites(handle.n_layers) if sites is None else list(sites)
    if not sites:
        raise ValueError("no sites given")
    if chunk_size < 1 or batch_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    if tokenization not in ("leaves", "text"):
        raise ValueError(f"tokenization must be 'leaves' or 'text', got {tokenization!r}")
    counts = torch.tensor([len(s.leaf_spans) for s in snippets], dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    acts = {s: torch.zeros(int(offsets[-1]), site_width(handle, s), dtype=dtype) for s in sites}
    todo = sorted(
        (i for i in range(len(snippets)) if counts[i] > 0), key=lambda i: len(snippets[i].code)
    )
    n_straddle = 0
    for k in range(0, len(todo), chunk_size):
        ids = todo[k : k + chunk_size]
        pooled, n_s = _pool_batch(handle, [snippets[i] for i in ids], sites, batch_size,
                                  tokenization)  # fmt: skip
        n_straddle += n_s
        dst = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in ids])
        for site in sites:
            acts[site][dst] = pooled[site].to(dtype)
        logger.info(
            "%s: leaf vectors of %d / %d snippets",
            handle.model_id,
            min(k + chunk_size, len(todo)),
            len(todo),
        )
        if progress is not None:
            progress(len(ids))
    no_leaves = int((counts == 0).sum())
    if no_leaves:
        logger.warning(
            "%d of %d snippets have no leaves and were skipped", no_leaves, len(snippets)
        )
    meta = {
        "model_id": handle.model_id,
        "tokenizer": handle.tokenizer_fingerprint(),
        "key": features_key(
            handle.model_id, handle.tokenizer_fingerprint(), snippets, sites, tokenization
        ),
        "tokenization": tokenization,
        "n_leaves": int(offsets[-1]),
        "straddling_tokens": n_straddle,
        "no_leaves": no_leaves,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return LeafFeatures(acts, offsets, meta)


def _concat(parts: Sequence[LeafFeatures], meta: dict[str, Any]) -> LeafFeatures:
    """Join features of consecutive snippet lists (same sites) into one.

    Consumes ``parts``: each site's rows are dropped from the parts as soon as they are joined,
    so the peak memory is the result plus one site, not twice the result (all snippets at 16
    sites of SmolLM2 are ~9 GB of float16).
    """
    sites = parts[0].sites
    shift = torch.tensor([0] + [p.n_leaves for p in parts[:-1]]).cumsum(0)
    offsets = torch.cat([parts[0].offsets[:1]] + [p.offsets[1:] + k for p, k in zip(parts, shift)])
    acts = {s: torch.cat([p.acts.pop(s) for p in parts]) for s in sites}
    for k in ("straddling_tokens", "no_leaves"):
        meta[k] = sum(int(p.meta.get(k, 0)) for p in parts)
    meta["n_leaves"] = int(offsets[-1])
    return LeafFeatures(acts, offsets, meta)


def cached_leaf_features(
    handle: ModelHandle,
    snippets: Sequence[AstSnippet],
    path: str | os.PathLike,
    sites: Sequence[str] | None = None,
    *,
    part_size: int | None = None,
    **kwargs: Any,
) -> LeafFeatures:
    """:func:`capture_leaf_features`, reusing ``path`` when its key matches (else overwriting it).

    The key (:func:`features_key`) covers the model id, the tokenizer, every snippet's text and
    leaf spans, and the sites; give each model (e.g. a random-weights baseline) its own
    ``model_id`` so that their caches never collide.

    Args:
        handle: the model.
        snippets: the snippets.
        path: the artifact directory.
        sites: default all layers (:func:`layer_sites`).
        part_size: capture ``part_size`` snippets at a time, each cached under
            ``path/parts/``, so that an interrupted capture resumes after the last finished
            part; the parts are joined (and removed) at the end.
        **kwargs: passed to :func:`capture_leaf_features`.
    """
    sites = layer_sites(handle.n_layers) if sites is None else list(sites)
    key = features_key(handle.model_id, handle.tokenizer_fingerprint(), snippets, sites,
                       kwargs.get("tokenization", "leaves"))  # fmt: skip
    path = Path(path)
    if (path / "cfg.json").is_file():
        try:
            cached = read_cfg(path).get("meta", {}).get("key")
        except (OSError, ValueError):
            cached = None
        if cached == key:
            logger.info("reusing leaf features from %s", path)
            return LeafFeatures.load(path)
        logger.info("leaf features at %s are stale (key %s != %s); recapturing", path, cached, key)
    if part_size is None or len(snippets) <= part_size:
        feats = capture_leaf_features(handle, snippets, sites, **kwargs)
    else:
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {part_size}")
        parts = []
        for k, start in enumerate(range(0, len(snippets), part_size)):
            part = snippets[start : start + part_size]
            parts.append(
                cached_leaf_features(handle, part, path / "parts" / f"{k:04d}", sites, **kwargs)
            )
            logger.info(
                "%s: part %d of %d done",
                handle.model_id,
                k + 1,
                math.ceil(len(snippets) / part_size),
            )
        feats = _concat(parts, {**parts[0].meta, "key": key})
    feats.save(path)  # replaces the directory, parts included
    return feats
