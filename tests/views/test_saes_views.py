"""SAE views: the data helpers against brute force, and every figure builds."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from steerlab.capture.store import ActivationStore, StoreWriter
from steerlab.saes import SaeConfig, activation_stats, build_sae
from steerlab.views import write_html
from steerlab.views.saes import (
    density_figure,
    explained_variance_by_rank,
    latent_dashboard,
    logit_effects,
    top_activations,
    training_curves,
)


def small_store(path, model, n_seq: int = 6, seq: int = 16) -> ActivationStore:
    """Random activations over real token ids, whole windows in order (as a capture writes)."""
    g = torch.Generator().manual_seed(0)
    n = n_seq * seq
    ids = torch.randint(100, 5000, (n,), generator=g)
    x = torch.randn(n, model.d_model, generator=g)
    with StoreWriter(path, model_id=model.model_id, sites={"resid_post.3": model.d_model},
                     shard_tokens=40, config={"seq_len": seq}) as w:  # fmt: skip
        for i in range(0, n, seq):
            rows = torch.arange(i, i + seq)
            w.add({"resid_post.3": x[rows]}, ids[rows], rows // seq, rows % seq, 1)
        w.finish()
    return ActivationStore(path)


def test_top_activations_and_dashboard(tmp_path, model):
    store = small_store(tmp_path / "s", model)
    sae = build_sae(SaeConfig(d_in=model.d_model, d_sae=32, k=4, site="resid_post.3"))
    X = store.site("resid_post.3").to_tensor()
    Z = sae.encode_dense(X).detach()
    lat = [0, 5, 17]
    top = top_activations(sae, store, lat, n=3, batch_size=7)  # batches cross windows
    ref = Z[:, lat].T.topk(3, dim=1)
    torch.testing.assert_close(top.values, ref.values.clamp_min(0))
    live = ref.values > 0
    assert torch.equal(top.rows[live], ref.indices[live])
    torch.testing.assert_close(top.density, (Z[:, lat] > 0).float().mean(0))
    assert top.n_tokens == X.shape[0]

    eff = logit_effects(sae, model, lat, n=5)
    W_U = model.model.get_output_embeddings().weight.detach().float()
    manual = (sae.W_dec[lat].detach() * model.model.model.norm.weight.detach()) @ W_U.T
    assert torch.equal(eff.top_ids, manual.topk(5, dim=1).indices)
    torch.testing.assert_close(eff.bottom_values, manual.topk(5, dim=1, largest=False).values)

    figs = latent_dashboard(sae, store, model, lat, n_contexts=3, n_logits=4, window=4)
    assert len(figs) == 3 and all(isinstance(f, go.Figure) for f in figs.values())
    cells = next(iter(figs.values())).data[0].cells.values[1]
    assert all("<b>" in c for c in cells)  # the token is highlighted in each context
    out = write_html(figs, tmp_path / "dash.html")
    assert "promoted" in out.read_text()


def test_curves_density_spectrum_build():
    log = [{"tokens": 100 * i, "fvu": 1 / i, "l0": 8.0, "dead_frac": 0.1 / i} for i in range(1, 6)]
    assert isinstance(training_curves(log), go.Figure)
    fig = training_curves({"a": log, "b": log})
    assert len(fig.data) == 6
    dens = torch.tensor([0.0, 0.0, 1e-3, 1e-2, 0.5])
    fig = density_figure({"x": dens})
    assert "2 dead (40.0%)" in fig.data[0].name and sum(fig.data[0].y) == 3
    x = torch.randn(500, 8) @ torch.diag(torch.tensor([5.0, 3, 1, 0.1, 0.1, 0.1, 0.01, 0.01]))
    st = activation_stats(x, n_tokens=None)
    fig = explained_variance_by_rank({"site": st})
    assert fig.data[0].name.startswith(f"site: {st.effective_rank(0.99)}/8")
