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
# # Linear concept erasure: LEACE, R-LACE and INLP, inside the model
#
# This notebook runs offline on the embedded **SmolLM2-135M-Instruct**. The concept is the gender of
# the person in short third-person bios (`data/erasure/gender.jsonl`: templates x first names x
# professions, in the spirit of Bias in Bios), read at each text's last token; the held-out split
# uses first names never seen in training. We (1) capture every layer in one pass and find where
# gender is most linearly decodable, (2) erase it there with LEACE (closed form, Belrose et al.
# 2023), R-LACE (a rank-k minimax game, Ravfogel et al. 2022) and INLP (iterated nullspace
# projections, Ravfogel et al. 2020) and compare a fresh probe's held-out accuracy with the majority
# rate, as a function of the rank of the edit, (3) apply the LEACE eraser inside the model with
# `steer` and measure its cost in language modelling, and (4) scrub two layers. The full-size run is
# `probes/erase_concept.py`.

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()  # figures as interactive plot + HTML + PNG; no progress bars

# %%
import tempfile

import torch
from threadpoolctl import threadpool_limits

from steerlab import load_model
from steerlab.capture import capture
from steerlab.datasets.concepts import load_concept
from steerlab.datasets.corpora import chunk_tokens, prose_corpus
from steerlab.erasure.evaluation import (
    accuracy_vs_rank,
    best_site,
    directions_needed,
    evaluate_eraser,
    probe_by_site,
)
from steerlab.erasure.inlp import InlpConfig
from steerlab.erasure.leace import LeaceEraser
from steerlab.erasure.rlace import RlaceConfig
from steerlab.erasure.scrub import EraserEdit, lm_cost, scrub
from steerlab.interventions import load_intervention, steer
from steerlab.views.erasure import accuracy_vs_rank_figure, erasure_pca_figure, probe_by_site_figure

# small problems on a shared CPU: one torch and one BLAS thread avoid oversubscription
torch.set_num_threads(1)
threadpool_limits(1)
model = load_model()
data = load_concept(n=320)  # a seeded subset of the 2,016 texts
train, test = ~data.test, data.test
y = data.labels
print(f"{len(data.texts)} texts, {int(test.sum())} held out; classes {data.class_names}")
for r in data.records[:3]:
    print(r["label"], r["text"])

# %% [markdown]
# ## 1. Where is gender linearly decodable?
#
# One capture pass returns the last-token residual stream after every block. A fresh logistic probe
# per layer (standardised features, trained on the train names, scored on the held-out names) picks
# the layer to erase at; ties go to the lower held-out log-loss.

# %%
sites = [f"resid_post.{layer}" for layer in range(model.n_layers)]
cap = capture(model, data.texts, sites, positions="last", batch_size=32)
scores = probe_by_site(cap.acts, y, train, test)
site = best_site(scores)
majority = float(torch.bincount(y[test]).max()) / int(test.sum())
print(f"best site {site}: held-out accuracy {scores[site].accuracy:.3f} (majority {majority:.3f})")
probe_by_site_figure(scores, majority)

# %% [markdown]
# ## 2. Erase it at that layer
#
# LEACE is closed form: `r(x) = x − P(x − μ)` with the oblique rank-1 `P` that makes both class
# means equal with the least squared change, so no linear classifier beats a constant on the
# training rows. `evaluate_eraser` trains a *fresh* probe on erased training rows and scores it on
# erased held-out rows, and reports the squared change and the rank of the edit. A probe that
# learned nothing predicts the training split's majority class; when that class is the *minority* of
# the held-out split it scores `1 − majority`, so `constant` is printed beside the majority rate.

# %%
x = cap[site].double()
xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]
leace = LeaceEraser.fit(xtr, ytr)
ev = evaluate_eraser(leace, xtr, ytr, xte, yte)
print(
    f"probe accuracy {ev.accuracy_before:.3f} -> {ev.accuracy:.3f}; majority {ev.majority:.3f}, "
    f"constant probe {ev.constant:.3f}"
)
print(f"rank {ev.rank}; mean squared change {ev.mse:.1f} = {ev.relative_mse:.1%} of the variance")

# %% [markdown]
# R-LACE plays a game: a rank-k orthogonal projection (relaxed to the fantope) against a logistic
# predictor, alternating SGD steps; it keeps the projection with the highest held-out loss on a dev
# split of the training rows. Its steps scale with the activations, so it runs on unit-RMS inputs
# (`rlace_rescaled`; the projection is scale-free). INLP removes one classifier direction at a time;
# its curve shows how many directions a plain probe needs to lose. Kept short here (300 game steps,
# 20 classifiers; the recipe runs longer): with ~200 training rows in 576 dimensions, every INLP
# classifier finds a fresh separating direction, and R-LACE's game has not settled;
# `probes/erase_concept.py` runs both on all 2,016 texts.

