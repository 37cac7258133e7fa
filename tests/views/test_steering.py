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


# --- layout regressions (issue 13) -------------------------------------------------------------


def test_sweep_perplexity_panel_log_axis_covers_data_and_baselines():
    # The baselines' labels used to sit at 10**value on the log axis (annotations take log10
    # units there), stretching it to ~10**4.9 and squashing the data at the bottom.
    import math

    fig = sweep_figure(SWEEP)
    ax = fig.layout.yaxis2
    assert ax.type == "log" and ax.range is not None
    ppl = [r["perplexity"] for r in SWEEP["table"]]  # points and both baselines
    lo, hi = ax.range
    assert lo <= math.log10(min(ppl)) and hi >= math.log10(max(ppl))
    # no more than a factor 1.5 of head room either side (the padding is 1.15)
    assert math.log10(min(ppl)) - lo < math.log10(1.5) and hi - math.log10(max(ppl)) < math.log10(
        1.5
    )
    labels = [a for a in fig.layout.annotations if a.yref == "y2"]
    assert sorted(a.text for a in labels) == ["prompt +", "prompt −"]
    for a in labels:
        assert lo <= a.y <= hi  # in log10 units, on its line
    # the linear panels keep data-unit labels
    concept = [a for a in fig.layout.annotations if a.yref == "y"]
    assert sorted(a.y for a in concept) == [-0.3, 0.7]


def test_sweep_lines_break_across_alpha_zero_without_data():
    table = [r for r in SWEEP["table"] if r["alpha"] != 0.0]  # no unsteered point
    fig = sweep_figure({"concept": "sentiment", "table": table})
    assert list(fig.data[0].x) == [-1.0, None, 1.0] and fig.data[0].y[1] is None
    assert not fig.data[0].connectgaps


def test_sweep_axis_and_legend_labels_are_words():
    fig = sweep_figure(SWEEP)
    for t in fig.data:
        assert "_" not in t.hovertemplate.split("<br>")[1]  # "combined pos", not combined_pos
    assert all(a.title.text == "α" for a in (fig.layout.xaxis, fig.layout.xaxis6))


def test_token_projection_short_text_is_readable():
    # 120 + 34·rows left a 2-row text an ~8 px plot under Plotly's default 100 + 80 px
    # margins, with the vertical colour bar's labels on top of each other.
    toks = [f"t{i}" for i in range(20)]
    fig = token_projection_figure(toks, torch.arange(20.0), per_row=16)
    m = fig.layout.margin
    plot_px = fig.layout.height - m.t - m.b
    assert plot_px >= 2 * 34  # two rows of 34 px
    bar = fig.data[0].colorbar
    assert bar.orientation == "h" and bar.yref == "container" and bar.y == 0
    assert m.b >= 50  # room for the horizontal bar and its labels under the grid
    one_row = token_projection_figure(toks[:3], torch.arange(3.0))
    assert one_row.layout.height == fig.layout.height  # a one-line text gets the same room
    tall = token_projection_figure(toks * 8, torch.arange(160.0), per_row=16)
    assert tall.layout.height - fig.layout.height == 34 * (10 - 2)


def test_token_projection_decodes_bpe_strings():
    fig = token_projection_figure(["Ġhelpful", "Ċ", "Ġ"], torch.tensor([1.0, 2.0, 3.0]))
    assert list(fig.data[0].text[0][:3]) == [" helpful", "⏎", "␣"]
