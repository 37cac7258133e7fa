"""AST-probe figures: the rank axis and the side-by-side trees fit a page, labels do not
overlap, colours have a legend."""

from __future__ import annotations

import math

from steerlab.probes.ast.trees import Tree
from steerlab.views.ast import _CHAR_PX, _WIDTH_PX, f1_by_rank, tree_pair

RUNS = [{"rank": r, "f1": 0.3 + 0.01 * i, "dev_f1": 0.5 if r == 64 else 0.3 + 0.01 * i}
        for i, r in enumerate((8, 16, 32, 64, 128, 256, 512, 576))]  # fmt: skip


def test_f1_by_rank_peak_line_keeps_the_log_axis_range():
    # add_vline's label at x=64 on a log axis was placed at 10**64 and autorange followed it.
    fig = f1_by_rank(RUNS, d_model=576)
    ax = fig.layout.xaxis
    assert ax.type == "log"
    lo, hi = ax.range
    assert lo <= math.log10(8) and hi >= math.log10(576) and hi < math.log10(576 * 2)
    (ann,) = [a for a in fig.layout.annotations if "peak" in a.text]
    assert ann.text == "peak (dev): rank 64" and ann.x == math.log10(64) and lo < ann.x < hi
    assert fig.layout.shapes[0].x0 == 64


def _wide_tree(n_leaves: int) -> tuple[Tree, list[str]]:
    """A module of small statements: many leaves, several levels, long labels."""
    stmts, leaves = [], []
    for i in range(n_leaves // 4):
        names = [f"name_{i}_{j}" for j in range(4)]
        leaves += names
        stmts.append(Tree("expression_statement", (Tree("call", tuple(Tree(n) for n in names)),)))
    return Tree("module", tuple(stmts)), leaves


def test_tree_pair_fits_the_page_with_a_colour_legend():
    tree, leaves = _wide_tree(80)
    other = Tree("module", tree.children[::-1])  # constituents at other spans: some red
    fig = tree_pair(tree, other, leaves, code="x = 1\ny = <2>")
    # no fixed width (it was 2·28·n_leaves = 4480 px here): responsive, never scrolls
    assert fig.layout.width is None
    # stacked: each tree has the whole width
    assert list(fig.layout.xaxis.domain) == [0, 1] and list(fig.layout.xaxis2.domain) == [0, 1]
    a0, b1 = fig.layout.yaxis.domain[0], fig.layout.yaxis2.domain[1]
    assert b1 < a0  # the gold tree below the predicted one, not overlapping
    legend = {t.name for t in fig.data if t.showlegend is not False}
    assert legend == {"constituent in both trees", "only in this tree", "leaf (token)"}
    assert "&lt;2&gt;" in fig.layout.title.text
    for ax in (fig.layout.xaxis, fig.layout.xaxis2):
        assert ax.tickangle == -90 and len(ax.tickvals) == 80  # every leaf named, rotated
        assert all(len(t) <= 14 for t in ax.ticktext)


def test_tree_pair_node_labels_do_not_overlap():
    tree, leaves = _wide_tree(80)
    fig = tree_pair(tree, tree, leaves)
    per_leaf = _WIDTH_PX / 80
    nodes = [t for t in fig.data if t.mode == "markers+text"]
    assert len(nodes) == 2
    for t in nodes:
        shown = [(x, y, s) for x, y, s in zip(t.x, t.y, t.text) if s]
        assert shown  # some internal labels are drawn
        for i, (x1, y1, s1) in enumerate(shown):
            for x2, y2, s2 in shown[i + 1 :]:
                if y1 == y2:  # same level: the boxes must not touch
                    gap = abs(x1 - x2) * per_leaf
                    assert gap >= (len(s1) + len(s2)) * _CHAR_PX / 2, (s1, s2)
        # leaves carry no text of their own (the axis names them)
        assert not any(s for y, s in zip(t.y, t.text) if y == min(t.y))


def test_tree_pair_height_grows_with_depth():
    shallow = Tree("m", (Tree("a"), Tree("b")))
    deep = shallow
    for i in range(8):
        deep = Tree(f"n{i}", (deep, Tree(f"x{i}")))
    h1 = tree_pair(shallow, shallow).layout.height
    h2 = tree_pair(deep, deep).layout.height
    assert h2 - h1 >= 2 * 8 * 30  # two trees, 8 more levels each
