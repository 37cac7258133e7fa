"""Tests for steerlab.views: the PCA summary against sklearn, the figure, the HTML report."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from sklearn.decomposition import PCA

from steerlab.datasets.corpora import CONTEXT_CLOSE, CONTEXT_OPEN
from steerlab.views import pca_summary, principal_directions, write_html


def anisotropic(n=400, d=24, seed=0):
    """Gaussian points with a decaying spectrum and a non-zero mean."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.01, d)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) * scales) @ rotation + 3.0


def test_pca_summary_matches_sklearn():
    x = anisotropic()
    k = 10
    ours = pca_summary(torch.tensor(x), n_components=k)
    ref = PCA(n_components=k, svd_solver="full").fit(x)
    assert ours.components.shape == (k, x.shape[1])
    assert ours.coords.shape == (x.shape[0], k)
    # float64 eigendecomposition of the covariance vs sklearn's float64 SVD of X: the two
    # agree to rounding, ~1e-13 on ratios of a spectrum with condition number 1e6.
    np.testing.assert_allclose(
        ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(ours.mean, ref.mean_, rtol=0, atol=1e-12)
    # Directions are defined up to sign; well-separated eigenvalues make them unique otherwise.
    cos = (ours.components.numpy() * ref.components_).sum(1)
    np.testing.assert_allclose(np.abs(cos), 1.0, atol=1e-9)
    signs = np.sign(cos)
    np.testing.assert_allclose(ours.coords.numpy(), ref.transform(x) * signs, atol=1e-8)
    # orthonormal rows
    gram = ours.components @ ours.components.T
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), atol=1e-12, rtol=0)


def test_pca_summary_input_types_and_sign_convention():
    x = anisotropic(n=100, d=6, seed=1)
    from_numpy = pca_summary(x.astype(np.float32), n_components=50)
    from_torch = pca_summary(torch.tensor(x, dtype=torch.float32), n_components=50)
    assert from_numpy.components.dtype == torch.float64
    assert from_numpy.components.shape == (6, 6)  # clipped to d
    torch.testing.assert_close(from_numpy.components, from_torch.components)
    top = from_numpy.components.gather(1, from_numpy.components.abs().argmax(1, keepdim=True))
    assert (top > 0).all()
    # all components: the ratios sum to one
    assert abs(from_numpy.explained_variance_ratio.sum().item() - 1) < 1e-12
    with pytest.raises(ValueError, match="zero variance"):
        pca_summary(np.ones((5, 3)))
    with pytest.raises(ValueError, match="shape"):
        pca_summary(np.ones(5))


def test_figure_traces_and_hover():
    x = anisotropic(n=300, d=40)
    tokens = [f"tok{i}" for i in range(300)]
    contexts = [f"before <{i}> {CONTEXT_OPEN}tok{i}{CONTEXT_CLOSE} after" for i in range(300)]
    fig = principal_directions(x, tokens=tokens, contexts=contexts, n_components=30)
    assert isinstance(fig, go.Figure)
    types = [t.type for t in fig.data]
    assert types[0] == "scatter" and types[1] == "bar" and types[2] == "scatter"
    points, bars, cumulative = fig.data[:3]
    assert points.mode == "markers" and cumulative.mode == "lines"
    assert len(points.x) == 300 and len(bars.y) == 30
    assert np.all(np.diff(cumulative.y) >= 0) and cumulative.y[-1] <= 1 + 1e-12
    assert "tok7" in points.text[7] and "<b>tok7</b>" in points.text[7]
    assert "&lt;7&gt;" in points.text[7]  # user strings are escaped
    summary = pca_summary(x, n_components=30)
    np.testing.assert_allclose(bars.y, summary.explained_variance_ratio.numpy())
    assert "% var" in fig.layout.xaxis.title.text
    # the spectrum decays fast: 90% and 99% are reached within 30 components and marked
    markers = [t for t in fig.data[3:] if t.mode == "markers"]
    assert len(markers) == 2
    assert len(fig.layout.annotations) >= 2 + 2  # 2 subplot titles + 2 threshold notes
    cum = np.cumsum(summary.explained_variance_ratio.numpy())
    assert markers[0].x[0] == int(np.argmax(cum >= 0.9)) + 1


