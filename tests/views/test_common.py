"""The shared view helpers: token display against the tokenizer itself, reference lines on log
axes, gaps at α = 0, labels."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from steerlab.views.common import (
    display_token,
    display_tokens,
    gap_at_zero,
    log_range,
    pretty_label,
    ref_line,
)


def test_display_token_decodes_byte_level_bpe_like_the_tokenizer(model):
    # Independent reference: the tokenizer's own decode of each id, against the raw BPE string
    # convert_ids_to_tokens gives (what gate_figure and notebooks were handed).
    text = "Be helpful.\n\tIt's café time — ok?"
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    raw = model.tokenizer.convert_ids_to_tokens(ids)
    assert any("Ġ" in t or "Ċ" in t for t in raw)  # the input really is BPE-encoded
    for i, r in zip(ids, raw):
        decoded = model.tokenizer.decode([i])
        if "\ufffd" in decoded:  # a multi-byte character split across tokens
            continue
        expected = decoded.replace("\n", "⏎").replace("\t", "⇥")
        if expected and not expected.strip(" "):
            expected = "␣" * len(expected)
        assert display_token(r) == expected, (r, decoded)
    assert "".join(display_tokens(raw)).startswith("Be helpful.⏎")


def test_display_token_leaves_decoded_text_alone():
    for text in (" helpful", "café", "naïve", "€", "日本"):
        assert display_token(text) == text
    assert display_token("▁the") == " the"  # SentencePiece marker
    assert display_token("\n\n") == "⏎⏎" and display_token("  ") == "␣␣"
    assert display_token("") == ""


def test_ref_line_label_sits_on_a_log_axis():
    fig = make_subplots(rows=1, cols=2)
    fig.add_scatter(x=[0, 1], y=[2.0, 3.0], row=1, col=1)
    fig.add_scatter(x=[0, 1], y=[2.0, 3.0], row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=2)
    ref_line(fig, 4.9, label="prompt +", log=True, row=1, col=2)
    ref_line(fig, 0.5, label="linear", row=1, col=1)
    shapes, anns = fig.layout.shapes, fig.layout.annotations
    assert [s.yref for s in shapes] == ["y2", "y"]
    # the shape takes data units, the log-axis annotation log10 units (Plotly's conventions)
    assert shapes[0].y0 == 4.9 and anns[0].yref == "y2"
    assert anns[0].y == pytest.approx(math.log10(4.9), abs=1e-12)
    assert anns[1].y == 0.5 and anns[1].yref == "y"
    vfig = go.Figure(go.Scatter(x=[8, 512], y=[0, 1]))
    vfig.update_xaxes(type="log")
    ref_line(vfig, 64, axis="x", label="peak", log=True)
    assert vfig.layout.annotations[0].x == pytest.approx(math.log10(64), abs=1e-12)
    assert vfig.layout.shapes[0].x0 == 64
    with pytest.raises(ValueError, match="> 0"):
        ref_line(vfig, 0.0, axis="x", log=True)


def test_log_range_and_gap_at_zero():
    lo, hi = log_range([2.0, 4.0, float("nan"), -1.0, 0.0], pad=2.0)
    assert (lo, hi) == pytest.approx((0.0, math.log10(8.0)), abs=1e-12)
    with pytest.raises(ValueError):
        log_range([0.0, float("nan")])
    assert gap_at_zero([4, -4, 2, -2], list("abcd")) == ([-4, -2, None, 2, 4],
                                                        ["b", "d", None, "c", "a"])  # fmt: skip
    assert gap_at_zero([-1, 0, 1], [1, 2, 3]) == ([-1, 0, 1], [1, 2, 3])  # data at 0: no gap
    assert gap_at_zero([1, 2], [1, 2]) == ([1, 2], [1, 2])  # one side only


def test_pretty_label():
    assert pretty_label("task_acc") == "task accuracy"
    assert pretty_label("flip_rate") == "answer-flip rate"
    assert pretty_label("some_new_field") == "some new field"