# %%
curves = accuracy_vs_rank(
    xtr,
    ytr,
    xte,
    yte,
    rlace_ranks=(1,),
    rlace_config=RlaceConfig(
        max_iter=300, eval_every=100, lr_P=0.02, lr_predictor=0.02, epsilon=0.001, dtype="float32"
    ),
    inlp_config=InlpConfig(n_iter=20, epsilon=0.01),
)
for method, c in curves.curves.items():
    print(f"{method:>6}:", ", ".join(f"rank {r}: {a:.3f}" for r, a in zip(c.ranks, c.accuracy)))
n_inlp = directions_needed(curves.curves["inlp"], curves.majority)
if n_inlp is None:
    n_inlp = f"more than {curves.curves['inlp'].ranks[-1]}"
print(f"INLP needs {n_inlp} directions to come within 2 points of the majority rate")
accuracy_vs_rank_figure(curves)

# %%
erased = {f"{m} (rank {c.ranks[-1]})": c.erasers[-1](xte) for m, c in curves.curves.items()}
erasure_pca_figure(xte, erased, yte, class_names=data.class_names)

# %% [markdown]
# ## 3. Inside the model
#
# `EraserEdit` turns any eraser into a steering intervention, saved and loaded like the others.
# Captured under `steer`, the site's activations are the eraser applied to the plain capture, up to
# float32 rounding, so the probe results above hold inside the model (the tests check it with a
# fresh probe on re-captured activations).

# %%
iv = EraserEdit(leace, site)  # every token, prompt and generation
few = data.texts[:64]
with steer(model, iv):
    inside = capture(model, few, site, positions="last", batch_size=32)[site]
gap = (inside.double() - leace(x[:64])).abs().max().item()
print(
    f"max |in-model - eraser(captured)| = {gap:.1e} on activations of norm {x[:64].norm(dim=1).mean():.0f}"
)
with tempfile.TemporaryDirectory() as tmp:
    back = load_intervention(iv.save(f"{tmp}/leace-gender"))
print(back)

# %% [markdown]
# What does the model do without the gender direction at that layer? Greedy continuations with and
# without the eraser, and the price in language modelling: mean next-token cross-entropy on a prose
# sample (the Python reference manual, shipped with CPython).

# %%
kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=model.tokenizer.eos_token_id)
for prompt in [
    "Jessica is a nurse at the city hospital. Every morning,",
    "Michael is a nurse at the city hospital. Every morning,",
]:
    enc = model.tokenizer(prompt, return_tensors="pt")
    plain = model.model.generate(**enc, **kw)[0, enc.input_ids.shape[1] :]
    with steer(model, iv):
        edited = model.model.generate(**enc, **kw)[0, enc.input_ids.shape[1] :]
    print(
        prompt,
        "\n   plain :",
        repr(model.tokenizer.decode(plain)),
        "\n   erased:",
        repr(model.tokenizer.decode(edited)),
    )
prose = chunk_tokens(model.tokenizer, prose_corpus(docstrings=False), seq_len=128, n_tokens=1024)
cost = lm_cost(model, prose, iv)
print(
    f"cross-entropy {cost.ce_base:.4f} -> {cost.ce_edited:.4f} nats/token "
    f"(+{cost.increase:.4f}) over {cost.n_tokens} tokens"
)

# %% [markdown]
# ## 4. Scrubbing several layers
#
# Erasing at one layer leaves the concept to be recomputed later. Concept scrubbing fits one LEACE
# eraser per layer, in order, each on activations captured with the earlier erasers already applied
# in the model.

# %%
layer = int(site.split(".")[1])
pair = [f"resid_post.{max(layer - 6, 0)}", site]
texts_tr = [t for t, keep in zip(data.texts, train.tolist()) if keep][:96]
res = scrub(model, texts_tr, ytr[:96], pair, batch_size=32)
for s, e in res.erasers.items():
    print(s, e)
both = lm_cost(model, prose, res.interventions, base=cost.ce_base)
print(
    f"cross-entropy {both.ce_base:.4f} -> {both.ce_edited:.4f} nats/token (+{both.increase:.4f}) "
    f"with both erasers"
)
