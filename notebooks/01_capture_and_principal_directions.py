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
# # Capture activations and look at their principal directions
#
# This notebook runs offline on the embedded **SmolLM2-135M-Instruct**. It loads the model, captures
# the residual stream at layer 6 for a slice of the prose corpus (`pydoc_data.topics`, which ships
# with CPython), checks the three hook backends against each other, streams a capture into an
# on-disk store, and draws the principal directions as an interactive Plotly figure.

# %% [markdown]
# Every notebook starts with `notebook_setup()`: it turns off progress bars, prints steerlab's log
# messages, and embeds plotly.js once so that each figure is interactive in JupyterLab and in
# exported HTML, and also carries a static PNG for viewers that strip scripts (such as GitHub).

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()

# %%
import tempfile
from collections import Counter

import torch

from steerlab import Subspace, load_model
from steerlab.capture import capture, capture_to_store
from steerlab.datasets.corpora import chunk_tokens, load_texts, token_contexts
from steerlab.views import principal_directions

model = load_model()  # smollm2-135m-instruct, cached as safetensors after the first load
print(f"{model.model_id}: {model.architecture}, {model.n_layers} layers, d_model {model.d_model}")

# %% [markdown]
# ## Sites
#
# One vocabulary names every place in a block: `resid_pre`, `attn_out`, `resid_mid`, `mlp_post`,
# `mlp_out`, `resid_post`, each followed by the layer. A wrong name lists the valid ones:

# %%
try:
    capture(model, "hello", "resid_post.42")
except ValueError as e:
    print(e)

# %% [markdown]
# ## Capture
#
# The `hf` backend hooks the modules directly and stops the forward pass after the last requested
# site. Positions can be `all`, `last`, a mask, or character spans; here we pick the year in each
# sentence through the tokenizer's offsets.

# %%
sentences = ["The treaty was signed in 1648.", "She was born in 1912 in Paris."]
spans = [(s.index("1"), s.index("1") + 4) for s in sentences]
years = capture(model, sentences, "resid_post.6", positions=spans, span_tokens="last")
print(years["resid_post.6"].shape, model.tokenizer.batch_decode(years.token_ids[:, None]))

# %%
texts = load_texts("prose")
chunks = chunk_tokens(model.tokenizer, texts, seq_len=128, n_tokens=4096)
caps = {
    b: capture(model, chunks.input_ids, "resid_post.6", backend=b)
    for b in ["hf", "transformer_lens", "nnsight"]
}
ref = caps["hf"]["resid_post.6"]
for b, c in caps.items():
    err = (c["resid_post.6"] - ref).abs().max() / ref.abs().max()
    print(f"{b:>16}: {tuple(c['resid_post.6'].shape)}  max relative difference {err:.1e}")

# %% [markdown]
# ## Stream into a store
#
# `capture_to_store` writes safetensors shards with a manifest of checksums; rerunning the same call
# after an interruption resumes after the last complete shard.

# %%
with tempfile.TemporaryDirectory() as tmp:
    store = capture_to_store(model, chunks, "resid_post.6", f"{tmp}/prose-l6", shard_tokens=1024)
    store.verify()  # raises CorruptShardError naming a shard whose checksum differs
    info = store.info()
# the summary without the paths (a temporary folder, the local model cache)
{k: info[k] for k in ("model_id", "sites", "n_tokens", "n_shards", "complete", "fingerprints")}

# %% [markdown]
# ## Attention sinks
#
# A few tokens carry massive activations: the first token of every window, and often " the".
# They are rare, but their norm is several times the others', so they would dominate a PCA. Here
# a row is a sink when its norm exceeds three times the median.

# %%
cap = caps["hf"]
norms = ref.norm(dim=1)
sink = norms > 3 * norms.median()
centred = ref - ref.mean(0)
share = float((centred[sink] ** 2).sum() / (centred**2).sum())
common = Counter(model.tokenizer.batch_decode(cap.token_ids[sink][:, None])).most_common(3)
print(
    f"{int(sink.sum())} of {len(ref)} rows ({sink.float().mean():.1%}) have a norm above "
    f"{3 * norms.median():.0f} and carry {share:.0%} of the variance;\n"
    f"{int((cap.positions[sink] == 0).sum())} are first tokens of a window; most common: {common}"
)

# %% [markdown]
# ## Principal directions
#
# The PCA of the layer-6 residuals without the sinks: hover a point to see its token in context.
# The right panel shows how many directions carry 90% and 99% of the variance; `Subspace.from_pca`
# returns that subspace for later use (probes, erasure, SAE initialisation).

# %%
keep = ~sink
rows = torch.stack([cap.doc_ids, cap.positions], 1)[keep]
ctx = token_contexts(model.tokenizer, chunks.input_ids, rows)
principal_directions(
    ref[keep],
    tokens=ctx.tokens,
    contexts=ctx.contexts,
    title="SmolLM2-135M resid_post.6 (attention sinks left out)",
)

# %%
for name, x in (("without the sinks", ref[keep]), ("with them", ref)):
    sub = Subspace.from_pca(x, var=0.9)
    print(f"{name:>17}: {sub.k} of {model.d_model} directions carry 90% of the variance")
