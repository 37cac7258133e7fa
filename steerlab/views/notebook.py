"""Notebook display: Plotly figures that render in JupyterLab, in exported HTML and on GitHub.

A Jupyter output is a bundle of representations and every viewer picks the one it can show:

- JupyterLab, VS Code and nteract draw ``application/vnd.plotly.v1+json`` (interactive);
- ``jupyter nbconvert --to html`` and nbviewer take ``text/html``, which needs plotly.js on the
  page. It is embedded once per notebook, by the output of :func:`notebook_setup`, gzipped and
  base64-encoded (about 2 MB instead of the 4.8 MB minified source) and unpacked in the browser
  with ``DecompressionStream``; nothing is fetched from a CDN;
- GitHub strips scripts. Each figure's ``text/html`` therefore starts as a static PNG that the
  script replaces with the live figure, and the bundle also carries ``image/png`` for viewers
  that prefer images (PDF export, untrusted notebooks).

The PNG comes from kaleido, which drives a local Chrome or Chromium (``apt-get install
chromium``, or ``plotly_get_chrome``); without one the figures keep the other two forms and
:func:`notebook_setup` logs why.

:func:`notebook_setup` also keeps outputs free of stderr noise: it turns off the progress bars
of ``transformers`` and ``huggingface_hub`` and sends steerlab's log records to stdout.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import html
import json
import logging
import sys
import warnings
from typing import Any, cast

import huggingface_hub.utils
import plotly
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # transformers' logging imports tqdm.auto, which warns once, at import, when a Jupyter kernel
    # lacks ipywidgets. The bars are turned off below, so the warning is noise in a notebook.
    warnings.simplefilter("ignore", TqdmWarning)
    from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
"""The mimetype JupyterLab's plotly extension (and VS Code, nteract) renders."""
EXPORT_LOGGERS = ("choreographer", "kaleido")
"""Loggers of kaleido's browser pipe that :func:`notebook_setup` silences.

They report recoverable hiccups with tracebacks (under load Chrome's reply can arrive split:
"JSONError decoding message. Ignoring"); with no handler configured Python prints them on
stderr. A PNG that cannot be made still raises, in ``plotly.io.to_image``."""
RENDERER = "steerlab_notebook"
"""The name under which :func:`notebook_setup` registers its renderer with ``plotly.io``."""
LOADER_MARKER = "steerlab-plotlyjs-loader"
"""An id carried by the (single) output that embeds plotly.js; tests look for it."""
DEFAULT_WIDTH, DEFAULT_HEIGHT = 900, 500
"""Figure size when the layout sets none: the PNG's size, and the live figure's height (its width
follows the page). 900 px is about the width of a notebook's output column on GitHub."""

# Runs once per page: unpack plotly.js and evaluate it. `window.steerlabPlotly` is a promise of
# the Plotly object that the figures' scripts wait on. A browser without DecompressionStream
# throws here, leaves the promise undefined, and the figures keep their static PNG.
_LOADER_JS = """<div style="font-size:smaller; color:#777;">{caption}</div>
<script type="text/javascript" id="{marker}">
window.PlotlyConfig = {{MathJaxConfig: 'local'}};
if (!window.steerlabPlotly) {{
  window.steerlabPlotly = (function () {{
    var bytes = Uint8Array.from(atob("{payload}"), function (c) {{ return c.charCodeAt(0); }});
    var source = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(source).text().then(function (js) {{
      var script = document.createElement("script");
      script.text = js;
      document.head.appendChild(script);
      return window.Plotly;
    }});
  }})();
}}
</script>"""

_FIGURE_HTML = """<div id="{div_id}" class="plotly-graph-div" style="height:{height}px; width:{width};">\
{fallback}</div>
<script type="text/javascript">
(function () {{
  var gd = document.getElementById("{div_id}");
  if (!gd || !window.steerlabPlotly) return;  // no plotly.js on this page: keep the image
  window.steerlabPlotly.then(function (Plotly) {{
    gd.replaceChildren();
    Plotly.newPlot(gd, {figure});
  }});
}})();
</script>"""


class PlotlyLoader:
    """The output that embeds plotly.js in a notebook; display it once, before any figure.

    It is what :func:`notebook_setup` returns, so ending the first cell with
    ``notebook_setup()`` displays it.
    """

    def __repr__(self) -> str:
        return f"plotly.js {plotly_js_version()} embedded for offline figures"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        # include/exclude are IPython's filters; the bundle is the same whatever is asked.
        del include, exclude
        loader = _LOADER_JS.format(
            caption=html.escape(repr(self)), marker=LOADER_MARKER, payload=_plotlyjs_gzip_b64()
        )
        return {"text/html": loader, "text/plain": repr(self)}


