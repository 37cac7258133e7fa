"""Probe figures: spelled-out labels, reference lines, no line across α = 0 without data."""

from __future__ import annotations

import pytest

from steerlab.views.probes import flip_rates, layer_curves

ROWS = [{"layer": L, "task_acc": 0.9 + L / 100, "control_acc": 0.8, "selectivity": 0.1 + L / 100,
         "majority": 0.45} for L in (0, 3, 6)]  # fmt: skip


def test_layer_curves_labels_are_words_not_field_names():
    fig = layer_curves(ROWS, ["task_acc", "control_acc", "selectivity"])
    assert [t.name for t in fig.data] == ["task accuracy", "control-task accuracy",
                                          "selectivity (task − control)"]  # fmt: skip
    assert fig.layout.yaxis.title.text == (
        "task accuracy, control-task accuracy, selectivity (task − control)"
    )
    assert "_" not in fig.layout.yaxis.title.text
    assert fig.layout.xaxis.title.text == "layer"


def test_layer_curves_reference_line_and_range():
    fig = layer_curves(ROWS, ["task_acc"], reference={"majority": 0.45}, y_range=(0, 1))
    assert fig.layout.shapes[0].y0 == 0.45 and fig.layout.annotations[0].y == 0.45
    assert list(fig.layout.yaxis.range) == [0, 1]
    unsorted = layer_curves(list(reversed(ROWS)), ["task_acc"])
    assert list(unsorted.data[0].x) == [0, 3, 6]  # lines run in layer order


def test_flip_rates_do_not_draw_through_alpha_zero():
    rows = [{"direction": d, "alpha": a, "flip_rate": 0.1 + 0.01 * a, "ci_low": 0.0,
             "ci_high": 0.3, "flips": 3, "n": 30} for d in ("pls", "random") for a in (-4, -2, 2, 4)]  # fmt: skip
    fig = flip_rates(rows)
    pls = fig.data[0]
    assert list(pls.x) == [-4, -2, None, 2, 4] and pls.y[2] is None and not pls.connectgaps
    assert pls.error_y.array[2] is None and len(pls.error_y.array) == 5
    assert fig.layout.yaxis.title.text == "answer-flip rate"
    with_zero = flip_rates([{**r, "alpha": 0} for r in rows[:1]] + rows[1:4])
    assert None not in list(with_zero.data[0].x)  # data at 0: one unbroken line
    assert flip_rates(rows, rate="ci_high").layout.yaxis.title.text == "ci high"
    with pytest.raises(ValueError):
        flip_rates([])
