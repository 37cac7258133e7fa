"""Erasure figures: rank 0 stays visible when INLP's long runs spread the rank axis."""

from __future__ import annotations

import math

import pytest

from steerlab.erasure.evaluation import RankCurve, RankCurves
from steerlab.views.erasure import accuracy_vs_rank_figure, probe_by_site_figure

INLP_RANKS = [0, 1, 2, 4, 10, 20, 40]
CURVES = RankCurves(
    {"leace": RankCurve("leace", [0, 1], [0.98, 0.49], [0.0, 9.0], [None, None]),
     "inlp": RankCurve("inlp", INLP_RANKS, [0.98, 0.95, 0.94, 0.93, 0.92, 0.87, 0.85],
                       [0.0, 1, 2, 3, 4, 5, 6], [None] * 7)},
    0.508, 0.98, 0.492,
)  # fmt: skip


def test_inlp_rank_axis_keeps_rank_zero():
    # Ranks beyond 16 used to turn the x axis to log, which cannot show rank 0 (no erasure).
    fig = accuracy_vs_rank_figure(CURVES)
    ax = fig.layout.xaxis
    assert ax.type == "linear"
    lo, hi = ax.range
    for trace in fig.data:
        assert all(lo < x < hi for x in trace.x)  # every point, rank 0 included, is on the axis
        assert trace.customdata[0][0] == 0  # hover reports the real rank
    inlp = fig.data[1]
    # positions are log2(rank) (rank 0 drawn at −1); float64 logs: compare with a tolerance
    assert list(inlp.x[:2]) == pytest.approx([-1.0, 0.0], abs=1e-12)
    assert inlp.x[-1] == pytest.approx(math.log2(40), rel=1e-12)
    assert ax.ticktext[0] == "0 (none)" and "40" in ax.ticktext
    assert list(ax.tickvals[:3]) == pytest.approx([-1.0, 0.0, 1.0], abs=1e-12)  # ranks 0, 1, 2


def test_small_ranks_stay_linear_and_majority_is_labelled():
    small = RankCurves({"leace": CURVES.curves["leace"]}, 0.508, 0.98, 0.492)
    fig = accuracy_vs_rank_figure(small)
    assert list(fig.data[0].x) == [0.0, 1.0] and list(fig.layout.xaxis.range) == [-0.5, 1.5]
    texts = [a.text for a in fig.layout.annotations]
    assert "majority 0.508" in texts and "constant (training majority) 0.492" in texts
    lo, hi = fig.layout.yaxis.range
    assert lo < 0.492 and hi > 0.98  # both reference lines and the data are inside


def test_probe_by_site_majority_label_on_its_line():
    fig = probe_by_site_figure({"resid_post.0": (0.7, 0.6), "resid_post.3": (0.9, 0.3)}, 0.5)
    ann = [a for a in fig.layout.annotations if a.text == "majority 0.500"]
    assert len(ann) == 1 and ann[0].y == 0.5 and fig.layout.shapes[0].y0 == 0.5
