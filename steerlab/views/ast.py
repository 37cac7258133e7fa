"""Figures of the AST-Probe: F1 by layer and by rank, predicted vs gold trees side by side.

The sweep figures take the per-probe records that ``probes/ast_probe.py`` writes to
``results.json`` (mappings with ``depth``, ``site``, ``rank``, ``f1`` and optionally ``dev_f1``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from steerlab.probes.ast.trees import F1Score, Tree, constituents, labelled_f1
from steerlab.views.common import log_range, ref_line

__all__ = ["f1_by_layer", "f1_by_rank", "pick_example", "tree_figure", "tree_pair"]

_MATCH, _MISS, _LEAF = "#2ca02c", "#d62728", "#7f7f7f"


def f1_by_layer(
    runs: Sequence[Mapping[str, Any]],
    random_runs: Sequence[Mapping[str, Any]] = (),
    embeddings_f1: float | None = None,
    *,
    reference: Mapping[str, float] | None = None,
    title: str = "AST-Probe: held-out F1 by layer",
) -> go.Figure:
    """Test F1 (and dev F1, dotted) per depth, with the baselines.

    Args:
        runs: one record per depth of the probed model (depth 0 = token embeddings).
        random_runs: records of the randomly initialised model of the same architecture.
        embeddings_f1: F1 of the depth-0 probe, drawn as a dashed horizontal line.
        reference: named F1 values drawn as dotted grey lines (e.g. the paper's numbers).
    """
    fig = go.Figure()
    runs = sorted(runs, key=lambda r: r["depth"])
    hover = "depth %{x} (%{customdata})<br>F1 %{y:.3f}<extra>%{fullData.name}</extra>"
    fig.add_scatter(
        x=[r["depth"] for r in runs],
        y=[r["f1"] for r in runs],
        mode="lines+markers",
        name="model, test",
        customdata=[r["site"] for r in runs],
        hovertemplate=hover,
    )
    if runs and all("dev_f1" in r for r in runs):
        fig.add_scatter(
            x=[r["depth"] for r in runs],
            y=[r["dev_f1"] for r in runs],
            mode="lines",
            line={"dash": "dot", "width": 1},
            name="model, dev",
            customdata=[r["site"] for r in runs],
            hovertemplate=hover,
        )
    if random_runs:
        rr = sorted(random_runs, key=lambda r: r["depth"])
        fig.add_scatter(
            x=[r["depth"] for r in rr],
            y=[r["f1"] for r in rr],
            mode="lines+markers",
            line={"dash": "dash"},
            name="random weights, test",
            customdata=[r["site"] for r in rr],
            hovertemplate=hover,
        )
    if embeddings_f1 is not None:
        ref_line(fig, embeddings_f1, label=f"embeddings only {embeddings_f1:.3f}",
                 line={"color": _LEAF}, position="bottom right")  # fmt: skip
    for name, value in (reference or {}).items():
        ref_line(fig, value, label=f"paper: {name} {value:.2f}",
                 line={"dash": "dot", "color": "#999999"}, position="top left")  # fmt: skip
    fig.update_layout(
        title=title,
        xaxis_title="depth (0 = embeddings, L = after block L-1)",
        yaxis_title="labelled-constituent F1",
        yaxis_range=[0, 1],
        template="plotly_white",
        hovermode="closest",
    )
    return fig


def f1_by_rank(
    runs: Sequence[Mapping[str, Any]],
    d_model: int | None = None,
    *,
    title: str = "AST-Probe: F1 by probe rank",
) -> go.Figure:
    """Test F1 (and dev F1) against the rank of ``B`` (log scale), the peak marked."""
    runs = sorted(runs, key=lambda r: r["rank"])
    fig = go.Figure()
    fig.add_scatter(
        x=[r["rank"] for r in runs],
        y=[r["f1"] for r in runs],
        mode="lines+markers",
        name="test",
        hovertemplate="rank %{x}<br>F1 %{y:.3f}<extra>test</extra>",
    )
    if runs and all("dev_f1" in r for r in runs):
        fig.add_scatter(
            x=[r["rank"] for r in runs],
            y=[r["dev_f1"] for r in runs],
            mode="lines",
            line={"dash": "dot", "width": 1},
            name="dev",
            hovertemplate="rank %{x}<br>F1 %{y:.3f}<extra>dev</extra>",
        )
        peak = max(runs, key=lambda r: r["dev_f1"])
        # the label's coordinate is log10(rank) on this log axis (ref_line converts it)
        ref_line(fig, peak["rank"], axis="x", log=True, label=f"peak (dev): rank {peak['rank']}",
                 line={"color": _LEAF}, position="top right")  # fmt: skip
    ticks = [r["rank"] for r in runs]
    fig.update_layout(
        title=title,
        yaxis_title="labelled-constituent F1",
        template="plotly_white",
        xaxis={
            "type": "log",
            "tickvals": ticks,
            "ticktext": [str(t) for t in ticks],
            "range": log_range(ticks, pad=1.4) if ticks else None,
            "title": "rank" + (f" (d_model = {d_model})" if d_model else ""),
        },
    )
    return fig


def pick_example(
    scores: Sequence[F1Score], n_leaves: Sequence[int], *, min_leaves: int = 8, max_leaves: int = 30
) -> int:
    """Index of a typical snippet to draw: F1 nearest the median among mid-sized snippets."""
    pool = [i for i, n in enumerate(n_leaves) if min_leaves <= n <= max_leaves] or list(
        range(len(scores))
    )
    if not pool:
        raise ValueError("no snippets")
    f1s = sorted(scores[i].f1 for i in pool)
    median = f1s[len(f1s) // 2]
    return min(pool, key=lambda i: (abs(scores[i].f1 - median), n_leaves[i]))


def _layout(tree: Tree) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """Nodes (label, leaf span, x, y, is_leaf) and parent->child edges of an n-ary tree.

    Leaves sit on the bottom row at x = leaf index; an internal node is centred over its
    children at y = −depth.
    """
    nodes: list[dict[str, Any]] = []
    kids: list[list[int]] = []
    edges: list[tuple[int, int]] = []
    stack: list[tuple[Tree, int, int]] = [(tree, -1, 0)]
    while stack:  # preorder: leaves come out left to right, parents before children
        node, parent, depth = stack.pop()
        me = len(nodes)
        nodes.append({"label": node.label, "depth": depth, "leaf": not node.children})
        kids.append([])
        if parent >= 0:
            kids[parent].append(me)
            edges.append((parent, me))
        stack.extend((c, me, depth + 1) for c in reversed(node.children))
    n_leaves = 0
    for n in nodes:
        if n["leaf"]:
            n.update(x=float(n_leaves), start=n_leaves, end=n_leaves + 1)
            n_leaves += 1
    for i in reversed(range(len(nodes))):  # children before parents
        if kids[i]:
            first, last = nodes[kids[i][0]], nodes[kids[i][-1]]
            nodes[i].update(x=(first["x"] + last["x"]) / 2, start=first["start"], end=last["end"])
    bottom = max(n["depth"] for n in nodes) + 1
    for n in nodes:
        n["y"] = -bottom if n["leaf"] else -n["depth"]
    return nodes, edges


_WIDTH_PX = 1100
"""Plot width the label layout of :func:`tree_pair` assumes (the figure itself is responsive:
narrower pages drop no labels, they only bring them closer)."""
_LEVEL_PX = 38  # vertical distance between tree levels
_CHAR_PX = 5.6  # width of one character of a 9 px label
_LEAF_CHARS = 14  # leaf labels are cut to this many characters


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _label_rows(nodes: list[dict[str, Any]], n_leaves: int, width_px: float) -> set[int]:
    """Internal nodes whose label fits beside the other labels of its level (wider spans first).

    A label ``w`` characters wide is kept when its distance to every kept label of the same
    level is at least half their widths plus a gap, at ``width_px / n_leaves`` px per leaf.
    """
    per_leaf = width_px / max(n_leaves, 1)
    kept: dict[float, list[tuple[float, float]]] = {}
    shown: set[int] = set()
    order = sorted((i for i, n in enumerate(nodes) if not n["leaf"]),
                   key=lambda i: nodes[i]["start"] - nodes[i]["end"])  # fmt: skip
    for i in order:
        n = nodes[i]
        x, w = n["x"] * per_leaf, len(_short(n["label"], 14)) * _CHAR_PX
        row = kept.setdefault(n["y"], [])
        if all(abs(x - x2) >= (w + w2) / 2 + 6 for x2, w2 in row):
            row.append((x, w))
            shown.add(i)
    return shown


def tree_figure(
    tree: Tree,
    leaves: Sequence[str] | None = None,
    *,
    other: Tree | None = None,
    fig: go.Figure | None = None,
    col: int | None = None,
    row: int | None = None,
    name: str = "tree",
    width_px: float = _WIDTH_PX,
) -> go.Figure:
    """Draw an n-ary tree; with ``other``, internal nodes are green when the same labelled
    constituent (label, leaf span) is in ``other`` and red when not.

    Leaves sit on the bottom row and are named by the x-axis tick labels (rotated, so
    neighbouring leaves never overlap); internal nodes carry their label where it fits beside
    the other labels of its level (see :func:`_label_rows`) and always in the hover.

    Args:
        tree: the tree.
        leaves: the leaf texts (default the tree's leaf labels).
        other: the tree to compare constituents with (colours).
        fig: draw into this figure (a subplot grid with ``row``/``col``).
        col, row: the subplot (either may be omitted: 1).
        name: trace name.
        width_px: the plot width the label layout assumes.
    """
    nodes, edges = _layout(tree)
    texts = list(leaves) if leaves is not None else tree.leaves()
    match = constituents(other) if other is not None else None
    fig = fig or go.Figure()
    sub = row is not None or col is not None
    where: dict[str, Any] = {"row": row or 1, "col": col or 1} if sub else {}
    ex, ey = [], []
    for a, b in edges:
        ex += [nodes[a]["x"], nodes[b]["x"], None]
        ey += [nodes[a]["y"], nodes[b]["y"], None]
    fig.add_scatter(x=ex, y=ey, mode="lines", line={"color": "#cccccc", "width": 1},
                    hoverinfo="skip", showlegend=False, **where)  # fmt: skip
    n_leaves = sum(n["leaf"] for n in nodes)
    labelled = _label_rows(nodes, n_leaves, width_px)
    xs, ys, labels, hover, colours = [], [], [], [], []
    for i, n in enumerate(nodes):
        span = texts[n["start"] : n["end"]]
        code = _short(" ".join(span), 80)
        if n["leaf"]:
            colour, shown = _LEAF, ""
        else:
            key = (n["label"], n["start"], n["end"])
            colour = _LEAF if match is None else _MATCH if match[key] else _MISS
            shown = _short(n["label"], 14) if i in labelled else ""
        xs.append(n["x"])
        ys.append(n["y"])
        labels.append(shown)
        colours.append(colour)
        hover.append(f"{html.escape(n['label'], quote=False)}<br>leaves {n['start']}–"
                     f"{n['end'] - 1}<br>{html.escape(code, quote=False)}")  # fmt: skip
    fig.add_scatter(x=xs, y=ys, mode="markers+text", text=labels, textposition="top center",
                    textfont={"size": 9}, marker={"color": colours, "size": 8}, hovertext=hover,
                    hoverinfo="text", name=name, showlegend=False, **where)  # fmt: skip
    leaf_x = [n["x"] for n in nodes if n["leaf"]]
    fig.update_xaxes(tickvals=leaf_x, ticktext=[_short(texts[int(x)], _LEAF_CHARS) for x in leaf_x],
                     tickangle=-90, tickfont={"size": 9, "family": "monospace"},
                     showgrid=False, zeroline=False, showline=False,
                     range=[-0.8, n_leaves - 0.2], **where)  # fmt: skip
    depth = -min(n["y"] for n in nodes)
    fig.update_yaxes(visible=False, range=[-depth - 0.4, 0.7], **where)
    return fig


def tree_pair(
    pred: Tree,
    gold: Tree,
    leaves: Sequence[str] | None = None,
    *,
    code: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Predicted and gold trees one above the other; green = constituent in both, red = only in
    this tree (a legend says so).

    Each tree gets the page's full width (the figure is responsive, never wider than its page),
    leaves are the rotated x tick labels, and the height grows with the trees' depth.
    """
    score = labelled_f1(pred, gold)
    depths = [_depth(t) for t in (pred, gold)]
    leaf_px = _LEAF_CHARS * _CHAR_PX + 12  # rotated leaf labels below each tree
    panel = [(d + 1.2) * _LEVEL_PX + leaf_px for d in depths]
    gap = 70
    top, bottom = 140 if code else 110, 10
    height = int(top + bottom + sum(panel) + gap)
    plot = sum(panel) + gap
    fig = make_subplots(
        rows=2, cols=1,
        row_heights=[p / sum(panel) for p in panel],
        vertical_spacing=gap / plot,
        subplot_titles=(f"predicted (precision {score.precision:.2f})",
                        f"gold (recall {score.recall:.2f})"),
    )  # fmt: skip
    tree_figure(pred, leaves, other=gold, fig=fig, row=1, name="predicted")
    tree_figure(gold, leaves, other=pred, fig=fig, row=2, name="gold")
    for colour, what in ((_MATCH, "constituent in both trees"), (_MISS, "only in this tree"),
                         (_LEAF, "leaf (token)")):  # fmt: skip
        fig.add_scatter(x=[None], y=[None], mode="markers", name=what,
                        marker={"color": colour, "size": 9}, row=1, col=1)  # fmt: skip
    head = title or f"labelled F1 {score.f1:.2f}"
    if code:
        short = code if len(code) <= 300 else code[:297] + "..."
        head += "<br><sup>" + html.escape(short, quote=False).replace("\n", " ⏎ ") + "</sup>"
    fig.update_layout(
        title=head, template="plotly_white", height=height,
        margin={"t": top, "b": bottom, "l": 20, "r": 20},
        # above the first subplot's title, inside the top margin
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1 + 24 / plot,
                "yanchor": "bottom", "font": {"size": 11}},
    )  # fmt: skip
    return fig


def _depth(tree: Tree) -> int:
    nodes, _ = _layout(tree)
    return -min(n["y"] for n in nodes)
