# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sparse autoencoders: train, measure, splice, inspect
#
# A TopK sparse autoencoder (Makhzani & Frey 2013; Gao et al. 2024) rewrites an activation `x` as a
# few latents: `z = ReLU(TopK_k(W_enc(x − b_dec) + b_enc))`, `x̂ = z W_dec + b_dec`. This notebook
# runs on the embedded **SmolLM2-135M-Instruct** at a deliberately tiny scale (a few thousand
# tokens, 1,024 latents) so that it finishes in a couple of minutes on a CPU; the recipes in `saes/`
# run the same code at full size. We capture two sites of layer 6, measure how many directions they
# use, train several SAEs from one read of the store, and check them three ways: reconstruction (FVU
# about the mean), sparsity and dead latents, and the language model's loss when the SAE replaces
# the activations.

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()  # figures as interactive plot + HTML + PNG; no progress bars

# %%
import tempfile
from pathlib import Path

import torch

from steerlab import load_model
from steerlab.capture import capture_to_store
from steerlab.datasets.corpora import chunk_tokens, load_texts
from steerlab.interventions import steer
from steerlab.saes import (
    SaeConfig,
    TrainConfig,
    activation_stats,
    evaluate,
    load_saelens,
    save_saelens,
    train,
)
from steerlab.saes.splice import SaeSplice, spliced_losses, store_windows
from steerlab.views.saes import (
    density_figure,
    explained_variance_by_rank,
    latent_dashboard,
    training_curves,
)

torch.manual_seed(0)
model = load_model()
chunks = chunk_tokens(model.tokenizer, load_texts("prose"), seq_len=128, n_tokens=8192)
tmp = tempfile.TemporaryDirectory()  # the store and the SAELens files; removed at exit
store = capture_to_store(
    model, chunks, ["attn_out.6", "resid_post.6"], f"{tmp.name}/l6", shard_tokens=2048
)
print(f"{store.n_tokens} tokens of {sorted(store.sites)} in {store.n_shards} shards")

# %% [markdown]
# ## How many directions does each site use?
#
# Wang et al. (2025, *Attention layers add into low-dimensional residual subspaces*) found that
# attention outputs occupy far fewer directions than the residual stream. `activation_stats` streams
# the mean and covariance in float64; the effective rank is the number of principal directions that
# explain 99% of the variance.

# %%
stats = {s: activation_stats(store, s, n_tokens=None) for s in store.sites}
for s, st in stats.items():
    print(f"{s:>13}: effective rank {st.effective_rank(0.99)} of {model.d_model}")
explained_variance_by_rank(stats, title="SmolLM2-135M layer 6")

# %% [markdown]
# ## Train several SAEs from one read of the store
#
# Three inits on `attn_out.6` (random, tied, and the active-subspace init that puts every decoder
# row inside the top principal subspace) and one SAE on `resid_post.6`, all fed by the same shuffled
# batches. AuxK is off here so that the init alone decides which latents die; `dead_tokens` is the
# window after which a silent latent counts as dead.

# %%
configs = [
    SaeConfig(d_in=576, d_sae=1024, k=16, site="attn_out.6", init=i, model_id=model.model_id)
    for i in ("random", "tied", "active_subspace")
]
configs.append(
    SaeConfig(
        d_in=576,
        d_sae=1024,
        k=16,
        site="resid_post.6",
        init="active_subspace",
        model_id=model.model_id,
    )
)
cfg = TrainConfig(
    batch_size=512,
    max_tokens=4 * 8192,
    warmup_steps=8,
    auxk_alpha=0.0,
    dead_tokens=4096,
    init_tokens=4096,
    log_every=4,
)
logs = {c.name: [] for c in configs}


def log(p):
    for name, m in p.metrics.items():
        logs[name].append({"tokens": p.tokens, **m})


result = train(store, configs, cfg, callback=log)
for name, rep in result.init_reports.items():
    print(f"{name:<45} d_active {rep['d_active']:>3}  encoder scale {rep['encoder_scale']:.2f}")
training_curves(logs)

# %% [markdown]
# ## Reconstruction, sparsity, dead latents
#
# `evaluate` accumulates `Σ‖x − x̂‖²` and `Σ‖x − x̄‖²` separately in float64 over the whole store,
# so FVU is about the mean of all tokens and does not depend on batching. A latent is dead here if
# it never fires on any of the store's tokens.

# %%
metrics = {n: evaluate(sae, store) for n, sae in result.saes.items()}
for n, m in metrics.items():
    print(f"{n:<45} FVU {m.fvu:.3f}  L0 {m.l0:4.1f}  dead {100 * m.dead_frac:5.1f}%")
density_figure(
    {n.split(".w")[0] + " " + n.rsplit(".", 1)[-1]: m.density for n, m in metrics.items()}
)

# %% [markdown]
# ## Splice the SAE into the model
#
# `SaeSplice` is a steering intervention whose edit is `h ← x̂(h)`. Cross-entropy loss recovered is
# `(L_ablated − L_spliced) / (L_ablated − L_clean)`, against zero- and mean-ablation of the site;
# the KL version compares next-token distributions with the clean model's. The windows are the
# store's own token windows.

# %%
resid = result.saes[configs[-1].name]
losses = spliced_losses(
    model, resid, store_windows(store, 4), mean=stats["resid_post.6"].mean.float(), batch_size=2
)
for k, r in (("CE", losses.ce), ("KL", losses.kl)):
    print(
        f"{k}: clean {r.clean:.3f}  spliced {r.spliced:.3f}  zero-abl {r.zero_abl:.3f}  "
        f"mean-abl {r.mean_abl:.3f}  recovered vs zero {r.vs_zero:.3f}  vs mean {r.vs_mean:.3f}"
    )
with steer(model, SaeSplice(resid, positions="last")):  # any position rule works
    pass

# %% [markdown]
# ## Files: steerlab and SAELens layouts
#
# `save_saelens` writes `cfg.json` with SAELens's fields, `sae_weights.safetensors` and
# `sparsity.safetensors`; `load_saelens` reads it back to the same weights.

# %%
d = Path(tmp.name) / "saelens"
save_saelens(resid, d, density=metrics[configs[-1].name].density)
back = load_saelens(d)
print(
    sorted(p.name for p in d.iterdir()),
    all(torch.equal(getattr(back, n), getattr(resid, n)) for n in ("W_enc", "W_dec")),
)

# %% [markdown]
# ## Latent dashboard
#
# For a few frequently firing latents: the contexts where they fire most (the token in red brackets)
# and their direct logit effects `W_dec[i] ⊙ γ @ W_Uᵀ`, the tokens the latent's decoder direction
# promotes and suppresses through the final norm and the unembedding.

# %%
dens = metrics[configs[-1].name].density
latents = dens.argsort(descending=True)[5:8].tolist()
figs = latent_dashboard(resid, store, model, latents, n_contexts=6, n_logits=6)
for f in figs.values():
    f.show()
