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
# # Multi-subspace steering (MSRS): two attributes, one orthonormal basis
#
# MSRS (arXiv 2508.10599) steers several attributes at once with one module `h' = h + Rᵀ diag(m(h))
# (W h + b − R h)`: the rows of `R` are orthonormal and split into a *shared* block and one block
# per attribute, and `m(h) = sigmoid(MLP(h))` gives each block a gate. This notebook runs offline on
# the embedded **SmolLM2-135M-Instruct** with two attributes from `data/steering`: negative
# sentiment and casual register. It initialises the blocks from activation differences, trains the
# module on (prompt, target) pairs, steers each attribute alone and both together, draws the gates
# over a steered text and compares the learned subspaces with CAA vectors. `python
# steering/msrs_experiment.py` runs the full comparison (CAA, LoReFT, prompting, interference).

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()  # figures as interactive plot + HTML + PNG; no progress bars

# %%
import os
import tempfile
from pathlib import Path

import torch

from steerlab import Subspace, load_model
from steerlab.capture import capture
from steerlab.datasets.pairs import load_pairs, load_prompts
from steerlab.datasets.paths import data_dir
from steerlab.interventions import as_positions, load_intervention, scored
from steerlab.steering.generate import generate
from steerlab.steering.msrs import MSRS, MSRSLoss, init_bases, read_differences
from steerlab.steering.train import TrainConfig, TrainExample, train_intervention
from steerlab.steering.vectors import fit_vector
from steerlab.views.msrs import gate_figure

if (os.cpu_count() or 1) <= 2:
    torch.set_num_threads(1)  # small ops: one thread avoids synchronisation overhead
DATA = data_dir("steering")  # the checkout's data/steering, or $STEERLAB_DATA/steering
model = load_model()
SITE = "resid_post.9"
# attribute -> (pair file, the side we steer towards)
ATTRS = {
    "sentiment": ("sentiment.jsonl", "negative"),
    "formality": ("formality.jsonl", "negative"),
}  # negative = casual register
pairs = {a: load_pairs(DATA / f).subset(range(48)) for a, (f, _) in ATTRS.items()}
examples = [
    TrainExample(p.prompt, getattr(p, side), a) for a, (_, side) in ATTRS.items() for p in pairs[a]
]
prompts = load_prompts(DATA / "neutral_prompts.jsonl")[:6]
examples[0], examples[-1]

# %% [markdown]
# ## Initial subspaces
#
# The per-pair differences `x_target − x_other` (mean over the assistant's tokens) of both
# attributes are stacked; the shared block is their top singular vectors, each attribute's block the
# top singular vectors of what is left of its own differences. `energy` says how much of each
# attribute's difference energy each block keeps.

# %%
diffs = read_differences(model, pairs, SITE, target={a: s for a, (_, s) in ATTRS.items()})
init = init_bases(diffs, shared_rank=2, attribute_ranks=2)
{block: {a: round(v, 3) for a, v in e.items()} for block, e in init.energy.items()}

# %% [markdown]
# ## Train
#
# Cross-entropy on the target tokens with the module at the last prompt token, plus MSRS's gate
# prior (shared ≈ 1, own attribute 0.9, others 0.1) and a term that keeps each block near its
# initial span. The orthogonal parametrisation keeps `R` orthonormal throughout.

# %%
torch.manual_seed(0)
msrs = MSRS.from_init(init, SITE)
cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, max_target_tokens=12)
res = train_intervention(model, msrs, examples, cfg, extra_loss=MSRSLoss())
R = msrs.R.weight.detach()
print(
    "CE per epoch",
    [round(x, 3) for x in res.epoch_ce],
    "| max |R Rᵀ − I| =",
    float((R @ R.T - torch.eye(len(R))).abs().max()),
)

# %% [markdown]
# ## Steer one attribute, or both
#
# `set_active` switches attributes off (their gates become exactly 0; the shared block stays on
# while any attribute is). With the default position rule, `scored()`, each attribute block acts at
# the prompt token with the largest projection `‖R_i h_t‖` (MSRS's token-level steering); `'last'`
# applies every block at the last prompt token, as in training.

# %%
plain = generate(model, prompts, None, max_new_tokens=24)
rows = {"unsteered": plain.texts}
for rule in ["last", scored()]:
    msrs.positions = as_positions(rule)
    for active in (["sentiment"], ["formality"], ["sentiment", "formality"]):
        msrs.set_active(active)
        g = generate(model, prompts, msrs, max_new_tokens=24)
        rows[f"{'+'.join(active)} @ {msrs.positions}"] = g.texts
for label, texts in rows.items():
    print(f"--- {label}")
    for t in texts[:3]:
        print("  ", t.replace(chr(10), " ")[:110])

# %% [markdown]
# ## Gates over a steered text
#
# The gate of every block and its projection at every token (the module's input: the unsteered
# activations of the steered text); crosses mark the token each attribute block chooses in the
# prompt.

# %%
msrs.set_active(["sentiment", "formality"])
msrs.positions = scored()
g = generate(model, prompts[:1], msrs, max_new_tokens=24)
ids = torch.cat([g.prompt_ids[0], g.token_ids[0]])
h = capture(model, ids[None], SITE, positions=torch.ones(1, len(ids), dtype=torch.bool))[SITE]
tr = msrs.trace(h)
plen = len(g.prompt_ids[0])
chosen = {n: int(tr.scores[:plen, i].argmax()) for i, n in enumerate(tr.names) if i}
# each token decoded alone (" helpful", not the BPE string "Ġhelpful"); newlines shown as ↵
tokens = [t.replace("\n", "↵") for t in model.tokenizer.batch_decode(ids[:, None])]
print({n: tokens[p] for n, p in chosen.items()})
gate_figure(tr, tokens, chosen=chosen, start=max(0, min(chosen.values()) - 4))

# %% [markdown]
# ## Learned subspaces
#
# The attribute blocks are orthogonal by construction (90°). How far did training move them from
# their initial span, and how close is each attribute's span (shared + own block) to that
# attribute's CAA vector?

# %%
caa = {a: fit_vector(model, pairs[a], SITE, chat=True).directions[0] for a in ATTRS}
start = 0
for name, size in zip(init.names, init.sizes):
    moved = msrs.subspace(name).principal_angles(
        Subspace.from_vectors(init.R[start : start + size])
    )
    start += size
    print(f"{name:>10}: angles to its initial span {torch.rad2deg(moved).round().tolist()} deg")
for a in ATTRS:
    span = Subspace.from_vectors(torch.cat([msrs.block("shared"), msrs.block(a)]).detach().double())
    for b in ATTRS:
        ang = span.principal_angles(Subspace.from_vectors(caa[b].double()))[0]
        print(f"span(shared+{a}) vs CAA {b}: {float(torch.rad2deg(ang)):.1f} deg")

# %% [markdown]
# ## Save and load
#
# Like every intervention: a directory with `cfg.json` (kind `msrs`, blocks, attributes, active set,
# position rule) and `msrs.safetensors`.

# %%
with tempfile.TemporaryDirectory() as d:
    msrs.save(Path(d) / "msrs")
    back = load_intervention(Path(d) / "msrs")
    same = (
        generate(model, prompts[:2], back, max_new_tokens=16).texts
        == generate(model, prompts[:2], msrs, max_new_tokens=16).texts
    )
print(type(back).__name__, back.active, "same generations:", same)
