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
# # Multi-subspace steering (MSRS): attributes, gates and the tokens they act on
#
# MSRS (arXiv 2508.10599) steers several attributes at once with one module `h' = h + Rᵀ diag(m(h))
# (W h + b − R h)`: the rows of `R` are orthonormal and split into a *shared* block and one block
# per attribute, and `m(h) = sigmoid(MLP(h))` gives each block a gate. This notebook runs offline on
# the embedded **SmolLM2-135M-Instruct** with two attributes from `data/steering`: negative
# sentiment and casual register, each with its own kind of input (a task frame from
# `task_frames.json`), as the paper's attributes come from different data sets. It initialises the
# blocks from activation differences, trains the module, steers with the ungated edit (what the
# paper's code does at inference) at three token rules, checks whether the gates route framed
# held-out prompts, and compares the learned subspaces with CAA vectors. `python
# steering/msrs_experiment.py` runs the full comparison (three attributes, three seeds, the paper's
# training settings, CAA, LoReFT, prompting, interference with confidence intervals).

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()  # figures as interactive plot + HTML + PNG; no progress bars

# %%
import json
import os
import tempfile
from pathlib import Path

import torch

from steerlab import Subspace, load_model
from steerlab.capture import capture
from steerlab.datasets.pairs import ContrastPair, load_pairs, load_prompts
from steerlab.datasets.paths import data_dir
from steerlab.interventions import TokenView, as_positions, load_intervention, scored
from steerlab.steering.generate import generate
from steerlab.steering.msrs import MSRS, MSRSLoss, init_bases, read_differences
from steerlab.steering.train import TrainConfig, TrainExample, train_intervention
from steerlab.steering.user_tokens import chat_markers, user_token_mean
from steerlab.steering.vectors import fit_vector
from steerlab.views.msrs import gate_figure

if (os.cpu_count() or 1) <= 2:
    torch.set_num_threads(1)  # small ops: one thread avoids synchronisation overhead
DATA = data_dir("steering")  # the checkout's data/steering, or $STEERLAB_DATA/steering
model = load_model()
SITE = "resid_post.9"
FRAMES = json.loads((DATA / "task_frames.json").read_text())["frames"]
# attribute -> (pair file, the side we steer towards)
ATTRS = {
    "sentiment": ("sentiment.jsonl", "negative"),
    "formality": ("formality.jsonl", "negative"),
}  # negative = casual register
pairs = {
    a: [
        ContrastPair(p.positive, p.negative, FRAMES[a].format(prompt=p.prompt))
        for p in load_pairs(DATA / f).subset(range(48))
    ]
    for a, (f, _) in ATTRS.items()
}
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
# initial span. The orthogonal parametrisation keeps `R` orthonormal throughout. `TrainConfig()`
# defaults to the paper's code (4 epochs at batch 2, lr 5e-3); two quick epochs at batch 8 keep
# this notebook short.
#
# The module also gets what its token-level rule needs: the chat template's user-message markers
# and `μ`, the mean activation over the user tokens of the training prompts.

# %%
markers = chat_markers(model)
mu = user_token_mean(model, [e.prompt for e in examples], SITE, markers)
torch.manual_seed(0)
msrs = MSRS.from_init(init, SITE, markers=markers, center=mu)
cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2)
res = train_intervention(model, msrs, examples, cfg, extra_loss=MSRSLoss())
R = msrs.R.weight.detach()
print(
    "CE per epoch",
    [round(x, 3) for x in res.epoch_ce],
    "| max |R Rᵀ − I| =",
    float((R @ R.T - torch.eye(len(R))).abs().max()),
)

# %% [markdown]
# ## Steer one attribute, or both, with the ungated edit
#
# `set_active` chooses the blocks (the shared block stays on while any attribute is). With
# `gates_at_inference=False` every active block has gate 1 outside training, as in the paper's
# code. Three position rules: `'last'` (every block at the last prompt token, as in training);
# `scored()` with `token_rule='user'` (each attribute block at the user message's token with the
# largest centred projection `‖R_i (h_t − μ)‖`); and `token_rule='paper'`, the paper's literal
# rule (largest `‖R_i h_t‖` over every prompt token).

# %%
msrs.gates_at_inference = False
plain = generate(model, prompts, None, max_new_tokens=24)
rows = {"unsteered": plain.texts}
for rule, token_rule in [("last", "user"), (scored(), "user"), (scored(), "paper")]:
    msrs.positions, msrs.token_rule = as_positions(rule), token_rule
    for active in (["sentiment"], ["formality"], ["sentiment", "formality"]):
        msrs.set_active(active)
        g = generate(model, prompts, msrs, max_new_tokens=24)
        rows[f"{'+'.join(active)} @ {msrs.positions} ({token_rule})"] = g.texts
