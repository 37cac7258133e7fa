"""Syntax trees for the AST-Probe: binarisation, syntactic distances, tree rebuild and F1.

Implements the tree side of AST-Probe (Hernández López, Weyssow, Sánchez Cuadrado and Sahraoui,
"AST-Probe: Recovering abstract syntax trees from hidden representations of pre-trained
language models", ASE 2022; reference code martin-wey/ast-probe, ``src/data/binary_tree.py``):

1. :func:`binarize` turns an n-ary AST (:class:`Tree`) into a full binary tree
   (:class:`BinaryTree`):

   - a node with a single non-terminal child is merged with it, labels joined by
     :data:`SEPARATOR` (``module<sep>function_definition``);
   - a node with a single terminal child disappears into that leaf, whose *unary label* ``u``
     becomes the node's label (``pass`` gets ``u = pass_statement``);
   - a node with ``k > 2`` children keeps its first child and gets a right-branching chain of
     :data:`EMPTY` nodes over the others: ``A(c0, c1, c2, c3)`` → ``A(c0, ∅(c1, ∅(c2, c3)))``
     (the reference's order).

2. :func:`tree_to_targets` reads the probe's targets off the binary tree. For leaves
   ``w_0 … w_n`` (leaves have height 0, a node ``1 + max`` of its children's heights):

   - ``d_i`` (``i = 1 … n``) is the height of the lowest common ancestor (LCA) of
     ``w_{i-1}`` and ``w_i``, the *syntactic distance*;
   - ``c_i`` is the label of that LCA;
   - ``u_i`` is the unary label of leaf ``w_i`` (:data:`EMPTY` when it has none).

   Only the ranking of ``d`` matters: :func:`targets_to_tree` splits the leaves recursively at
   the largest ``d`` (the first one on ties, like ``numpy.argmax`` in the reference; after
   Shen et al., ACL 2018) and labels each split with ``c``, which rebuilds the binary tree
   exactly from gold targets.

3. :func:`debinarize` undoes step 1 (splices :data:`EMPTY` nodes into their parent, expands
   joined labels into chains, puts each unary label back above its leaf), so
   ``debinarize(binarize(t)) == t``.

4. :func:`labelled_f1` scores a rebuilt tree against the gold tree over labelled constituents
   (:func:`constituents`), as in the paper: every non-leaf node counts as a ``(label, span)``,
   the root and single-leaf (unary) nodes included; nothing is excluded as trivial, since the
   reference counts them all.

All traversals are iterative, so deep trees (long right-branching chains) never hit Python's
recursion limit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:  # annotations only: the tree code itself is plain Python
    import numpy as np
    from torch import Tensor

__all__ = [
    "EMPTY",
    "SEPARATOR",
    "BinaryTree",
    "F1Score",
    "Targets",
    "Tree",
    "binarize",
    "constituents",
    "debinarize",
    "labelled_f1",
    "targets_to_tree",
    "tree_to_targets",
]

SEPARATOR = "<sep>"
"""Joins the labels of a merged chain of single-child non-terminals (as in the reference)."""

EMPTY = "<empty>"
"""Label of the nodes added by binarisation, and the unary label of a leaf that has none."""

N = TypeVar("N")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Tree:
    """An n-ary (ordered, labelled) tree: an AST after cleaning.

    A node without children is a *terminal* (a leaf); its label is the token's node type
    (``identifier``, ``def``, ``string`` ...). Leaves are numbered left to right from 0.
    """

    label: str
    children: tuple[Tree, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.children, tuple):
            object.__setattr__(self, "children", tuple(self.children))

    @property
    def is_leaf(self) -> bool:
        """True for a terminal (no children)."""
        return not self.children

    def leaves(self) -> list[str]:
        """The leaf labels, left to right."""
        return [n.label for n in _preorder(self) if not n.children]

    def __str__(self) -> str:
        return _sexpr(self, lambda t: t.label)


@dataclass(frozen=True, slots=True)
class BinaryTree:
    """A full binary tree produced by :func:`binarize` or :func:`targets_to_tree`.

    Internal nodes have exactly two children and a label, possibly a :data:`SEPARATOR`-joined
    chain or :data:`EMPTY`. Leaves carry the terminal's label and its unary label ``unary``
    (:data:`EMPTY` when none). Leaves are numbered left to right from 0.
    """

    label: str
    children: tuple[BinaryTree, ...] = ()
    unary: str = EMPTY

    def __post_init__(self) -> None:
        if not isinstance(self.children, tuple):
            object.__setattr__(self, "children", tuple(self.children))
        if len(self.children) not in (0, 2):
            raise ValueError(f"a BinaryTree node has 0 or 2 children, got {len(self.children)}")
        if self.children and self.unary != EMPTY:
            raise ValueError("only leaves carry a unary label")

    @property
    def is_leaf(self) -> bool:
        """True for a leaf (no children)."""
        return not self.children

    def leaves(self) -> list[str]:
        """The leaf labels, left to right."""
        return [n.label for n in _preorder(self) if not n.children]

    def __str__(self) -> str:
        return _sexpr(self, lambda t: t.label if t.unary == EMPTY else f"{t.label}^{t.unary}")


class Targets(NamedTuple):
    """The probe's targets for one snippet with ``n + 1`` leaves (see :func:`tree_to_targets`)."""

    leaves: list[str]
    """Leaf labels ``w_0 … w_n``."""
    d: list[int]
    """``n`` syntactic distances: height of the LCA of leaves ``i`` and ``i + 1``."""
    c: list[str]
    """``n`` labels of those LCAs."""
    u: list[str]
    """``n + 1`` unary labels, :data:`EMPTY` where a leaf has none."""


