"""AST-Probe: syntactic distances and labels of a code AST from leaf vectors.

Hernández López, Weyssow, Sánchez Cuadrado, Sahraoui, "AST-Probe: Recovering abstract syntax
trees from hidden representations of pre-trained language models", ASE 2022 (reference code:
martin-wey/ast-probe, ``src/probe``). For a snippet with leaf vectors ``h_0 … h_n``
(:mod:`steerlab.probes.ast.features`), a projection ``B`` (``d_model × rank``) predicts

    ``d̂_i = ‖Bᵀ z_i − Bᵀ z_{i−1}‖²``            (syntactic distance, i = 1 … n)
    ``ĉ_i = argmax (Bᵀ z_i − Bᵀ z_{i−1}) C``     (label of the lowest common ancestor)
    ``û_i = argmax (Bᵀ z_i) U``                  (unary label of leaf i)

with ``z = (h − μ) ⊙ s`` a fixed per-dimension rescaling fitted on the training leaves
(:attr:`AstProbeConfig.normalize`; by default ``μ = 0`` and ``s = 1/σ``). The reference reads
RoBERTa's LayerNorm-ed outputs; a decoder's residual stream has dimensions whose scale differs
by 10⁴ (massive activations), and the orthogonality penalty fixes the scale of ``B``, so the
rescaling matters. The mean is kept because the probe has no bias: ``Bᵀz U`` learns the unary
labels' prior only through it. Training minimises

    ``L = rank(d̂, d) + CE(ĉ, c) + CE(û, u) + λ ‖BᵀB − I‖²_F``

with the pairwise hinge ``rank = mean over pairs with d_i > d_j of relu(1 − (d̂_i − d̂_j))``
(the reference's ``rankloss``), Adam, ``ReduceLROnPlateau`` and early stopping on the dev loss.
The tree is rebuilt by splitting at the largest ``d̂`` (:func:`~steerlab.probes.ast.trees.
targets_to_tree`), debinarised and scored by labelled-constituent F1 against the gold AST.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.config import check_fraction, check_nonnegative, check_positive, check_types
from steerlab.probes.ast.artifact import AstProbe, AstProbeOutput, _batch_x, _forward
from steerlab.probes.ast.data import AstSnippet
from steerlab.probes.ast.evaluate import AstEval, evaluate_ast_probe, predict_trees
from steerlab.probes.ast.trees import (
    Targets,
    Tree,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AstEval",
    "AstFit",
    "AstProbe",
    "AstProbeConfig",
    "AstProbeOutput",
    "LossParts",
    "ProbeData",
    "ast_probe_loss",
    "evaluate_ast_probe",
    "fit_ast_probe",
    "predict_trees",
    "split_data",
]


@dataclass
class AstProbeConfig:
    """Hyperparameters of the AST-Probe.

    Defaults are the reference's (``src/main.py``: rank 128, λ = 5, Adam 1e-3, batch 32,
    20 epochs, patience 5, ``ReduceLROnPlateau`` ×0.1 with patience 0), except ``normalize``
    (the reference uses raw encoder outputs). Those settings assume ~600 steps per epoch
    (20k snippets); with a few hundred snippets raise ``lr`` and ``lr_patience``.
    """

    rank: int = 128
    """Columns of ``B``: the dimension of the syntactic subspace."""
    orth_lambda: float = 5.0
    """Weight λ of the orthogonality penalty ``‖BᵀB − I‖²_F``."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 32
    """Snippets per step."""
    max_epochs: int = 20
    """Most passes over the training snippets."""
    patience: int = 5
    """Stop after this many epochs without a lower dev loss (the best epoch is kept)."""
    lr_factor: float = 0.1
    """``ReduceLROnPlateau`` factor, applied when the dev loss does not improve."""
    lr_patience: int = 0
    """``ReduceLROnPlateau`` patience in epochs."""
    init_range: float = 0.05
    """``B``, ``C`` and ``U`` start uniform in ``[-init_range, init_range]``."""
    normalize: Literal["scale", "standardize", "center", "none"] = "scale"
    """Leaf vectors ``z = h / σ`` per dimension, ``(h − μ) / σ``, ``h − μ`` or ``h`` (training
    statistics). The probe has no bias terms, so the label scores ``Bᵀz U`` learn class priors
    only through a non-zero mean of ``z``: centring (``standardize``, ``center``) removes it."""
    seed: int = 0
    """Seed of the initialisation and the batch order."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "rank", "lr", "batch_size", "max_epochs", "patience", "init_range")
        check_nonnegative(self, "orth_lambda", "lr_patience", "seed")
        check_fraction(self, "lr_factor", high=True)


# --------------------------------------------------------------------------- data


class ProbeData(NamedTuple):
    """Leaf vectors of some snippets with their gold targets and trees, padded for batching."""

    x: Float[Tensor, "leaf d_model"]
    """Leaf vectors of all snippets, concatenated (any float dtype)."""
    index: Int[Tensor, "snippet max_leaves"]
    """Row of ``x`` of each snippet's leaf ``j``; ``-1`` past its last leaf."""
    targets: list[Targets]
    """Gold targets of each snippet."""
    trees: list[Tree]
    """Gold (n-ary) AST of each snippet."""
    n_skipped: int = 0
    """Snippets left out because they have no leaves."""

    @property
    def n_leaves(self) -> Int[Tensor, " snippet"]:
        return (self.index >= 0).sum(1)

    @classmethod
    def from_features(
        cls,
        x: Float[Tensor, "leaf d_model"],
        offsets: Int[Tensor, " n_plus_1"],
        snippets: Sequence[AstSnippet],
        indices: Sequence[int] | None = None,
    ) -> ProbeData:
        """Select ``snippets`` (rows ``indices`` of the features, default ``0 … n−1``).

        Args:
            x: one site of :class:`~steerlab.probes.ast.features.LeafFeatures`.
            offsets: its ``offsets``.
            snippets: the snippets, for targets and gold trees.
            indices: position of each snippet in the captured list.
        """
        indices = list(range(len(snippets))) if indices is None else list(indices)
        if len(indices) != len(snippets):
            raise ValueError(f"{len(snippets)} snippets but {len(indices)} indices")
        keep, spans = [], []
        for s, i in zip(snippets, indices, strict=True):
            a, b = int(offsets[i]), int(offsets[i + 1])
            if b - a != len(s.leaf_spans):
                raise ValueError(
                    f"snippet {i} ({s.name}) has {len(s.leaf_spans)} leaves but "
                    f"the features hold {b - a}: features of other snippets?"
                )
            if b > a:
                keep.append(s)
                spans.append((a, b))
        if not keep:
            raise ValueError("no snippet with leaves to probe")
        width = max(b - a for a, b in spans)
        index = torch.full((len(keep), width), -1, dtype=torch.long)
        for k, (a, b) in enumerate(spans):
            index[k, : b - a] = torch.arange(a, b)
        skipped = len(snippets) - len(keep)
        if skipped:
            logger.warning("%d snippets without leaves were skipped", skipped)
        return cls(x, index, [s.targets() for s in keep], [s.tree for s in keep], skipped)


