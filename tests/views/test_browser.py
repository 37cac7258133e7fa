"""Every view opened in headless Chromium (the report: tests/test_report.py): no JavaScript error, every Plotly
div drawn, screenshots with more than a few colours (saved under runs/browser/).

Marker ``browser``. Without Chromium these tests skip, unless ``STEERLAB_REQUIRE_BROWSER`` is
set (CI sets it to 1), when they fail.
"""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.browser

_spec = importlib.util.spec_from_file_location("chromium", Path(__file__).with_name("chromium.py"))
chromium = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chromium)

MIN_COLOURS = 8
"""A drawn figure has axes, text, grid and data in several colours; a blank one has 1-3."""


@pytest.fixture(scope="module")
def browser():
    with chromium.open_or_skip() as b:
        yield b


# --- the PNG decoder, against PNGs encoded here with every filter type -----------------------


def _png(pixels: np.ndarray, filters: list[int]) -> bytes:
    """Encode ``[h, w, 3]`` uint8 with the given filter per row (the PNG spec's definitions)."""
    h, w, bpp = pixels.shape
    x = pixels.reshape(h, w * bpp).astype(np.int64)
    out = bytearray()
    for y in range(h):
        prev = x[y - 1] if y else np.zeros(w * bpp, dtype=np.int64)
        cur, f = x[y], filters[y % len(filters)]
        left = np.concatenate([np.zeros(bpp, dtype=np.int64), cur[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, dtype=np.int64), prev[:-bpp]])
        if f == 0:
            pred = np.zeros_like(cur)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - ul
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, ul))
        out += bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out)))
            + chunk(b"IEND", b""))  # fmt: skip


def test_png_decoder_round_trip_every_filter():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (23, 17, 3), dtype=np.uint8)
    img[5:9] = img[4]  # repeated rows and flat areas, as screenshots have
    png = _png(img, [0, 1, 2, 3, 4, 4, 3, 1])
    np.testing.assert_array_equal(chromium.png_pixels(png), img)
    flat = np.zeros((8, 8, 3), dtype=np.uint8)
    flat[:, 4:] = (255, 0, 0)
    assert chromium.distinct_colours(_png(flat, [4])) == 2


# --- each standalone view -------------------------------------------------------------------