class F1Score(NamedTuple):
    """Labelled-constituent precision, recall and F1 (see :func:`labelled_f1`)."""

    precision: float
    recall: float
    f1: float


# --------------------------------------------------------------------------- traversals


def _preorder(root: Any) -> list[Any]:
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def _fold(root: N, children: Callable[[N], Sequence[N]], combine: Callable[[N, list[R]], R]) -> R:
    """Bottom-up evaluation without recursion: ``combine(node, [value of each child])``."""
    values: list[R] = []
    stack: list[tuple[N, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        kids = children(node)
        if expanded or not kids:
            k = len(kids)
            args = values[len(values) - k :] if k else []
            if k:
                del values[len(values) - k :]
            values.append(combine(node, args))
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(kids))
    return values[0]


def _sexpr(root: Any, name: Callable[[Any], str]) -> str:
    parts: list[str] = []
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            parts.append(node)
        elif not node.children:
            parts.append(name(node))
        else:
            parts.append(f"({name(node)}")
            stack.append(")")
            for child in reversed(node.children):
                stack.extend([child, " "])
    return "".join(parts)


def _check_internal_label(label: str) -> None:
    if not label or label == EMPTY or SEPARATOR in label:
        raise ValueError(
            f"non-terminal label {label!r} is empty, equals {EMPTY!r} or contains "
            f"{SEPARATOR!r}; binarisation could not be undone"
        )


# --------------------------------------------------------------------------- binarisation


def binarize(tree: Tree) -> BinaryTree:
    """Binarise an AST as AST-Probe does (Hernández López et al., ASE 2022, Sec. III-A).

    Chains of single non-terminal children merge into one node (labels joined by
    :data:`SEPARATOR`); a non-terminal whose single child is a terminal becomes that leaf's
    unary label; a node with ``k > 2`` children ``c0 … c_{k-1}`` becomes
    ``label(c0, ∅(c1, ∅(c2, … ∅(c_{k-2}, c_{k-1}))))`` with :data:`EMPTY` nodes ``∅``.

    Args:
        tree: the AST. Non-terminal labels must be non-empty, differ from :data:`EMPTY` and not
            contain :data:`SEPARATOR`.

    Returns:
        The binary tree, with the same leaves in the same order.

    Raises:
        ValueError: a non-terminal label that would make the transformation irreversible.
    """

    def combine(node: Tree, kids: list[BinaryTree]) -> BinaryTree:
        if not kids:
            return BinaryTree(node.label)
        _check_internal_label(node.label)
        if len(kids) == 1:
            (kid,) = kids
            if kid.is_leaf:  # the child was a terminal, or a chain that ended in one
                unary = node.label if kid.unary == EMPTY else node.label + SEPARATOR + kid.unary
                return BinaryTree(kid.label, unary=unary)
            return BinaryTree(node.label + SEPARATOR + kid.label, kid.children)
        rest = kids[-1]
        for kid in reversed(kids[1:-1]):
            rest = BinaryTree(EMPTY, (kid, rest))
        return BinaryTree(node.label, (kids[0], rest))

    return _fold(tree, lambda t: t.children, combine)


def debinarize(tree: BinaryTree) -> Tree:
    """Undo :func:`binarize`: ``debinarize(binarize(t)) == t`` for every valid AST ``t``.

    :data:`EMPTY` internal nodes are spliced into their parent, a joined label
    ``A<sep>B`` becomes the chain ``A → B``, and a leaf's unary label is put back as a chain of
    single-child nodes above it. Applied to a predicted tree (from :func:`targets_to_tree`)
    this is the reference's ``remove_empty_nodes`` → ``add_unary`` → ``extend_complex_nodes``.
    An :data:`EMPTY` root has no parent to splice into; it stays as a node labelled
    :data:`EMPTY` (the reference's ``bad_root``), a constituent that never matches gold.

    Returns:
        The n-ary tree.
    """

    def chain(labels: str, inner: tuple[Tree, ...]) -> Tree:
        names = labels.split(SEPARATOR)
        node = Tree(names[-1], inner)
        for name in reversed(names[:-1]):
            node = Tree(name, (node,))
        return node

    def combine(node: BinaryTree, kids: list[list[Tree]]) -> list[Tree]:
        if not kids:
            leaf = Tree(node.label)
            return [leaf if node.unary == EMPTY else chain(node.unary, (leaf,))]
        spliced = tuple(t for k in kids for t in k)
        if node.label == EMPTY:
            return list(spliced)
        return [chain(node.label, spliced)]

    out = _fold(tree, lambda t: t.children, combine)
    return out[0] if len(out) == 1 else Tree(EMPTY, tuple(out))


# --------------------------------------------------------------------------- targets


def tree_to_targets(tree: BinaryTree) -> Targets:
    """Syntactic distances and labels of a binary tree (AST-Probe, Sec. III-B).

    With leaves at height 0 and each internal node at ``1 + max(heights of its children)``:
    ``d_i`` is the height of the LCA of leaves ``i - 1`` and ``i``, ``c_i`` its label and
    ``u_i`` the unary label of leaf ``i``. In-order, the internal nodes of a full binary tree
    alternate with its leaves, so node ``i`` of the in-order sequence is exactly that LCA.

    Returns:
        :class:`Targets` with ``len(d) == len(c) == len(leaves) - 1`` and
        ``len(u) == len(leaves)``.
    """

    def combine(node: BinaryTree, kids: list[tuple]) -> tuple:
        if not kids:
            return [node.label], [], [], [node.unary], 0
        (wl, dl, cl, ul, hl), (wr, dr, cr, ur, hr) = kids
        h = max(hl, hr) + 1
        return wl + wr, dl + [h] + dr, cl + [node.label] + cr, ul + ur, h

    leaves, d, c, u, _ = _fold(tree, lambda t: t.children, combine)
    return Targets(leaves, d, c, u)


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def targets_to_tree(
    leaves: Sequence[str],
    d: Sequence[float] | np.ndarray | Tensor,
    c: Sequence[str],
    u: Sequence[str],
) -> BinaryTree:
    """Rebuild a binary tree from (predicted or gold) distances and labels.

    Splits the leaves recursively at the largest ``d_i`` (the first on ties), labels the split
    node with ``c_i`` and each leaf with its unary label ``u_i``: the reference's
    ``distance_to_tree`` (after Shen et al., ACL 2018). The recursion is the max-Cartesian tree
    of ``d``, built here in O(n) with a stack. For gold targets the result equals the tree that
    :func:`tree_to_targets` read them from.

    Args:
        leaves: ``n + 1`` leaf labels.
        d: ``n`` distances (any real numbers; a list, array or tensor); only their order matters.
        c: ``n`` node labels.
        u: ``n + 1`` unary labels (:data:`EMPTY` for none).

    Raises:
        ValueError: no leaves, inconsistent lengths, or NaN distances.
    """
    leaves, d, c, u = (_as_list(x) for x in (leaves, d, c, u))
    n = len(leaves)
    if n == 0:
        raise ValueError("a tree needs at least one leaf; got an empty snippet")
    if not (len(d) == len(c) == n - 1 and len(u) == n):
        raise ValueError(
            f"for {n} leaves expected {n - 1} distances and labels and {n} unary labels; got "
            f"len(d)={len(d)}, len(c)={len(c)}, len(u)={len(u)}"
        )
    d = [float(x) for x in d]
    if any(math.isnan(x) for x in d):
        raise ValueError("distances contain NaN")
    left, right = [-1] * (n - 1), [-1] * (n - 1)
    stack: list[int] = []
    for i, di in enumerate(d):
        last = -1
        while stack and d[stack[-1]] < di:  # strict: an earlier equal d stays the ancestor
            last = stack.pop()
        left[i] = last
        if stack:
            right[stack[-1]] = i
        stack.append(i)
    if not stack:
        return BinaryTree(leaves[0], unary=u[0])

    def children(node: tuple[bool, int]) -> tuple:
        internal, i = node
        if not internal:
            return ()
        return (
            (True, left[i]) if left[i] >= 0 else (False, i),
            (True, right[i]) if right[i] >= 0 else (False, i + 1),
        )

    def combine(node: tuple[bool, int], kids: list[BinaryTree]) -> BinaryTree:
        internal, i = node
        return BinaryTree(c[i], tuple(kids)) if internal else BinaryTree(leaves[i], unary=u[i])

    return _fold((True, stack[0]), children, combine)


# --------------------------------------------------------------------------- metric


def constituents(tree: Tree) -> Counter[tuple[str, int, int]]:
    """The labelled constituents of an n-ary tree: one ``(label, start, end)`` per non-leaf.

    ``start:end`` is the node's span of leaf indices (end exclusive). As in AST-Probe's
    ``get_multiset_ast``, every non-terminal counts: the root and nodes over a single leaf
    (unary labels, chain members) included; leaves do not. The result is a multiset, so two
    nodes with the same label over the same span count twice.
    """
    spans: Counter[tuple[str, int, int]] = Counter()
    n_leaves = 0
    stack: list[tuple[Tree, int | None]] = [(tree, None)]
    while stack:
        node, start = stack.pop()
        if start is not None:
            spans[(node.label, start, n_leaves)] += 1
        elif not node.children:
            n_leaves += 1
        else:
            stack.append((node, n_leaves))
            stack.extend((child, None) for child in reversed(node.children))
    return spans


def labelled_f1(
    pred: Tree | Counter[tuple[str, int, int]], gold: Tree | Counter[tuple[str, int, int]]
) -> F1Score:
    """Precision, recall and F1 over labelled constituents (AST-Probe, Sec. III-C).

    ``precision = |P ∩ G| / |P|``, ``recall = |P ∩ G| / |G|``, ``F1`` their harmonic mean,
    with ``P`` and ``G`` the multisets of :func:`constituents` of the predicted and gold
    (debinarised) trees. The reference counts predicted constituents that are ``in`` the gold
    list; the multiset intersection used here differs only when a gold ``(label, span)``
    repeats. The paper averages the scores per snippet.

    Args:
        pred: predicted tree (or its constituents).
        gold: gold tree (or its constituents).

    Returns:
        :class:`F1Score`; both sets empty (single-leaf trees) gives 1, one empty gives 0.
    """
    P = pred if isinstance(pred, Counter) else constituents(pred)
    G = gold if isinstance(gold, Counter) else constituents(gold)
    n_pred, n_gold = sum(P.values()), sum(G.values())
    if n_pred == 0 and n_gold == 0:
        return F1Score(1.0, 1.0, 1.0)
    if n_pred == 0 or n_gold == 0:
        return F1Score(0.0, 0.0, 0.0)
    matched = sum((P & G).values())
    precision, recall = matched / n_pred, matched / n_gold
    f1 = 2 * precision * recall / (precision + recall) if matched else 0.0
    return F1Score(precision, recall, f1)
