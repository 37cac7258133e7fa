"""Tests for steerlab.probes.ast.trees: binarisation, targets, rebuild and labelled F1.

References: hand-built trees with hand-computed targets and scores, CPython-independent
round trips on real standard-library ASTs (tree-sitter), and hypothesis invariants. All
quantities are exact (integers, rationals of small integers), so comparisons are exact or use
pytest.approx at its default 1e-6 relative tolerance for ratios like 6/7.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.datasets.corpora import stdlib_dir
from steerlab.probes.ast.data import extract_snippets, load_ast_snippets
from steerlab.probes.ast.trees import (
    EMPTY,
    SEPARATOR,
    BinaryTree,
    Tree,
    binarize,
    constituents,
    debinarize,
    labelled_f1,
    targets_to_tree,
    tree_to_targets,
)

PROPS = settings(max_examples=100, deadline=None)

# Small, varied standard-library modules: classes, nested functions, decorators, f-strings.
STDLIB_MODULES = (
    "textwrap.py",
    "json/decoder.py",
    "shlex.py",
    "string.py",
    "difflib.py",
    "argparse.py",
    "ast.py",
)


@pytest.fixture(scope="module")
def stdlib_snippets():
    ds = load_ast_snippets(files=[stdlib_dir() / m for m in STDLIB_MODULES], max_leaves=512)
    return ds.train + ds.dev + ds.test


def T(label: str, *children: Tree | str) -> Tree:
    """Tree builder: strings are leaves."""
    return Tree(label, tuple(Tree(c) if isinstance(c, str) else c for c in children))


# --------------------------------------------------------------------------- hand examples


def test_binarize_rules_by_hand():
    t = T("A", "x", T("B", T("C", "y")), "z", "w")
    b = binarize(t)
    # B→C→y is a chain ending in a terminal: y's unary label is "B<sep>C"; A has 4 children,
    # so its last three hang on a right-branching chain of empty nodes.
    expected = BinaryTree(
        "A",
        (
            BinaryTree("x"),
            BinaryTree(
                EMPTY,
                (
                    BinaryTree("y", unary=f"B{SEPARATOR}C"),
                    BinaryTree(EMPTY, (BinaryTree("z"), BinaryTree("w"))),
                ),
            ),
        ),
    )
    assert b == expected
    assert tree_to_targets(b) == (
        ["x", "y", "z", "w"],
        [3, 2, 1],
        ["A", EMPTY, EMPTY],
        [EMPTY, f"B{SEPARATOR}C", EMPTY, EMPTY],
    )
    assert debinarize(b) == t


def test_single_nonterminal_chain_merges_labels():
    t = T("module", T("function_definition", "def", "f"))
    assert binarize(t) == BinaryTree(
        f"module{SEPARATOR}function_definition", (BinaryTree("def"), BinaryTree("f"))
    )


def test_targets_of_a_real_function_by_hand():
    (snippet,), _ = extract_snippets("def f(a, b):\n    return a\n")
    assert snippet.leaves == ["def", "f", "(", "a", ",", "b", ")", ":", "return", "a"]
    leaves, d, c, u = tree_to_targets(binarize(snippet.tree))
    assert leaves == ["def", "identifier", "(", "identifier", ",", "identifier", ")", ":"] + [
        "return",
        "identifier",
    ]
    # module+function_definition (5 children: def f params : block) is the root, height 7;
    # parameters "( a , b )" height 4; block+return_statement "return a" height 1.
    assert d == [7, 6, 4, 3, 2, 1, 5, 2, 1]
    assert c == [
        f"module{SEPARATOR}function_definition",
        EMPTY,
        "parameters",
        EMPTY,
        EMPTY,
        EMPTY,
        EMPTY,
        EMPTY,
        f"block{SEPARATOR}return_statement",
    ]
    assert u == [EMPTY] * 10


def test_unary_label_of_real_code():
    (snippet,), _ = extract_snippets("def f():\n    pass\n")
    _, _, _, u = tree_to_targets(binarize(snippet.tree))
    assert u[-1] == f"block{SEPARATOR}pass_statement"


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        # gold S[0,5] NP[0,2] VP[2,5] NP[3,5]; pred misses NP[3,5]: P = 3/3, R = 3/4, F1 = 6/7.
        (
            T("S", T("NP", "a", "b"), T("VP", "c", "d", "e")),
            T("S", T("NP", "a", "b"), T("VP", "c", T("NP", "d", "e"))),
            (1.0, 3 / 4, 6 / 7),
        ),
        # right span, wrong label: S matches, A vs B does not: P = R = F1 = 1/2.
        (T("S", T("B", "x", "y"), "z"), T("S", T("A", "x", "y"), "z"), (0.5, 0.5, 0.5)),
        # gold S[0,3] A[0,1] B[1,3]; pred S[0,3] B[0,2] A[0,1]: 2 of 3 each way, F1 = 2/3.
        (
            T("S", T("B", T("A", "x"), "y"), "z"),
            T("S", T("A", "x"), T("B", "y", "z")),
            (2 / 3,) * 3,
        ),
        # a repeated gold constituent A[0,1] x2 is matched once (multiset): P = 1, R = 1/2.
        (T("A", "x"), T("A", T("A", "x")), (1.0, 0.5, 2 / 3)),
        # an empty root (rebuilt from a wrong label) never matches: all 0.
        (
            debinarize(BinaryTree(EMPTY, (BinaryTree("x"), BinaryTree("y")))),
            T("S", "x", "y"),
            (0, 0, 0),
        ),
    ],
)
def test_labelled_f1_hand_computed(pred, gold, expected):
    assert tuple(labelled_f1(pred, gold)) == pytest.approx(expected)


def test_constituents_count_root_and_unary_nodes():
    t = T("S", T("A", "x"), T("B", "y", "z"))
    assert constituents(t) == Counter({("S", 0, 3): 1, ("A", 0, 1): 1, ("B", 1, 3): 1})
    assert labelled_f1(Tree("x"), Tree("y")) == (1.0, 1.0, 1.0)  # no constituents on either side


def test_rebuild_breaks_ties_leftmost_like_argmax():
    # d = [1, 1]: the first maximum is the root, so the tree is right-branching.
    b = targets_to_tree(["x", "y", "z"], [1, 1], ["P", "Q"], [EMPTY] * 3)
    assert b == BinaryTree(
        "P", (BinaryTree("x"), BinaryTree("Q", (BinaryTree("y"), BinaryTree("z"))))
    )
    assert targets_to_tree(["x"], [], [], ["U"]) == BinaryTree("x", unary="U")


def test_rebuild_accepts_tensors_and_deep_chains():
    n = 3000  # deeper than Python's recursion limit: every traversal is iterative
    d = torch.arange(n - 1, 0, -1, dtype=torch.float32)
    b = targets_to_tree([f"w{i}" for i in range(n)], d, ["L"] * (n - 1), [EMPTY] * n)
    t = debinarize(b)
    assert len(t.leaves()) == n
    assert tree_to_targets(b).d == list(range(n - 1, 0, -1))
    assert labelled_f1(t, t).f1 == 1.0  # exact: n / n and 2·1·1 / (1 + 1) in floating point


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="at least one leaf"):
        targets_to_tree([], [], [], [])
    with pytest.raises(ValueError, match="expected 1 distances"):
        targets_to_tree(["a", "b"], [1, 2], ["X"], [EMPTY, EMPTY])
    with pytest.raises(ValueError, match="NaN"):
        targets_to_tree(["a", "b"], [math.nan], ["X"], [EMPTY, EMPTY])
    with pytest.raises(ValueError, match="could not be undone"):
        binarize(T(f"A{SEPARATOR}B", "x", "y"))
    with pytest.raises(ValueError, match="could not be undone"):
        binarize(T(EMPTY, "x", "y"))
    with pytest.raises(ValueError, match="0 or 2 children"):
        BinaryTree("A", (BinaryTree("x"),))


# --------------------------------------------------------------------------- real snippets


def test_round_trips_on_real_stdlib_snippets(stdlib_snippets):
    assert len(stdlib_snippets) > 200
    for s in stdlib_snippets:
        b = binarize(s.tree)
        assert debinarize(b) == s.tree
        targets = tree_to_targets(b)
        assert targets.leaves == s.tree.leaves()
        rebuilt = targets_to_tree(*targets)
        assert rebuilt == b
        assert labelled_f1(debinarize(rebuilt), s.tree) == (1.0, 1.0, 1.0)


def test_perturbed_distances_lower_f1(stdlib_snippets):
    # Reversing the distances turns a real AST into a left-branching comb: F1 must drop.
    s = max(stdlib_snippets, key=lambda s: len(s.leaf_spans))
    leaves, d, c, u = tree_to_targets(binarize(s.tree))
    worse = debinarize(targets_to_tree(leaves, list(range(len(d))), c, u))
    assert labelled_f1(worse, s.tree).f1 < 0.9


# --------------------------------------------------------------------------- properties

LABELS = st.sampled_from(["A", "B", "C", "expr", "call"])
LEAVES = st.sampled_from(["x", "y", "(", ")", "def"])


@st.composite
def nary_trees(draw, max_leaves: int = 30) -> Tree:
    """A random ordered tree: nodes with 1..4 children, including single-child chains."""
    budget = [draw(st.integers(1, max_leaves))]

    def grow(depth: int) -> Tree:
        if budget[0] <= 1 or depth > 8 or draw(st.booleans()):
            budget[0] -= 1
            return Tree(draw(LEAVES))
        k = draw(st.integers(1, 4))
        return Tree(draw(LABELS), tuple(grow(depth + 1) for _ in range(k)))

    return grow(0)


@st.composite
def binary_trees(draw, max_leaves: int = 40) -> BinaryTree:
    """A random full binary tree with labels (EMPTY and joined ones included) and unary labels."""
    n = draw(st.integers(1, max_leaves))
    labels = st.one_of(LABELS, st.just(EMPTY), st.just(f"A{SEPARATOR}B"))
    unary = st.one_of(st.just(EMPTY), LABELS)

    def grow(n_leaves: int) -> BinaryTree:
        if n_leaves == 1:
            return BinaryTree(draw(LEAVES), unary=draw(unary))
        k = draw(st.integers(1, n_leaves - 1))
        return BinaryTree(draw(labels), (grow(k), grow(n_leaves - k)))

    return grow(n)


@PROPS
@given(binary_trees())
def test_targets_then_rebuild_is_identity(b):
    targets = tree_to_targets(b)
    assert len(targets.d) == len(targets.c) == len(targets.leaves) - 1 == len(targets.u) - 1
    assert targets_to_tree(*targets) == b


@PROPS
@given(nary_trees())
def test_debinarize_inverts_binarize(t):
    b = binarize(t)
    assert debinarize(b) == t
    assert b.leaves() == t.leaves()
    assert all(len(n.children) in (0, 2) for n in _nodes(b))


@PROPS
@given(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=40), st.data())
def test_any_distances_give_a_tree_over_the_same_leaves(d, data):
    n = len(d) + 1
    leaves = [f"w{i}" for i in range(n)]
    c = data.draw(st.lists(LABELS | st.just(EMPTY), min_size=n - 1, max_size=n - 1))
    b = targets_to_tree(leaves, d, c, [EMPTY] * n)
    assert b.leaves() == leaves
    # Only the ranking of d matters: rebuilding from the tree's own heights gives it back.
    assert targets_to_tree(*tree_to_targets(b)) == b
    t = debinarize(b)
    assert t.leaves() == leaves
    assert labelled_f1(t, t).f1 == 1.0  # exact: n / n and 2·1·1 / (1 + 1) in floating point


@PROPS
@given(nary_trees(), nary_trees())
def test_precision_and_recall_swap_with_arguments(a, b):
    p, r, f = labelled_f1(a, b)
    p2, r2, f2 = labelled_f1(b, a)
    # exact: the same two divisions, swapped; 2pr/(p+r) is symmetric (+ and * commute exactly)
    assert (p, r, f) == (r2, p2, f2)
    assert 0.0 <= f <= 1.0


def _nodes(root):
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children)
    return out
