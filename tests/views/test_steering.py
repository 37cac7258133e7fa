"""The steering figures: structure of the sweep figure and the token views."""

import plotly.graph_objects as go
import pytest
import torch

from steerlab.views import write_html
from steerlab.views.steering import sweep_figure, token_projection_figure, token_projection_html


def _row(label, alpha, pole, x):
    return {"label": label, "alpha": alpha, "pole": pole, "concept": x, "perplexity": 2 + x,
            "repetition": 0.1, "fluency": 0.9, "relevance": 0.8, "combined_pos": max(x, 0),
            "combined_neg": max(-x, 0)}  # fmt: skip


SWEEP = {
    "concept": "sentiment",
    "table": [_row("alpha=+1", 1.0, None, 0.8), _row("unsteered", 0.0, None, 0.1),
              _row("alpha=-1", -1.0, None, -0.5), _row("prompt+1", None, 1, 0.7),
              _row("prompt-1", None, -1, -0.3)],
}  # fmt: skip


def test_sweep_figure_panels_and_baselines(tmp_path):
    fig = sweep_figure(SWEEP)
    assert isinstance(fig, go.Figure)
    concept = fig.data[0]
    assert list(concept.x) == [-1.0, 0.0, 1.0] and list(concept.y) == [-0.5, 0.1, 0.8]
    # five one-line panels + two lines in the combined panel
    assert len(fig.data) == 7
    combined = [t for t in fig.data if t.name.startswith("towards")]
    assert [list(t.y) for t in combined] == [[0, 0.1, 0.8], [0.5, 0, 0]]
    # one dashed baseline per pole in each of the six panels
    hlines = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert len(hlines) == 12 and {s.y0 for s in hlines} >= {0.7, -0.3}
    assert fig.layout.yaxis2.type == "log"
    html = write_html(fig, tmp_path / "s.html")
    assert "sentiment" in html.read_text()
    with pytest.raises(TypeError):
        sweep_figure([1, 2])


def test_token_views():
    toks, scores = ["Good", " morning", "<\n>"], torch.tensor([1.0, 2.0, 6.0])
    fig = token_projection_figure(toks, scores, per_row=2, center=None)
    z = fig.data[0].z
    assert [list(r) for r in z] == [[1.0, 2.0], [6.0, None]]
    assert fig.data[0].text[1][0] == "<⏎>"
    centred = token_projection_figure(toks, scores, center="mean")
    assert centred.data[0].z[0][0] == pytest.approx(-2.0)
    html = token_projection_html(toks, scores, center=0.0)
    assert html.count("<span") == 3 and "&lt;" in html and 'title="6.000"' in html
    assert "rgba(33,102,172,1.00)" in html  # the largest value is fully saturated
    with pytest.raises(ValueError):
        token_projection_figure(toks, scores[:2])