def split_data(
    features: Any, site: str, splits: dict[str, Sequence[AstSnippet]]
) -> dict[str, ProbeData]:
    """:class:`ProbeData` per split, for features captured over the splits concatenated in order.

    ``splits`` maps names to snippet lists (e.g. ``{"train": ds.train, "dev": ds.dev}``) in the
    order they were passed to :func:`~steerlab.probes.ast.features.capture_leaf_features`.
    """
    out, start = {}, 0
    x = features[site].float()  # once, shared by the splits (float16 on disk)
    for name, snippets in splits.items():
        idx = range(start, start + len(snippets))
        out[name] = ProbeData.from_features(x, features.offsets, snippets, idx)
        start += len(snippets)
    if start != features.n_snippets:
        raise ValueError(f"splits hold {start} snippets, the features {features.n_snippets}")
    return out


class _Encoded(NamedTuple):
    d: Tensor  # [snippet, max_leaves-1] float, padded 0
    c: Tensor  # [snippet, max_leaves-1] long, -1 padding or unknown label
    u: Tensor  # [snippet, max_leaves] long, -1 padding or unknown label


def _encode(data: ProbeData, c_ids: dict[str, int], u_ids: dict[str, int]) -> _Encoded:
    n, w = data.index.shape
    d = torch.zeros(n, max(w - 1, 0))
    c = torch.full((n, max(w - 1, 0)), -1, dtype=torch.long)
    u = torch.full((n, w), -1, dtype=torch.long)
    for k, t in enumerate(data.targets):
        m = len(t.d)
        d[k, :m] = torch.tensor(t.d, dtype=torch.float32)
        c[k, :m] = torch.tensor([c_ids.get(x, -1) for x in t.c], dtype=torch.long)
        u[k, : m + 1] = torch.tensor([u_ids.get(x, -1) for x in t.u], dtype=torch.long)
    return _Encoded(d, c, u)