for label, texts in rows.items():
    print(f"--- {label}")
    for t in texts[:2]:
        print("  ", t.replace(chr(10), " ")[:110])

# %% [markdown]
# ## Which tokens the rules pick
#
# Over a whole chat prompt, the literal rule's argmax lands on the template: the default system
# prompt (" Sm" of "SmolLM") and role markers have large activations whatever the user asked. The
# user rule only looks at the user's own words, and centres the scores.


# %%
def readout(text):
    """Token ids of ``text`` in the chat template, its activations at SITE, and its TokenView."""
    ids = model.tokenizer(model.chat(text), add_special_tokens=False, return_tensors="pt").input_ids
    h = capture(model, ids, SITE, positions=torch.ones_like(ids, dtype=torch.bool))[SITE][None]
    return ids, h, TokenView.from_mask(torch.ones_like(ids), ids.shape[1], input_ids=ids)


def picks(m, prompt):
    ids, h, view = readout(prompt)
    masks = m.block_masks(view, h)[0]
    toks = [t.replace("\n", "↵") for t in model.tokenizer.batch_decode(ids[0, :, None])]
    return {
        n: toks[int(masks[:, sl.start].float().argmax())]
        for n, sl in zip(m.names[1:], m.blocks()[1:])
    }


msrs.positions = scored()
msrs.set_active(list(ATTRS))
for token_rule in ("paper", "user"):
    msrs.token_rule = token_rule
    print(token_rule, [picks(msrs, p) for p in prompts[:4]])

# %% [markdown]
# ## Do the gates route by input?
#
# Held-out prompts (the neutral prompts, never trained on) wrapped in each attribute's frame, every
# attribute active, gates on: each block's gate at the token where it acts. If the gates route, the
# sentiment gate is high on feedback-survey prompts and the formality gate on coworker messages.

# %%
msrs.gates_at_inference = True
for rule in ("last", scored()):
    msrs.positions, msrs.token_rule = as_positions(rule), "user"
    for a in ATTRS:
        gs = []
        for p in prompts:
            _, h, view = readout(FRAMES[a].format(prompt=p))
            gs.append(msrs.selected_gates(view, h)[0])
        g = torch.stack(gs).nanmean(0)
        print(
            f"{str(msrs.positions):<14} {a:>10} prompts: "
            + "  ".join(f"{n} {v:.2f}" for n, v in zip(msrs.names, g.tolist()))
        )

# %% [markdown]
# ## Gates over a steered text
#
# The gate of every block and its token score at every token (the module's input: the unsteered
# activations of the steered text); crosses mark the token each attribute block chooses in the
# prompt (user rule).

# %%
msrs.positions, msrs.token_rule = scored(), "user"
g = generate(model, [FRAMES["sentiment"].format(prompt=prompts[0])], msrs, max_new_tokens=24)
ids = torch.cat([g.prompt_ids[0], g.token_ids[0]])
h = capture(model, ids[None], SITE, positions=torch.ones(1, len(ids), dtype=torch.bool))[SITE]
tr = msrs.trace(h)
plen = len(g.prompt_ids[0])
view = TokenView.from_mask(
    torch.ones(1, len(ids), dtype=torch.long), len(ids), torch.tensor([plen]), ids[None]
)
masks = msrs.block_masks(view, h[None])[0]
chosen = {
    n: int(masks[:, sl.start].float().argmax()) for n, sl in zip(msrs.names[1:], msrs.blocks()[1:])
}
# each token decoded alone (" helpful", not the BPE string "Ġhelpful"); newlines shown as ↵
tokens = [t.replace("\n", "↵") for t in model.tokenizer.batch_decode(ids[:, None])]
print({n: tokens[p] for n, p in chosen.items()})
gate_figure(tr, tokens, chosen=chosen, start=max(0, min(chosen.values()) - 6))

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
# position and token rules, the user markers, whether the gates act at inference) and
# `msrs.safetensors` (with `μ`).

# %%
with tempfile.TemporaryDirectory() as d:
    msrs.save(Path(d) / "msrs")
    back = load_intervention(Path(d) / "msrs")
    same = (
        generate(model, prompts[:2], back, max_new_tokens=16).texts
        == generate(model, prompts[:2], msrs, max_new_tokens=16).texts
    )
print(type(back).__name__, back.active, back.token_rule, "same generations:", same)
