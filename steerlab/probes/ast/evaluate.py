"""Scoring an AST-Probe: rebuild each snippet's tree from the predicted distances and labels,
and compare it with the gold AST by labelled-constituent F1 (Hernández López et al., ASE 2022,
averaged over snippets as in the paper).

Re-exported by :mod:`steerlab.probes.ast.probe`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from steerlab.probes.ast.artifact import AstProbe, _batch_x, _forward
from steerlab.probes.ast.trees import F1Score, Tree, debinarize, labelled_f1, targets_to_tree

if TYPE_CHECKING:  # probe.py imports this module
    from steerlab.probes.ast.probe import ProbeData


class AstEval(NamedTuple):
    """Held-out scores of a probe (means over snippets, as in the paper)."""

    precision: float
    recall: float
    f1: float
    per_snippet: list[F1Score]
    """Labelled-constituent scores of each snippet."""
    c_accuracy: float
    """Accuracy of the LCA labels ``ĉ`` over all adjacent-leaf pairs."""
    u_accuracy: float
    """Accuracy of the unary labels ``û`` over all leaves."""
    n_snippets: int


def _predict(
    probe: AstProbe, data: ProbeData, batch_size: int
) -> list[tuple[list[float], list[str], list[str]]]:
    out: dict[int, tuple[list[float], list[str], list[str]]] = {}
    n_leaves = data.n_leaves
    with torch.no_grad():
        for rows in torch.argsort(n_leaves).split(batch_size):
            z = _batch_x(data.x, data.index[rows], probe.mean, probe.scale)
            o = _forward(z.to(probe.B), probe.B, probe.C, probe.U)
            c_hat, u_hat = o.c_scores.argmax(-1), o.u_scores.argmax(-1)
            for k, r in enumerate(rows.tolist()):
                n = int(n_leaves[r])
                out[r] = (
                    o.d[k, : n - 1].tolist(),
                    [probe.c_labels[i] for i in c_hat[k, : n - 1].tolist()],
                    [probe.u_labels[i] for i in u_hat[k, :n].tolist()],
                )
    return [out[r] for r in range(len(n_leaves))]


def predict_trees(probe: AstProbe, data: ProbeData, batch_size: int = 64) -> list[Tree]:
    """The predicted (debinarised) tree of every snippet of ``data``."""
    return [
        debinarize(targets_to_tree(t.leaves, d, c, u))
        for t, (d, c, u) in zip(data.targets, _predict(probe, data, batch_size), strict=True)
    ]


def evaluate_ast_probe(probe: AstProbe, data: ProbeData, batch_size: int = 64) -> AstEval:
    """Rebuild each snippet's tree from the probe and score it against the gold AST.

    Per snippet: ``targets_to_tree(leaves, d̂, ĉ, û)`` → :func:`debinarize` →
    :func:`labelled_f1` against the gold tree; precision, recall and F1 are averaged over
    snippets (the paper's protocol).
    """
    scores: list[F1Score] = []
    hit_c = hit_u = n_c = n_u = 0
    for t, tree, (d, c, u) in zip(
        data.targets, data.trees, _predict(probe, data, batch_size), strict=True
    ):
        pred = debinarize(targets_to_tree(t.leaves, d, c, u))
        scores.append(labelled_f1(pred, tree))
        hit_c += sum(a == b for a, b in zip(c, t.c, strict=True))
        hit_u += sum(a == b for a, b in zip(u, t.u, strict=True))
        n_c += len(c)
        n_u += len(u)
    n = len(scores)
    return AstEval(
        precision=sum(s.precision for s in scores) / n,
        recall=sum(s.recall for s in scores) / n,
        f1=sum(s.f1 for s in scores) / n,
        per_snippet=scores,
        c_accuracy=hit_c / max(n_c, 1),
        u_accuracy=hit_u / max(n_u, 1),
        n_snippets=n,
    )
