"""The notebooks: one jupytext source each, committed executed and clean, and each runs.

``notebooks/NN_name.py`` (jupytext percent format) is the source of ``notebooks/NN_name.ipynb``;
``make notebooks`` rebuilds and executes the .ipynb from it. The checks on the *committed*
notebooks are what a reader sees on GitHub or after ``jupyter nbconvert --to html``.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import re
from pathlib import Path

import huggingface_hub.utils
import jupytext
import nbformat
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from nbclient import NotebookClient
from plotly.offline import get_plotlyjs
from transformers.utils import logging as hf_logging

from steerlab.views import notebook
from steerlab.views.notebook import (
    EXPORT_LOGGERS,
    LOADER_MARKER,
    PLOTLY_MIMETYPE,
    RENDERER,
    NotebookRenderer,
    PlotlyLoader,
    StdoutHandler,
    notebook_setup,
)

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9]*.py"))
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))

# Machine paths that must not leak into outputs (a reader's checkout is elsewhere).
MACHINE_PATH = re.compile(r"/root|/home/|/work/|/tmp/")
# Base64 payloads (PNG copies, the embedded plotly.js) can spell anything by chance.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{200,}")
FIGURE_JSON = re.compile(r"Plotly\.newPlot\(gd, (.*)\);\n  \}\);", re.S)


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def output_problems(nb: nbformat.NotebookNode, *, require_png: bool) -> list[str]:
    """Everything a reader should not see in ``nb``'s outputs, one line per problem."""
    problems: list[str] = []
    loaders, first_figure = [], None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        if not outputs:
            problems.append(f"cell {i} has no output (end it with a value, a print or a figure)")
        for out in outputs:
            kind = out.get("output_type")
            if kind == "error":
                problems.append(f"cell {i} raised {out.get('ename')}: {out.get('evalue')}")
            if kind == "stream" and out.get("name") == "stderr":
                problems.append(f"cell {i} wrote to stderr: {out.get('text', '')[:200]!r}")
            data = out.get("data", {})
            texts = [out.get("text", "")] + [_text(v) for v in data.values()]
            for text in texts:
                hit = MACHINE_PATH.search(BASE64_RUN.sub("", text))
                if hit:
                    start = max(0, hit.start() - 60)
                    problems.append(
                        f"cell {i} shows a machine path: {text[start : hit.end() + 40]!r}"
                    )
            html = data.get("text/html", "")
            if LOADER_MARKER in _text(html):
                loaders.append(i)
            if re.search(r"""src=["']https?:""", _text(html)):
                problems.append(f"cell {i} loads a script or image from the network")
            if PLOTLY_MIMETYPE in data:
                first_figure = i if first_figure is None else first_figure
                if "text/html" not in data:
                    problems.append(f"cell {i}: a figure without text/html (nbconvert, nbviewer)")
                if require_png and "image/png" not in data:
                    problems.append(
                        f"cell {i}: a figure without image/png (GitHub); execute with kaleido "
                        "and a local Chrome/Chromium (`make notebooks`)"
                    )
    if first_figure is not None and len(loaders) != 1:
        problems.append(f"plotly.js is embedded in {len(loaders)} outputs (cells {loaders}), not 1")
    if loaders and first_figure is not None and loaders[0] > first_figure:
        problems.append(f"plotly.js comes in cell {loaders[0]}, after the first figure")
    return problems