# --------------------------------------------------------------------------- loss


class LossParts(NamedTuple):
    """The three data terms of the AST-Probe loss (the orthogonality penalty is separate)."""

    rank: Tensor
    """Pairwise hinge on distances, averaged over ordered pairs with ``d_i > d_j``."""
    c: Tensor
    """Cross-entropy of the LCA labels (unknown labels ignored)."""
    u: Tensor
    """Cross-entropy of the unary labels."""

    @property
    def total(self) -> Tensor:
        return self.rank + self.c + self.u


def _ce(scores: Tensor, target: Tensor) -> Tensor:
    if not bool((target >= 0).any()):  # nothing to score; F.cross_entropy would give 0/0
        return scores.sum() * 0.0
    return F.cross_entropy(
        scores.reshape(-1, scores.shape[-1]), target.reshape(-1), ignore_index=-1
    )


def ast_probe_loss(
    out: AstProbeOutput,
    d: Float[Tensor, "b leaf_minus_1"],
    c: Int[Tensor, "b leaf_minus_1"],
    u: Int[Tensor, "b leaf"],
    n_leaves: Int[Tensor, " b"],
) -> LossParts:
    """The AST-Probe loss of a padded batch (martin-wey/ast-probe ``src/probe/loss.py``).

    ``rank = Σ_{b,i,j: d_bi > d_bj} relu(1 − (d̂_bi − d̂_bj)) / #pairs`` over the pairs inside
    each snippet (only the order of the gold distances matters); ``c`` and ``u`` are the mean
    cross-entropies over real positions (label ``-1`` is ignored).
    """
    m = d.shape[1]
    valid = torch.arange(m, device=d.device)[None] < (n_leaves - 1)[:, None]
    pairs = valid[:, :, None] & valid[:, None, :] & (d[:, :, None] > d[:, None, :])
    hinge = torch.relu(1.0 - (out.d[:, :, None] - out.d[:, None, :]))
    rank = (hinge * pairs).sum() / pairs.sum().clamp_min(1)
    return LossParts(rank, _ce(out.c_scores, c), _ce(out.u_scores, u))


def _orth_penalty(B: Tensor) -> Tensor:
    eye = torch.eye(B.shape[1], dtype=B.dtype, device=B.device)
    return (B.T @ B - eye).pow(2).sum()


# --------------------------------------------------------------------------- training


class AstFit(NamedTuple):
    """The result of :func:`fit_ast_probe`."""

    probe: AstProbe
    """The probe of the epoch with the lowest dev loss."""
    history: list[dict[str, float]]
    """Per epoch: ``epoch``, ``train_loss``, ``dev_loss`` (data terms only), ``orth``, ``lr``."""
    best_epoch: int
    """Epoch (1-based) whose weights were kept."""


def _stats(x: Tensor, index: Tensor, how: str) -> tuple[Tensor, Tensor]:
    rows = index[index >= 0]
    d = x.shape[1]
    if how == "none":
        return torch.zeros(d), torch.ones(d)
    # float64 accumulation: residual-stream entries reach 1e4 and leaf counts 1e5
    mean = torch.zeros(d, dtype=torch.float64)
    sq = torch.zeros(d, dtype=torch.float64)
    for chunk in rows.split(16384):
        xc = x[chunk].double()
        mean += xc.sum(0)
        sq += xc.pow(2).sum(0)
    n = len(rows)
    mean /= n
    if how == "center":
        return mean.float(), torch.ones(d)
    var = (sq / n - mean.pow(2)).clamp_min(0.0)
    std = var.sqrt()
    # a (near-)constant dimension carries no signal; leave it unscaled rather than blow it up
    floor = float(std.max()) * torch.finfo(torch.float32).eps * d
    scale = torch.where(std > floor, 1.0 / std, torch.ones_like(std))
    if how == "scale":
        return torch.zeros(d), scale.float()
    return mean.float(), scale.float()


