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
# # Steering vectors: fit, steer, evaluate
#
# This notebook runs offline on the embedded **SmolLM2-135M-Instruct**. It fits a sentiment steering
# vector from the contrast pairs in `data/steering/sentiment.jsonl` (difference of means of the
# assistant's tokens, CAA style), steers generation with it, sweeps its strength α and scores every
# point as AxBench does (concept, fluency, relevance and their harmonic mean) against a prompting
# baseline, and colours a text token by token by its projection on the vector.

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()  # figures as interactive plot + HTML + PNG; no progress bars

# %%
import os

import torch
from IPython.display import HTML

from steerlab import load_model
from steerlab.datasets.pairs import load_pairs, load_prompts
from steerlab.datasets.paths import data_dir
from steerlab.steering.vectors import fit_vector

if (os.cpu_count() or 1) <= 2:
    torch.set_num_threads(1)  # greedy decoding is many small ops: one thread is faster here
DATA = data_dir("steering")  # the checkout's data/steering, or $STEERLAB_DATA/steering
model = load_model()
pairs = load_pairs(DATA / "sentiment.jsonl")
print(len(pairs), "pairs, e.g.", pairs[0])

# %% [markdown]
# ## Fit
#
# `fit_vector` reads every requested layer in one forward pass. With `chat=True` each pair is an
# exchange rendered with the chat template, and the vector is read from the assistant's tokens (the
# `generation` part of the sequence). The vector records the mean activation norm of its layer, so a
# strength α is a fraction of that norm. (A subset of the pairs keeps this notebook quick.)

# %%
LAYER = 9
vec = fit_vector(model, pairs.subset(range(48)), f"resid_post.{LAYER}", chat=True)
vec, float(vec.norms[0])

# %% [markdown]
# ## Steer
#
# `generate` renders the chat template, pads batches on the left and decodes greedily; `compare`
# runs the same prompts with and without the intervention. The command line does the same: `steerlab
# steer --vector DIR --alpha 0.1 --prompt ...`.

# %%
from steerlab.steering.generate import compare, format_side_by_side

prompts = load_prompts(DATA / "neutral_prompts.jsonl")
for alpha in (0.1, -0.2):
    cmp = compare(model, prompts[:2], vec.intervention(LAYER, alpha), max_new_tokens=24)
    print(format_side_by_side(cmp, width=110, labels=("unsteered", f"alpha={alpha:+g}")))

# %% [markdown]
# ## Sweep the strength
#
# For each α the neutral prompts are generated steered and scored:
#
# - **concept**: mean VADER compound of the continuations (−1 … 1);
# - **fluency**: perplexity of the continuation under the *unsteered* model after a generic prefix
#   (the same for every prompt, so new content is not counted as disfluency), and the repetition
#   rate (repeated word 4-grams); normalised as `min(1, PPL₀/ppl) · (1 − rep)`;
# - **relevance**: cosine of the MiniLM embeddings of the answer and of the *prompt*, relative to
#   the unsteered answer's (`similarity` is the raw cosine);
# - **combined**: the harmonic mean of the three normalised parts (zero if any is zero), towards the
#   positive or the negative pole.
#
# The prompting baseline asks for the sentiment in a system message (dashed lines).

# %%
from steerlab.steering.evals import Sentiment, SweepConfig, strength_sweep
from steerlab.views.steering import sweep_figure

cfg = SweepConfig(alphas=(-0.2, -0.1, 0.1, 0.2), max_new_tokens=24)
sweep = strength_sweep(model, prompts[:6], lambda a: vec.intervention(LAYER, a), Sentiment(), cfg)
cols = [
    "concept", "perplexity", "fluency", "similarity", "relevance", "combined_pos", "combined_neg"
]  # fmt: skip
print(f"{'':<10}" + "".join(f"{c:>13}" for c in cols))
for row in sweep.table():
    print(f"{row['label']:<10}" + "".join(f"{row[c]:13.3f}" for c in cols))

# %%
sweep_figure(sweep)

# %% [markdown]
# `best` picks α on half of the prompts and reports it, and the baseline, on the other half (AxBench
# chooses the factor on held-out data).

# %%
for pole in (1, -1):
    b = sweep.best(pole)
    print(
        f"pole {pole:+d}: alpha {b.alpha:+g}  steered combined "
        f"{b.steered.combined(pole):.3f}  prompting {b.baseline.combined(pole):.3f}"
    )

# %% [markdown]
# ## Token by token
#
# The projection of each token's activation at the vector's layer on its direction (unsteered model;
# centred on the text's mean): blue leans positive, red negative.

# %%
from steerlab.steering.scores import token_projections
from steerlab.views.steering import token_projection_figure, token_projection_html

text = "The food was cold and the waiter was rude, but the dessert was wonderful."
tp = token_projections(model, text, vec.direction(LAYER), f"resid_post.{LAYER}")
HTML(token_projection_html(tp.tokens, tp.scores))

# %%
# the figure's own height leaves the default margins little room; tighter margins show the grid
fig = token_projection_figure(tp.tokens, tp.scores, per_row=10)
fig.update_layout(height=240, margin={"t": 60, "b": 20, "l": 20})