class NotebookRenderer(MimetypeRenderer):
    """A plotly renderer whose bundle holds the plotly mimetype, HTML and (optionally) a PNG.

    The HTML expects the plotly.js that :class:`PlotlyLoader` embeds; where it is missing (or
    scripts are stripped, as on GitHub) the HTML shows the PNG instead.
    """

    def __init__(self, png: bool = True, config: dict[str, Any] | None = None) -> None:
        self.png = png
        self.config = {"responsive": True, **(config or {})}
        self._shown = 0

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
        """The bundle for one figure (plotly calls this for every displayed figure)."""
        # plotly's serialiser turns numpy arrays and dates into JSON; its inferred return type
        # includes None, which a figure dict never gives
        fig = json.loads(cast(str, to_json_plotly(fig_dict)))
        fig["config"] = {**fig.get("config", {}), **self.config}
        layout = fig.get("layout", {})
        width, height = layout.get("width"), layout.get("height") or DEFAULT_HEIGHT
        bundle: dict[str, Any] = {PLOTLY_MIMETYPE: fig}
        fallback = ""
        if self.png:
            png = pio.to_image(fig_dict, format="png", width=width or DEFAULT_WIDTH, height=height)
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
            title = html.escape(_title(layout), quote=True)
            fallback = (
                f'<img alt="{title}" style="max-width:100%" '
                f'src="data:image/png;base64,{bundle["image/png"]}">'
            )
        source = json.dumps(fig, separators=(",", ":"))
        self._shown += 1
        # A content hash keeps re-executed notebooks' diffs small; the counter keeps two
        # displays of one figure apart.
        digest = hashlib.sha1(source.encode()).hexdigest()[:12]
        bundle["text/html"] = _FIGURE_HTML.format(
            div_id=f"steerlab-fig-{digest}-{self._shown}",
            height=height,
            width=f"{width}px" if width else "100%",
            fallback=fallback,
            # "</" would end the <script> element if a label contained "</script>"
            figure=source.replace("</", "<\\/"),
        )
        return bundle


def notebook_setup(*, png: bool | None = None, log_level: int = logging.WARNING) -> PlotlyLoader:
    """Prepare a notebook: figures in every output form, no progress bars, logs on stdout.

    Side effects, for the whole process: plotly's default renderer becomes :data:`RENDERER`;
    the progress bars of ``transformers`` and ``huggingface_hub`` are turned off; records of the
    ``steerlab`` loggers at ``log_level`` and above go to stdout; the :data:`EXPORT_LOGGERS` are
    silenced.

    Call it in the first cell, before anything imports ``transformers``, and end the cell
    with it so that its return value (the embedded plotly.js) is displayed::

        from steerlab.views.notebook import notebook_setup

        notebook_setup()

    Args:
        png: add a static PNG to every figure. ``None`` (default) adds it when kaleido can
            start a browser here and logs why not otherwise; ``True`` raises instead.
        log_level: steerlab log records at this level and above are printed to stdout (stderr
            would show as error-coloured blocks in the saved notebook).

    Returns:
        A :class:`PlotlyLoader`; displaying it embeds plotly.js in the notebook.

    Raises:
        RuntimeError: ``png=True`` and no PNG can be made (names kaleido's error).
    """
    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    _log_to_stdout(log_level)
    for name in EXPORT_LOGGERS:
        export_logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in export_logger.handlers):
            export_logger.addHandler(logging.NullHandler())
        export_logger.propagate = False
    if png is None:
        error = static_image_error()
        if error:
            logger.warning("figures get no static PNG copy (%s)", error)
        png = error is None
    elif png:
        error = static_image_error()
        if error:
            raise RuntimeError(f"png=True but no PNG can be made here: {error}")
    pio.renderers[RENDERER] = NotebookRenderer(png=png)
    pio.renderers.default = RENDERER
    return PlotlyLoader()


def static_image_error() -> str | None:
    """Why kaleido cannot render a PNG here (no package, no browser), or ``None`` if it can."""
    try:
        pio.to_image(go.Figure(), format="png", width=16, height=16)
    except Exception as e:  # any failure means "no PNG": its message is what the user needs
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def plotly_js_version() -> str:
    """The version of the plotly.js bundled with the installed plotly package."""
    return plotly.offline.get_plotlyjs_version()


@functools.cache
def _plotlyjs_gzip_b64() -> str:
    # mtime=0 makes the gzip bytes, and so the notebook, identical across runs.
    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), mtime=0)).decode("ascii")


def _title(layout: dict[str, Any]) -> str:
    title = layout.get("title")
    if isinstance(title, dict):
        return str(title.get("text") or "figure")
    return str(title or "figure")


class StdoutHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stdout`` is when a record arrives.

    Jupyter (and pytest) replace ``sys.stdout``; a plain ``StreamHandler(sys.stdout)`` would keep
    writing to the object that was current when it was made.
    """

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        del value  # always sys.stdout


def _log_to_stdout(level: int) -> None:
    steerlab_logger = logging.getLogger("steerlab")
    handler = next((h for h in steerlab_logger.handlers if isinstance(h, StdoutHandler)), None)
    if handler is None:
        handler = StdoutHandler()
        steerlab_logger.addHandler(handler)
    handler.setLevel(level)
    if steerlab_logger.getEffectiveLevel() > level:
        steerlab_logger.setLevel(level)