def _bucketed_batches(n_leaves: Tensor, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    """Random batches of snippets of similar length (less padding, same expected gradient).

    A random permutation is cut into pools of ``8 · batch_size``; each pool is sorted by length
    and cut into batches, and the batches are shuffled.
    """
    order = torch.randperm(len(n_leaves), generator=gen)
    batches = []
    for pool in order.split(8 * batch_size):
        pool = pool[torch.argsort(n_leaves[pool], stable=True)]
        batches += list(pool.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _loss_over(
    data: ProbeData,
    enc: _Encoded,
    params: tuple[Tensor, ...],
    mean: Tensor,
    scale: Tensor,
    batch_size: int,
) -> float:
    B, C, U = params
    total, n = 0.0, 0
    with torch.no_grad():
        for rows in torch.argsort(data.n_leaves).split(batch_size):
            z = _batch_x(data.x, data.index[rows], mean, scale)
            w = z.shape[1]
            out = _forward(z, B, C, U)
            parts = ast_probe_loss(
                out,
                enc.d[rows, : w - 1],
                enc.c[rows, : w - 1],
                enc.u[rows, :w],
                data.n_leaves[rows],
            )
            total += float(parts.total) * len(rows)
            n += len(rows)
    return total / n


def fit_ast_probe(
    train: ProbeData,
    dev: ProbeData,
    config: AstProbeConfig | None = None,
    *,
    meta: dict[str, Any] | None = None,
) -> AstFit:
    """Train an AST-Probe with early stopping on the dev loss.

    Label vocabularies are those of the training targets; a dev/test label never seen in
    training is ignored by the loss and can never be predicted.

    Args:
        train: training snippets (:class:`ProbeData`).
        dev: held-out snippets for early stopping and the learning-rate schedule.
        config: hyperparameters (default :class:`AstProbeConfig`).
        meta: extra JSON-serialisable info stored in the probe (site, model id, ...).

    Raises:
        ValueError: ``rank > d_model``, or widths that differ between splits.
    """
    cfg = config or AstProbeConfig()
    d_model = train.x.shape[1]
    if dev.x.shape[1] != d_model:
        raise ValueError(f"train has d_model={d_model}, dev {dev.x.shape[1]}")
    if cfg.rank > d_model:
        raise ValueError(
            f"rank {cfg.rank} exceeds d_model {d_model}: BᵀB = I is impossible; "
            f"choose rank <= {d_model}"
        )
    c_labels = tuple(sorted({x for t in train.targets for x in t.c}))
    u_labels = tuple(sorted({x for t in train.targets for x in t.u}))
    if not c_labels:
        raise ValueError("no training snippet has two leaves; nothing to learn distances from")
    c_ids = {x: i for i, x in enumerate(c_labels)}
    u_ids = {x: i for i, x in enumerate(u_labels)}
    enc_tr, enc_dev = _encode(train, c_ids, u_ids), _encode(dev, c_ids, u_ids)
    mean, scale = _stats(train.x, train.index, cfg.normalize)

    gen = torch.Generator().manual_seed(cfg.seed)
    a = cfg.init_range

    def init(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=gen) * 2 * a - a).requires_grad_(True)

    params = (init(d_model, cfg.rank), init(cfg.rank, len(c_labels)), init(cfg.rank, len(u_labels)))
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    best, best_epoch, bad = math.inf, 0, 0
    best_params = tuple(p.detach().clone() for p in params)
    history: list[dict[str, float]] = []
    n_leaves = train.n_leaves
    for epoch in range(1, cfg.max_epochs + 1):
        run, n = 0.0, 0
        for rows in _bucketed_batches(n_leaves, cfg.batch_size, gen):
            z = _batch_x(train.x, train.index[rows], mean, scale)
            w = z.shape[1]
            out = _forward(z, *params)
            parts = ast_probe_loss(
                out,
                enc_tr.d[rows, : w - 1],
                enc_tr.c[rows, : w - 1],
                enc_tr.u[rows, :w],
                n_leaves[rows],
            )
            loss = parts.total + cfg.orth_lambda * _orth_penalty(params[0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += float(loss.detach()) * len(rows)
            n += len(rows)
        dev_loss = _loss_over(dev, enc_dev, params, mean, scale, 4 * cfg.batch_size)
        sched.step(dev_loss)
        orth = float(_orth_penalty(params[0].detach()))
        history.append(
            {
                "epoch": epoch,
                "train_loss": run / n,
                "dev_loss": dev_loss,
                "orth": orth,
                "lr": opt.param_groups[0]["lr"],
            }
        )
        logger.debug("epoch %d: train %.4f dev %.4f orth %.4f", epoch, run / n, dev_loss, orth)
        if dev_loss < best:
            best, best_epoch, bad = dev_loss, epoch, 0
            best_params = tuple(p.detach().clone() for p in params)
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    info = {
        "config": asdict(cfg),
        "best_epoch": best_epoch,
        "best_dev_loss": best,
        "history": history,
        **copy.deepcopy(meta or {}),
    }
    B, C, U = best_params
    probe = AstProbe(B, C, U, mean, scale, c_labels, u_labels, info)
    return AstFit(probe, history, best_epoch)
