"""Figures of the AST-Probe: F1 by layer and by rank, predicted vs gold trees side by side.

The sweep figures take the per-probe records that ``probes/ast_probe.py`` writes to
``results.json`` (mappings with ``depth``, ``site``, ``rank``, ``f1`` and optionally ``dev_f1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from steerlab.probes.ast.trees import F1Score, Tree, constituents

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
        fig.add_hline(
            y=embeddings_f1,
            line={"dash": "dash", "color": _LEAF},
            annotation_text=f"embeddings only {embeddings_f1:.3f}",
            annotation_position="bottom right",
        )
    for name, value in (reference or {}).items():
        fig.add_hline(
            y=value,
            line={"dash": "dot", "color": "#bbbbbb"},
            annotation_text=f"paper: {name} {value:.2f}",
            annotation_position="top left",
        )
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
        fig.add_vline(
            x=peak["rank"],
            line={"dash": "dash", "color": _LEAF},
            annotation_text=f"peak (dev): rank {peak['rank']}",
        )
    ticks = [r["rank"] for r in runs]
    fig.update_layout(
        title=title,
        yaxis_title="labelled-constituent F1",
        template="plotly_white",
        xaxis={
            "type": "log",
            "tickvals": ticks,
            "ticktext": [str(t) for t in ticks],
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


def tree_figure(
    tree: Tree,
    leaves: Sequence[str] | None = None,
    *,
    other: Tree | None = None,
    fig: go.Figure | None = None,
    col: int | None = None,
    name: str = "tree",
) -> go.Figure:
    """Draw an n-ary tree; with ``other``, internal nodes are green when the same labelled
    constituent (label, leaf span) is in ``other`` and red when not."""
    nodes, edges = _layout(tree)
    texts = list(leaves) if leaves is not None else None
    match = constituents(other) if other is not None else None
    fig = fig or go.Figure()
    where = {"row": 1, "col": col} if col is not None else {}
    ex, ey = [], []
    for a, b in edges:
        ex += [nodes[a]["x"], nodes[b]["x"], None]
        ey += [nodes[a]["y"], nodes[b]["y"], None]
    fig.add_scatter(
        x=ex,
        y=ey,
        mode="lines",
        line={"color": "#cccccc", "width": 1},
        hoverinfo="skip",
        showlegend=False,
        **where,
    )
    xs, ys, labels, hover, colours = [], [], [], [], []
    for n in nodes:
        span = texts[n["start"] : n["end"]] if texts is not None else []
        code = " ".join(span)
        code = code if len(code) <= 80 else code[:77] + "..."
        if n["leaf"]:
            colour = _LEAF
            shown = texts[n["start"]] if texts is not None else n["label"]
        else:
            key = (n["label"], n["start"], n["end"])
            colour = _LEAF if match is None else _MATCH if match[key] else _MISS
            shown = n["label"] if len(n["label"]) <= 14 else n["label"][:13] + "…"
        xs.append(n["x"])
        ys.append(n["y"])
        labels.append(shown)
        colours.append(colour)
        hover.append(f"{n['label']}<br>leaves {n['start']}–{n['end'] - 1}<br>{code}")
    fig.add_scatter(
        x=xs,
        y=ys,
        mode="markers+text",
        text=labels,
        textposition="top center",
        textfont={"size": 9},
        marker={"color": colours, "size": 8},
        hovertext=hover,
        hoverinfo="text",
        name=name,
        showlegend=False,
        **where,
    )
    return fig


def tree_pair(
    pred: Tree,
    gold: Tree,
    leaves: Sequence[str] | None = None,
    *,
    code: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Predicted and gold trees side by side; green = constituent in both, red = only in one."""
    from steerlab.probes.ast.trees import labelled_f1

    score = labelled_f1(pred, gold)
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.03,
        subplot_titles=(f"predicted (P {score.precision:.2f})", f"gold (R {score.recall:.2f})"),
    )
    tree_figure(pred, leaves, other=gold, fig=fig, col=1, name="predicted")
    tree_figure(gold, leaves, other=pred, fig=fig, col=2, name="gold")
    n = len(gold.leaves())
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    head = title or f"labelled F1 {score.f1:.2f}"
    if code:
        short = code if len(code) <= 300 else code[:297] + "..."
        head += "<br><sup>" + short.replace("\n", " ⏎ ").replace("<", "&lt;") + "</sup>"
    fig.update_layout(
        title=head,
        template="plotly_white",
        height=520,
        width=max(900, min(2400, 2 * 28 * n)),
        margin={"t": 110},
    )
    return fig
