"""Write the narrative notebooks from cell sources kept here (so diffs stay readable).

    python scripts/make_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NB = {}

NB["01_capture_and_principal_directions.ipynb"] = [
    new_markdown_cell(
        "# Capture activations and look at their principal directions\n\n"
        "This notebook runs offline on the embedded **SmolLM2-135M-Instruct**. It loads the "
        "model, captures the residual stream at layer 6 for a slice of the prose corpus "
        "(`pydoc_data.topics`, which ships with CPython), checks the three hook backends "
        "against each other, streams a capture into an on-disk store, and draws the principal "
        "directions as an interactive Plotly figure."
    ),
    new_code_cell(
        "import torch\n"
        "from steerlab import load_model, Subspace\n"
        "from steerlab.capture import capture\n"
        "from steerlab.data import chunk_tokens, load_texts, token_contexts\n"
        "from steerlab.views import principal_directions\n\n"
        "model = load_model()  # smollm2-135m-instruct, cached as safetensors after the first load\n"
        "model"
    ),
    new_markdown_cell(
        "## Sites\n\nOne vocabulary names every place in a block: `resid_pre`, `attn_out`, "
        "`resid_mid`, `mlp_post`, `mlp_out`, `resid_post`, each followed by the layer. A wrong "
        "name lists the valid ones:"
    ),
    new_code_cell(
        "try:\n"
        "    capture(model, 'hello', 'resid_post.42')\n"
        "except ValueError as e:\n"
        "    print(e)"
    ),
    new_markdown_cell(
        "## Capture\n\nThe `hf` backend hooks the modules directly and stops the forward pass "
        "after the last requested site. Positions can be `all`, `last`, a mask, or character "
        "spans; here we pick the year in each sentence through the tokenizer's offsets."
    ),
    new_code_cell(
        "sentences = ['The treaty was signed in 1648.', 'She was born in 1912 in Paris.']\n"
        "spans = [(s.index('1'), s.index('1') + 4) for s in sentences]\n"
        "years = capture(model, sentences, 'resid_post.6', positions=spans, span_tokens='last')\n"
        "print(years['resid_post.6'].shape, model.tokenizer.convert_ids_to_tokens(years.token_ids))"
    ),
    new_code_cell(
        "texts = load_texts('prose')\n"
        "chunks = chunk_tokens(model.tokenizer, texts, seq_len=128, n_tokens=4096)\n"
        "caps = {b: capture(model, chunks.input_ids, 'resid_post.6', backend=b)\n"
        "        for b in ['hf', 'transformer_lens', 'nnsight']}\n"
        "ref = caps['hf']['resid_post.6']\n"
        "for b, c in caps.items():\n"
        "    err = (c['resid_post.6'] - ref).abs().max() / ref.abs().max()\n"
        "    print(f'{b:>16}: {tuple(c[\"resid_post.6\"].shape)}  max relative difference {err:.1e}')"
    ),
    new_markdown_cell(
        "## Stream into a store\n\n`capture_to_store` writes safetensors shards with a "
        "manifest of checksums; rerunning the same call after an interruption resumes after "
        "the last complete shard."
    ),
    new_code_cell(
        "import tempfile\n"
        "from steerlab.capture import capture_to_store\n\n"
        "store = capture_to_store(model, chunks, 'resid_post.6', tempfile.mkdtemp() + '/prose-l6',\n"
        "                         shard_tokens=1024)\n"
        "store.verify()\n"
        "store.info()"
    ),
    new_markdown_cell(
        "## Principal directions\n\nThe PCA of layer-6 residuals: hover a point to see its "
        "token in context. The right panel shows how many directions carry 90% and 99% of the "
        "variance; `Subspace.from_pca` returns that subspace for later use (probes, erasure, "
        "SAE initialisation)."
    ),
    new_code_cell(
        "rows = torch.stack([caps['hf'].doc_ids, caps['hf'].positions], 1)\n"
        "ctx = token_contexts(model.tokenizer, chunks.input_ids, rows)\n"
        "fig = principal_directions(ref, tokens=ctx.tokens, contexts=ctx.contexts,\n"
        "                           title='SmolLM2-135M resid_post.6')\n"
        "fig"
    ),
    new_code_cell(
        "sub = Subspace.from_pca(ref, var=0.9)\n"
        "print(sub, 'of', model.d_model, 'dimensions carry 90% of the variance')"
    ),
]


def main() -> None:
    here = Path(__file__).resolve().parent.parent / "notebooks"
    here.mkdir(exist_ok=True)
    for name, cells in NB.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, here / name)


if __name__ == "__main__":
    main()