def test_every_notebook_has_its_source():
    assert NOTEBOOKS
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_ipynb_is_built_from_its_source(source):
    """The committed .ipynb has exactly the cells of its .py (else: `make notebooks`)."""
    built = jupytext.read(source)
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in built.cells
    ], f"{source.with_suffix('.ipynb').name} is stale: run `make notebooks NOTEBOOKS={source}`"
    assert committed.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert built.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_is_executed_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    counts = [c.get("execution_count") for c in nb.cells if c.cell_type == "code"]
    # one top-to-bottom run in a fresh kernel numbers the cells 1, 2, ..., n
    assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts}"
    assert output_problems(nb, require_png=True) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path):
    """Each notebook runs top to bottom on the embedded model, without errors or stderr."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    # as `make notebooks` does: a first load of the embedded model (no cached weights yet)
    # draws a progress bar on stderr
    client.execute(env={**os.environ, "TQDM_DISABLE": "1"})
    # PNG copies need a local Chrome; whether this machine has one is not the notebook's fault
    assert output_problems(nb, require_png=False) == []


# --- the helper in steerlab.views.notebook ------------------------------------------------


@pytest.fixture
def restore_display_state():
    """notebook_setup changes process-wide state (plotly renderer, logging, progress bars)."""
    default = pio.renderers.default
    steerlab_logger = logging.getLogger("steerlab")
    level, handlers = steerlab_logger.level, list(steerlab_logger.handlers)
    hf_bars = hf_logging.is_progress_bar_enabled()
    hub_bars = not huggingface_hub.utils.are_progress_bars_disabled()
    export = {
        n: (logging.getLogger(n).propagate, list(logging.getLogger(n).handlers))
        for n in EXPORT_LOGGERS
    }
    yield
    pio.renderers.default = default
    steerlab_logger.setLevel(level)
    steerlab_logger.handlers[:] = handlers
    for name, (propagate, export_handlers) in export.items():
        logging.getLogger(name).propagate = propagate
        logging.getLogger(name).handlers[:] = export_handlers
    if hf_bars:
        hf_logging.enable_progress_bar()
    if hub_bars:
        huggingface_hub.utils.enable_progress_bars()


def _figure() -> go.Figure:
    # a label with "</script>" would end the script element early if it were not escaped
    return go.Figure(
        go.Scatter(x=[1, 2, 3], y=[0.5, -1.25, 2.0], text=["a", "</script><b>", "c"]),
        layout={"title": {"text": 'a "quoted" <title>'}, "height": 320},
    )


def test_loader_embeds_exactly_the_installed_plotlyjs():
    html = PlotlyLoader()._repr_mimebundle_()["text/html"]
    payload = re.search(r'atob\("([A-Za-z0-9+/=]+)"\)', html).group(1)
    assert gzip.decompress(base64.b64decode(payload)).decode() == get_plotlyjs()
    assert "http" not in html.replace(payload, "")  # nothing fetched from a CDN


def test_renderer_bundle_without_png():
    fig = _figure()
    bundle = NotebookRenderer(png=False).to_mimebundle(fig.to_dict())
    assert set(bundle) == {PLOTLY_MIMETYPE, "text/html"}
    html = bundle["text/html"]
    assert html.count("</script>") == 1 and "<img" not in html
    drawn = json.loads(FIGURE_JSON.search(html).group(1).replace("<\\/", "</"))
    # the live figure and the mimetype carry the figure as plotly itself serialises it
    expected = json.loads(pio.to_json(fig))
    for shown in (drawn, bundle[PLOTLY_MIMETYPE]):
        assert shown["data"] == expected["data"]
        assert shown["layout"] == expected["layout"]
        assert shown["config"]["responsive"] is True
    assert 'style="height:320px; width:100%;"' in html


def test_renderer_bundle_with_png(monkeypatch):
    png = b"\x89PNG\r\n\x1a\n fake image bytes"
    calls = []

    def fake_to_image(fig, format, width, height):  # noqa: A002 (plotly's argument name)
        calls.append((format, width, height))
        return png

    monkeypatch.setattr(notebook.pio, "to_image", fake_to_image)
    bundle = NotebookRenderer(png=True).to_mimebundle(_figure().to_dict())
    assert calls == [("png", notebook.DEFAULT_WIDTH, 320)]
    assert base64.b64decode(bundle["image/png"]) == png
    # the HTML starts as the PNG (what GitHub shows once scripts are stripped)
    assert f'src="data:image/png;base64,{bundle["image/png"]}"' in bundle["text/html"]
    assert 'alt="a &quot;quoted&quot; &lt;title&gt;"' in bundle["text/html"]


def test_setup_selects_the_renderer_and_logs_to_stdout(restore_display_state, capsys):
    loader = notebook_setup(png=False)
    assert isinstance(loader, PlotlyLoader)
    assert pio.renderers.default == RENDERER
    assert not hf_logging.is_progress_bar_enabled()
    assert huggingface_hub.utils.are_progress_bars_disabled()
    notebook_setup(png=False)  # twice: still one handler, so each record is printed once
    steerlab_logger = logging.getLogger("steerlab")
    assert sum(isinstance(h, StdoutHandler) for h in steerlab_logger.handlers) == 1
    logging.getLogger("steerlab.probes.sweep").warning("386 spans gave %d rows", 348)
    # kaleido's pipe diagnostics: with no handler, Python would print these on stderr
    logging.getLogger("choreographer.channels.pipe").error("JSONError decoding message. Ignoring")
    out = capsys.readouterr()
    assert out.out == "steerlab.probes.sweep: 386 spans gave 348 rows\n"
    assert out.err == ""


def test_setup_png_true_fails_clearly_without_a_browser(restore_display_state, monkeypatch):
    def no_browser(*args, **kwargs):
        raise RuntimeError("Kaleido requires Google Chrome to be installed.")

    monkeypatch.setattr(notebook.pio, "to_image", no_browser)
    with pytest.raises(RuntimeError, match="png=True but no PNG.*Chrome"):
        notebook_setup(png=True)
    assert notebook_setup(png=None) is not None  # the default falls back to no PNG
    assert pio.renderers[RENDERER].png is False