def _views():
    from steerlab.erasure.evaluation import RankCurve, RankCurves
    from steerlab.probes.ast.trees import Tree
    from steerlab.views import principal_directions
    from steerlab.views.ast import f1_by_layer, f1_by_rank, tree_pair
    from steerlab.views.erasure import (
        accuracy_vs_rank_figure,
        erasure_pca_figure,
        probe_by_site_figure,
    )
    from steerlab.views.msrs import attribute_scores_figure, gate_figure, interference_figure
    from steerlab.views.probes import flip_rates, layer_curves, pls_components
    from steerlab.views.saes import (
        LatentCard,
        density_figure,
        explained_variance_by_rank,
        latent_card_figure,
        training_curves,
    )
    from steerlab.views.steering import sweep_figure, token_projection_figure

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, generator=g) * torch.linspace(3, 0.1, 12)
    x[::60] *= 40  # sinks
    sweep = {"concept": "sentiment", "table": [
        {"label": lab, "alpha": a, "pole": p, "concept": c, "perplexity": ppl, "repetition": 0.1,
         "fluency": 0.8, "relevance": 0.7, "combined_pos": max(c, 0), "combined_neg": max(-c, 0)}
        for lab, a, p, c, ppl in (("alpha=-0.2", -0.2, None, -0.4, 3.9), ("unsteered", 0.0, None,
                                  0.5, 2.4), ("alpha=+0.2", 0.2, None, 0.9, 3.2), ("prompt+1",
                                  None, 1, 0.6, 2.6), ("prompt-1", None, -1, 0.1, 2.8))]}  # fmt: skip
    stmts, leaves = [], []
    for i in range(20):
        names = [f"v{i}_{j}" for j in range(3)]
        leaves += names
        stmts.append(Tree("expression_statement", (Tree("call", tuple(Tree(n) for n in names)),)))
    tree = Tree("module", tuple(stmts))
    rows = [{"layer": L, "task_acc": 0.9, "control_acc": 0.8 - L / 100, "selectivity": 0.1 + L / 100,
             "majority": 0.45, "r2": 0.5 + L / 60} for L in range(0, 30, 3)]  # fmt: skip
    curves = RankCurves({
        "leace": RankCurve("leace", [0, 1], [0.98, 0.49], [0.0, 9.0], [None] * 2),
        "inlp": RankCurve("inlp", [0, 1, 10, 40], [0.98, 0.95, 0.9, 0.85], [0, 1, 2, 3], [None] * 4),
    }, 0.508, 0.98, 0.492)  # fmt: skip
    trace = SimpleNamespace(gates=torch.rand(30, 2, generator=g), scores=torch.rand(30, 2, generator=g),
                            names=["shared", "sentiment"])  # fmt: skip
    card = LatentCard(7, 0.01, 3.2, ["the <b><span style='color:#d62728'>[cat]</span></b> sat"] * 3,
                      [3.2, 2.0, 1.1], [(" dog", 0.5)] * 4, [(" the", -0.4)] * 4)  # fmt: skip
    log = [
        {"tokens": 1000 * i, "fvu": 1 / i, "l0": 32.0, "dead_frac": 0.1 / i} for i in range(1, 20)
    ]
    return {
        "pca": principal_directions(
            x, exclude=torch.arange(600) % 60 == 0, tokens=[f"t{i}" for i in range(600)]
        ),
        "sweep": sweep_figure(sweep),
        "token_projection_2_rows": token_projection_figure(
            ["Ġgood", "Ċ"] * 10, torch.linspace(-1, 1, 20)
        ),
        "tree_pair": tree_pair(
            tree, Tree("module", stmts[::-1]), leaves, code="def f(x):\n  return x"
        ),
        "f1_by_rank": f1_by_rank(
            [
                {"rank": r, "f1": 0.3, "dev_f1": 0.3 + (r == 64) * 0.1}
                for r in (8, 16, 64, 256, 576)
            ],
            d_model=576,
        ),  # fmt: skip
        "f1_by_layer": f1_by_layer(
            [{"depth": d, "site": f"s{d}", "f1": 0.3 + d / 100} for d in range(8)],
            embeddings_f1=0.28,
        ),  # fmt: skip
        "accuracy_vs_rank_inlp": accuracy_vs_rank_figure(curves),
        "probe_by_site": probe_by_site_figure(
            {f"resid_post.{i}": (0.6 + i / 40, 0.5) for i in range(10)}, 0.508
        ),  # fmt: skip
        "erasure_pca": erasure_pca_figure(
            x[:200], x[:200] * 0.5, torch.arange(200) % 2, class_names=["female", "male"]
        ),  # fmt: skip
        "layer_curves": layer_curves(
            rows, ["task_acc", "control_acc", "selectivity"], reference={"majority": 0.45}
        ),  # fmt: skip
        "pls_components": pls_components(
            torch.randn(30, 3, generator=g),
            torch.arange(30.0),
            [f"e{i}" for i in range(30)],
            value_name="year",
        ),  # fmt: skip
        "flip_rates": flip_rates(
            [
                {"direction": d, "alpha": a, "flip_rate": 0.2, "ci_low": 0.1, "ci_high": 0.3}
                for d in ("pls", "random")
                for a in (-4, 4)
            ]
        ),  # fmt: skip
        "gate": gate_figure(trace, ["Ġhello", "Ċ", "Ġworld"] * 10, chosen={"sentiment": 4}),
        "attribute_scores": attribute_scores_figure(
            {
                "joint": {
                    "msrs": {"concept": 0.5, "fluency": 0.8},
                    "caa": {"concept": 0.4, "fluency": 0.9},
                }
            }
        ),  # fmt: skip
        "interference": interference_figure(
            {"msrs": {"a": {"a": 0.5, "b": 0.1}, "b": {"a": -0.2, "b": 0.6}}}
        ),  # fmt: skip
        "training_curves": training_curves(log),
        "density": density_figure(torch.cat([torch.zeros(10), torch.rand(200, generator=g) / 10])),
        "explained_variance": explained_variance_by_rank({"site": torch.linspace(1, 0, 50) / 25}),
        "latent_card": latent_card_figure(card),
    }


def test_every_view_draws_in_chromium(browser, tmp_path):
    from steerlab.views import write_html

    figs = _views()
    for name, fig in figs.items():
        path = write_html(fig, tmp_path / f"{name}.html", title=name)
        page = chromium.check_page(browser, path, f"view-{name}", MIN_COLOURS)
        assert len(page.figures) == 1
