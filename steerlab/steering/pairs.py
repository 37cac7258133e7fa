"""Reading activations of contrast pairs and labelled sets (the data: :mod:`steerlab.datasets.pairs`).

**Reading activations** (:func:`read_examples`, :func:`read_pairs`). Each example is tokenised
by :func:`steerlab.tokens.encode_pair`: prompt tokens (the chat template applied when
``chat=True``; a BOS token first when the handle adds one) followed by completion tokens,
tokenised separately so that the prompt/completion boundary is exact. The read rule is a
:mod:`steerlab.positions` rule, the same vocabulary that says where an intervention applies,
with the completion as "generation": ``"generation"`` (every completion token; the default for
pairs with a prompt), ``"last"`` (the last prompt token; the default for standalone texts),
``"prompt"``, ``"generation:first_4"``, ... An example's activation is the mean over its
selected tokens (each example weighs the same). Like every rule, it never selects a BOS token
that steerlab prepends. Every requested layer is read in the same forward pass
(:func:`steerlab.capture.capture`, which stops after the last one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.capture import capture
from steerlab.datasets.pairs import LabelledSet, PairSet, as_pairs
from steerlab.models import ModelHandle
from steerlab.positions import Positions, as_positions, select_encoded
from steerlab.sites import SiteError, parse_sites
from steerlab.tokens import encode_pairs

__all__ = ["Examples", "PairActivations", "read_examples", "read_pairs"]


# --------------------------------------------------------------------------- reading activations


def _read_rule(rule: str | Positions) -> Positions:
    pos = as_positions(rule)
    if pos.tokens in ("scored", "indices", "spans"):
        raise ValueError(
            f"read rule {str(pos)!r} cannot read a steering vector: 'scored' needs a basis "
            "before there is one, and 'indices'/'spans' name tokens of other texts"
        )
    return pos


class Examples(NamedTuple):
    """Per-example activations at several layers of one site kind.

    Attributes:
        acts: ``[n, layer, d]`` float64 mean over each example's read tokens.
        norms: ``[n, layer]`` float64 mean ‖h‖ over the same tokens.
        n_tokens: ``[n]`` how many tokens each example contributed.
    """

    acts: Float[Tensor, "n layer d"]
    norms: Float[Tensor, "n layer"]
    n_tokens: Tensor


class PairActivations(NamedTuple):
    """Activations of the two sides of contrast pairs (row ``i`` of both is pair ``i``).

    Attributes:
        pos: ``[n, layer, d]`` positive side.
        neg: ``[n, layer, d]`` negative side.
        pos_norms: ``[n, layer]`` mean ‖h‖ of the positive side's read tokens.
        neg_norms: ``[n, layer]`` same for the negative side.
    """

    pos: Float[Tensor, "n layer d"]
    neg: Float[Tensor, "n layer d"]
    pos_norms: Float[Tensor, "n layer"]
    neg_norms: Float[Tensor, "n layer"]


def read_examples(
    handle: ModelHandle,
    texts: Sequence[str],
    sites: str | Sequence[str],
    *,
    prompts: Sequence[str] | None = None,
    positions: str | Positions = "last",
    chat: bool = False,
    batch_size: int = 32,
    names: Sequence[str] | None = None,
) -> Examples:
    """Read every example's mean activation at ``sites`` (one kind, several layers) in one pass.

    Args:
        handle: the model.
        texts: completions (with ``prompts``) or standalone texts.
        sites: site names of one kind, e.g. ``"resid_post.4,resid_post.8"``.
        prompts: one prompt per text, or None.
        positions: the read rule.
        chat: apply the chat template to the prompt (or the standalone text).
        batch_size: sequences per forward pass.
        names: what to call each example in error messages (default ``"example <i>"``).
    """
    site_list = _one_kind(sites, handle.n_layers)
    rule = _read_rule(positions)
    if len(texts) == 0:
        raise ValueError("no texts to read")
    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts")
    n = len(texts)
    labels = list(names) if names is not None else [f"example {i}" for i in range(n)]
    heads, tails = (list(texts), None) if prompts is None else (list(prompts), list(texts))
    enc = encode_pairs(handle, heads, tails, chat=chat, names=labels)
    n_real = enc.attention_mask.sum(1)
    empty = (~select_encoded(rule, enc).any(1)).nonzero().flatten()
    if len(empty):
        i = int(empty[0])
        no_completion = enc.prompt_len is None or bool(enc.prompt_len[i] == n_real[i])
        raise ValueError(
            f"read rule {str(rule)!r} selects no token of {labels[i]}"
            + (" (it has no completion tokens; standalone texts are all prompt: read them "
               "with 'last' or 'prompt')" if no_completion else "")
        )  # fmt: skip
    order = sorted(range(n), key=lambda i: -int(n_real[i]))  # longest first: less padding
    enc = enc.take(order)
    cap = capture(handle, enc, [s.name for s in site_list], positions=rule,
                  batch_size=batch_size)  # fmt: skip
    rows = torch.as_tensor(order)[cap.doc_ids]  # back to the caller's order
    count = torch.bincount(rows, minlength=n).double()
    d = cap.acts[site_list[0].name].shape[-1]
    acts = torch.zeros(n, len(site_list), d, dtype=torch.float64)
    norms = torch.zeros(n, len(site_list), dtype=torch.float64)
    for j, s in enumerate(site_list):
        a = cap.acts[s.name].double()
        acts[:, j].index_add_(0, rows, a)
        norms[:, j].index_add_(0, rows, torch.linalg.vector_norm(a, dim=-1))
    return Examples(acts / count[:, None, None], norms / count[:, None], count.long())


def read_pairs(
    handle: ModelHandle,
    pairs: Any,
    sites: str | Sequence[str],
    *,
    positions: str | Positions | None = None,
    chat: bool = False,
    batch_size: int = 16,
) -> PairActivations:
    """Read both sides of contrast pairs at ``sites`` (every layer in the same forward pass).

    Args:
        handle: the model.
        pairs: a :class:`~steerlab.steering.pairs.PairSet`, a JSONL path or a list of pairs.
        sites: site names of one kind.
        positions: the read rule; None picks the default (see :class:`VectorConfig`).
        chat: apply the chat template.
        batch_size: pairs per forward pass.
    """
    return _concat(_iter_pairs(handle, as_pairs(pairs), sites, positions, chat, batch_size))


def _default_rule(pairs: PairSet | LabelledSet) -> str:
    has_prompts = pairs.has_prompts if isinstance(pairs, PairSet) else pairs.prompts is not None
    return "generation" if has_prompts else "last"


def _iter_pairs(
    handle: ModelHandle, pairs: PairSet, sites: Any, positions: Any, chat: bool, batch_size: int
) -> Iterator[PairActivations]:
    rule = positions if positions is not None else _default_rule(pairs)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs.pairs[start : start + batch_size]
        texts = [p.positive for p in chunk] + [p.negative for p in chunk]
        prompts = None if chunk[0].prompt is None else [str(p.prompt) for p in chunk] * 2
        names = [f"pair {start + i} ({side})" for side in ("positive", "negative")
                 for i in range(len(chunk))]  # fmt: skip
        ex = read_examples(handle, texts, sites, prompts=prompts, positions=rule, chat=chat,
                           batch_size=2 * batch_size, names=names)  # fmt: skip
        k = len(chunk)
        yield PairActivations(ex.acts[:k], ex.acts[k:], ex.norms[:k], ex.norms[k:])


def _concat(parts: Iterator[PairActivations]) -> PairActivations:
    items = list(parts)
    return PairActivations(
        *(torch.cat([getattr(p, f) for p in items]) for f in PairActivations._fields)
    )


def _one_kind(sites: Any, n_layers: int | None) -> list:
    """Parse sites of one kind; bare layer numbers mean ``resid_post``."""
    if isinstance(sites, int):
        sites = [sites]
    if not isinstance(sites, str):
        sites = [f"resid_post.{s}" if isinstance(s, int) else s for s in sites]
    site_list = parse_sites(sites, n_layers)
    kinds = {s.kind for s in site_list}
    if len(kinds) != 1:
        raise SiteError(f"a steering vector lives at one site kind per layer, got {sorted(kinds)}")
    return site_list
