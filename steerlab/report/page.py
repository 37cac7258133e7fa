"""The report page: sections of text, tables and Plotly figures in one offline HTML file.

plotly.js is inlined once, in the page's head, and every figure is a ``<div>`` drawn by it; the
text, the tables, each section's config and time are plain HTML, readable without JavaScript.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from steerlab.io import atomic_write_text

__all__ = ["Section", "plural", "table_html", "write_page"]

DEFAULT_HEIGHT = 450
"""Height given to a figure whose layout sets none (a responsive div needs one)."""

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5rem auto;
max-width:1280px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{font-size:1.3rem;margin:2.2rem 0 .4rem;
border-top:1px solid #ddd;padding-top:1rem}h3{font-size:1rem;margin:1.2rem 0 .2rem;color:#444}
p{max-width:62rem}p.lead{color:#444}.meta{color:#666;font-size:.85rem;margin:.2rem 0 .6rem}
details{display:inline}summary{cursor:pointer;color:#36c;display:inline}
pre{background:#f6f6f6;padding:.6rem;font-size:.8rem;overflow-x:auto;max-width:62rem}
table.t{border-collapse:collapse;font-size:.88rem;margin:.5rem 0 1rem}
table.t th,table.t td{border:1px solid #ddd;padding:.25rem .55rem;text-align:left;
vertical-align:top}table.t th{background:#f3f3f3}td.num{text-align:right;
font-variant-numeric:tabular-nums}nav ol{columns:2;max-width:40rem}
.fig{margin:.4rem 0 1.2rem}.gen td{max-width:26rem;white-space:pre-wrap}
"""


@dataclass
class Section:
    """One section of the report: a heading, plain text, figures and tables.

    The pipeline fills in ``config``, ``seconds`` and ``reused``.
    """

    key: str
    """Anchor (``#key``)."""
    title: str
    text: str
    """Two or three plain sentences: what the figures show and what to look for."""
    figures: list[tuple[str | None, go.Figure]] = field(default_factory=list)
    """(caption, figure) pairs."""
    blocks: list[str] = field(default_factory=list)
    """Trusted HTML (tables made with :func:`table_html`), placed before the figures."""
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = float("nan")
    reused: bool = False


def plural(n: int, word: str) -> str:
    """``"3 rows"``, ``"1 row"`` (with thousands separators)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], *, cls: str = "t") -> str:
    """An escaped HTML table; numbers are right-aligned (floats with 3 significant decimals)."""

    def cell(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"<td>{html.escape(str(v))}</td>"
        text = f"{v:,}" if isinstance(v, int) else f"{v:.3f}" if abs(v) < 100 else f"{v:,.1f}"
        return f'<td class="num">{text}</td>'

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"


def _figure_html(fig: go.Figure) -> str:
    # plotly leaves Figure.layout untyped (stub gap)
    if fig.layout.height is None:  # pyright: ignore[reportAttributeAccessIssue]
        fig.update_layout(height=DEFAULT_HEIGHT)
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"responsive": True, "displaylogo": False})  # fmt: skip


def write_page(
    path: str | os.PathLike,
    sections: Sequence[Section],
    *,
    title: str,
    lead: str,
    summary: Sequence[tuple[str, Any]],
) -> Path:
    """Write the report page atomically.

    Args:
        path: the HTML file.
        sections: the sections, in order.
        title: page title.
        lead: a paragraph under the title (plain text).
        summary: (name, value) rows of the table under it (model, sizes, times).
    """
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>",
        # plotly.js once, for every figure below; nothing is fetched from the network
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head>", "<body>", f"<h1>{html.escape(title)}</h1>",
        f'<p class="lead">{html.escape(lead)}</p>',
        "<noscript><p><b>The figures need JavaScript; the text and tables are complete without "
        "it.</b></p></noscript>",
        table_html(["", ""], summary).replace("<thead><tr><th></th><th></th></tr></thead>", ""),
        "<nav><ol>" + "".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>'
                              for s in sections) + "</ol></nav>",
    ]  # fmt: skip
    for s in sections:
        took = _seconds(s.seconds)
        if s.cpu_seconds == s.cpu_seconds:  # not nan
            took += f", {_seconds(s.cpu_seconds)} of CPU"
        when = (f"reused from an earlier run with the same config (computed in {took})"
                if s.reused else f"computed in {took}")  # fmt: skip
        config = html.escape(json.dumps(s.config, indent=1))
        parts += [
            f'<section id="{html.escape(s.key)}">', f"<h2>{html.escape(s.title)}</h2>",
            f"<p>{html.escape(s.text)}</p>",
            f'<div class="meta">{when} · <details><summary>config</summary><pre>{config}</pre>'
            "</details></div>",
            *s.blocks,
        ]  # fmt: skip
        for caption, fig in s.figures:
            if caption:
                parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(f'<div class="fig">{_figure_html(fig)}</div>')
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return atomic_write_text(path, "\n".join(parts))
