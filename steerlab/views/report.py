"""Standalone HTML reports: figures, a title and notes in one file that works offline."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import plotly.graph_objects as go

from steerlab.io import atomic_write_text

_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;"
    "max-width:1400px;padding:0 1rem;color:#222}"
    "h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}p.notes{color:#444;max-width:60rem}"
)


def write_html(
    figures: go.Figure | Sequence[go.Figure] | Mapping[str, go.Figure],
    path: str | os.PathLike,
    *,
    title: str = "steerlab report",
    notes: str | None = None,
    include_plotlyjs: bool | Literal["cdn"] = True,
) -> Path:
    """Write figures into one standalone HTML file.

    The file is written atomically (:func:`steerlab.io.atomic_write_text`), so a reader never
    sees half a report.

    Args:
        figures: one figure, a list of figures, or a mapping from section heading to figure.
        path: the HTML file to write (parent directories are created).
        title: page title and ``<h1>`` heading.
        notes: text under the title; escaped, and split into paragraphs at blank lines.
        include_plotlyjs: ``True`` inlines plotly.js (about 4.5 MB) once, before the first
            figure, so that the file works offline; ``"cdn"`` links it instead; ``False``
            leaves it out (the page then needs plotly.js from elsewhere).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if isinstance(figures, go.Figure):
        sections: list[tuple[str | None, go.Figure]] = [(None, figures)]
    elif isinstance(figures, Mapping):
        sections = [(str(name), fig) for name, fig in figures.items()]
    else:
        sections = [(None, fig) for fig in figures]
    if not sections:
        raise ValueError("no figures to write")
    for _, fig in sections:
        if not isinstance(fig, go.Figure):
            raise TypeError(f"expected plotly Figure objects, got {type(fig).__name__}")

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        for paragraph in notes.strip().split("\n\n"):
            parts.append(f'<p class="notes">{html.escape(paragraph.strip())}</p>')
    for i, (name, fig) in enumerate(sections):
        parts.append("<section>")
        if name is not None:
            parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(
            fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs if i == 0 else False)
        )
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]

    return atomic_write_text(path, "\n".join(parts))
