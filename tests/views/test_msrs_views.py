"""MSRS gate figure: decoded tokens on the axis, never wider than a page."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from steerlab.views.msrs import _MAX_WIDTH, _TICK_PX, gate_figure


def _trace(n: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(gates=torch.rand(n, 2, generator=g),
                           scores=torch.rand(n, 2, generator=g), names=["shared", "sentiment"])  # fmt: skip


def test_gate_figure_shows_decoded_tokens_not_bpe():
    toks = ["<|im_start|>", "user", "Ċ", "ĠBe", "Ġhelpful", "."]
    fig = gate_figure(_trace(6), toks, chosen={"sentiment": 4})
    ax = fig.layout.xaxis2
    assert list(ax.ticktext) == ["<|im_start|>", "user", "⏎", " Be", " helpful", "."]
    assert not any("Ġ" in t or "Ċ" in t for t in ax.ticktext)
    assert "4:  helpful" in fig.data[0].customdata[0][4]
    marker = fig.data[-1]
    assert marker.x == (4,) and "helpful" in marker.hovertext


def test_gate_figure_long_text_thins_ticks_instead_of_scrolling():
    n = 400
    fig = gate_figure(_trace(n), ["Ġa"] * n)
    assert fig.layout.width == _MAX_WIDTH
    ticks = fig.layout.xaxis2.tickvals
    assert len(ticks) * _TICK_PX <= _MAX_WIDTH - 160  # rotated labels have their room
    assert ticks[0] == 0 and len(ticks) >= 40
    with pytest.raises(ValueError, match="start"):
        gate_figure(_trace(3), ["a", "b", "c"], start=3)