def test_categorical_labels_one_trace_per_class():
    x = anisotropic(n=200, d=8)
    labels = ["noun", "verb", "adj", "noun"] * 50
    fig = principal_directions(x, labels=labels, label_name="pos")
    scatters = [t for t in fig.data if t.xaxis == "x"]
    assert sorted(t.name for t in scatters) == ["adj", "noun", "verb"]
    assert sum(len(t.x) for t in scatters) == 200
    assert all(t.showlegend is not False for t in scatters)
    noun = next(t for t in scatters if t.name == "noun")
    assert all("pos: noun" in h for h in noun.text)


def test_numeric_labels_colour_scale_and_subsample():
    x = anisotropic(n=3000, d=8)
    labels = torch.arange(3000, dtype=torch.float32)
    fig = principal_directions(x, labels=labels, max_points=500, seed=3)
    points = fig.data[0]
    assert points.marker.showscale and len(points.x) == 500
    assert len(points.marker.color) == 500
    # the same seed draws the same points
    again = principal_directions(x, labels=labels, max_points=500, seed=3)
    np.testing.assert_array_equal(points.x, again.data[0].x)
    with pytest.raises(ValueError, match="labels has 2 entries"):
        principal_directions(x, labels=[1, 2])


@pytest.fixture(scope="module")
def small_fig():
    return principal_directions(anisotropic(n=50, d=5), n_components=5)


def test_write_html_inlines_plotly(tmp_path, small_fig):
    path = write_html(
        [small_fig, small_fig],
        tmp_path / "out" / "report.html",
        title="My <PCA> report",
        notes="first & only\n\nsecond <script>",
    )
    text = path.read_text()
    assert path.stat().st_size > 1_000_000  # plotly.js (~4.5 MB) is inlined: works offline
    assert "plotly" in text.lower()
    assert "<h1>My &lt;PCA&gt; report</h1>" in text
    assert "first &amp; only" in text and "second &lt;script&gt;" in text
    assert 'src="https://cdn.plot.ly' not in text
    # the bundle is included once, not per figure
    assert text.count("Plotly.newPlot") == 2
    assert path.stat().st_size < 2 * small_fig.to_html(include_plotlyjs=True).__len__()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp files left


def test_write_html_sections_without_js(tmp_path, small_fig):
    path = write_html(
        {"layer 6": small_fig, "layer <8>": small_fig}, tmp_path / "r.html", include_plotlyjs=False
    )
    text = path.read_text()
    assert path.stat().st_size < 200_000
    assert "<h2>layer 6</h2>" in text and "<h2>layer &lt;8&gt;</h2>" in text
    assert "<title>steerlab report</title>" in text
    with pytest.raises(ValueError):
        write_html([], tmp_path / "empty.html")
    with pytest.raises(TypeError):
        write_html(["not a figure"], tmp_path / "bad.html")


# --- attention sinks left out of the fit (issue 13) ---------------------------------------------


def test_excluded_rows_left_out_of_fit_and_drawn_apart():
    x = anisotropic(n=400, d=12, seed=2)
    sink = np.zeros(400, dtype=bool)
    sink[::50] = True  # 8 rows with massive norms, as attention sinks have
    x[sink] *= 60
    fig = principal_directions(x, exclude=sink, n_components=12)
    # the fit is the PCA of the other rows (sklearn as the reference)
    ref = PCA(n_components=12, svd_solver="full").fit(x[~sink])
    bars = fig.data[1]
    np.testing.assert_allclose(bars.y, ref.explained_variance_ratio_, rtol=1e-9, atol=1e-12)
    assert "PCA of 392 rows" in fig.layout.title.text
    assert "8 attention-sink rows left out" in fig.layout.title.text
    (apart,) = [t for t in fig.data if t.name and t.name.startswith("attention-sink rows")]
    assert len(apart.x) == 8 and "8 of 8 beyond the axes" in apart.name
    # the axes cover the kept rows, not the sinks: no squashing
    lo, hi = fig.layout.xaxis.range
    kept = fig.data[0]
    assert np.percentile(kept.x, 99) < hi and np.percentile(kept.x, 1) > lo
    assert hi - lo < 3 * (np.max(kept.x) - np.min(kept.x))
    # hovers give the PC coordinates
    assert "PC1 %{x:.2f}" in kept.hovertemplate and "customdata[0]" in apart.hovertemplate
    with pytest.raises(ValueError, match="exclude has 3"):
        principal_directions(x, exclude=[True, False, True])


def test_title_counts_fitted_and_drawn_rows():
    x = anisotropic(n=600, d=6)
    fig = principal_directions(x, max_points=100)
    assert fig.layout.title.text.startswith("Principal directions: PCA of 600 rows")
    assert "100 of them drawn" in fig.layout.title.text
