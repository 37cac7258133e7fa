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
# # AST-Probe: recover Python syntax trees from hidden states
#
# Hernández López et al. (ASE 2022) ask whether a code model's hidden states hold the abstract
# syntax tree of the code it reads. Their probe projects each AST leaf's vector with a matrix `B`
# (d_model x rank, kept near-orthonormal) and reads off, for each pair of adjacent leaves, a
# *syntactic distance* `d̂_i = ‖Bᵀh_i − Bᵀh_{i−1}‖²` and the label of their lowest common ancestor;
# each leaf also gets a unary label. Splitting the leaves recursively at the largest `d̂` rebuilds a
# tree, which is scored against tree-sitter's AST by labelled-constituent F1.
#
# This notebook runs the probe at two depths of the embedded SmolLM2-135M on a small sample of
# standard-library functions (a couple of minutes on a CPU). `python probes/ast_probe.py` runs every
# layer, the rank sweep and both baselines.

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()  # figures as interactive plot + HTML + PNG; no progress bars

# %%
import torch

from steerlab import Subspace, load_model
from steerlab.probes.ast.data import load_ast_snippets
from steerlab.probes.ast.features import capture_leaf_features, snippet_from_code, subsample_splits
from steerlab.probes.ast.probe import (
    AstProbeConfig,
    evaluate_ast_probe,
    fit_ast_probe,
    predict_trees,
    split_data,
)
from steerlab.views.ast import f1_by_layer, pick_example, tree_pair

torch.set_num_threads(1)  # small matrices: one thread avoids synchronisation overhead
model = load_model()
ds = load_ast_snippets(max_leaves=50, tokenizer=model.tokenizer)
splits = subsample_splits(ds, n_train=150, n_dev=40, n_test=60, seed=0)
print(
    {k: len(v) for k, v in splits.items()},
    "of",
    ds.counts["kept"],
    "functions kept;",
    {k: ds.counts[k] for k in ("syntax_error", "empty_body", "too_many_leaves", "duplicate")},
)

# %% [markdown]
# ## Data and targets
#
# Each function is cleaned (no comments or docstrings, strings collapsed to one leaf) and parsed
# with tree-sitter. The probe's targets come from the binarised tree: a distance and a label per
# adjacent leaf pair, a unary label per leaf.

# %%
s = splits["test"][0]
t = s.targets()
print(s.code)
for leaf, d, c in list(zip(s.leaves, t.d, t.c))[:8]:
    print(f"{leaf!r:>12}  d={d:2d}  {c}")

# %% [markdown]
# ## Leaf vectors
#
# One forward pass pools every leaf's subword tokens (located through the tokenizer's character
# offsets) at the requested sites: the embeddings (`resid_pre.0`, depth 0) and the output of block
# 14 (depth 15).

# %%
SITES = ["resid_pre.0", "resid_post.14"]
snippets = splits["train"] + splits["dev"] + splits["test"]
feats = capture_leaf_features(model, snippets, SITES)
feats, feats.meta["straddling_tokens"]

# %% [markdown]
# ## Train and score
#
# The paper's loss (pairwise hinge on the distances, cross-entropy on the labels, `5‖BᵀB − I‖²`),
# Adam and early stopping on dev; a higher learning rate than the paper's 1e-3 because this sample
# is small.

# %%
cfg = AstProbeConfig(rank=64, lr=1e-2, max_epochs=12, patience=3, lr_patience=1)
runs, probes = [], {}
for depth, site in zip([0, 15], SITES):
    data = split_data(feats, site, splits)
    fit = fit_ast_probe(data["train"], data["dev"], cfg, meta={"site": site})
    ev = evaluate_ast_probe(fit.probe, data["test"])
    probes[site] = (fit.probe, data)
    runs.append({"depth": depth, "site": site, "rank": cfg.rank, "f1": ev.f1})
    print(
        f"{site:>14}: test F1 {ev.f1:.3f} (P {ev.precision:.3f}, R {ev.recall:.3f}), "
        f"label accuracy c {ev.c_accuracy:.3f} u {ev.u_accuracy:.3f}"
    )
f1_by_layer(runs, embeddings_f1=runs[0]["f1"], reference={"code models": 0.75})

# %% [markdown]
# ## Predicted vs gold tree
#
# Green nodes are constituents (label and leaf span) found in both trees, red ones only in this
# tree. Hover a node for its label and code.

# %%
probe, data = probes["resid_post.14"]
trees = predict_trees(probe, data["test"])
ev = evaluate_ast_probe(probe, data["test"])
k = pick_example(ev.per_snippet, [len(t.leaves) for t in data["test"].targets])
tree_pair(trees[k], data["test"].trees[k], splits["test"][k].leaves, code=splits["test"][k].code)

# %% [markdown]
# ## Your own code
#
# `snippet_from_code` cleans and parses a function (and says why when it cannot); the probe then
# predicts its tree from the model's hidden states.

# %%
mine = snippet_from_code("def area(w, h):\n    if w < 0:\n        return 0\n    return w * h\n")
h = capture_leaf_features(model, [mine], ["resid_post.14"])["resid_post.14"]
tree_pair(probe.predict(h, mine.leaves), mine.tree, mine.leaves, code=mine.code)

# %%
try:
    snippet_from_code("def broken(:\n    return")
except ValueError as e:
    print(e)

# %% [markdown]
# ## The syntactic subspace
#
# `probe.subspace()` is the span of the directions the probe reads, as a `Subspace`. Its principal
# angles to the top principal directions of the same layer say whether syntax lives in the
# high-variance directions.

# %%
sub = probe.subspace()
x = data["train"].x[data["train"].index[data["train"].index >= 0]].float()
pca = Subspace.from_pca(x, k=sub.k)
rnd = Subspace.from_vectors(torch.randn(sub.k, model.d_model))
print(
    sub,
    "\nmedian principal angle to the top-64 PCA directions: "
    f"{torch.rad2deg(sub.principal_angles(pca)).median():.1f} deg; "
    f"to a random 64-dim subspace: {torch.rad2deg(sub.principal_angles(rnd)).median():.1f} deg",
)
