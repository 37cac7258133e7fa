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


NB["05_sparse_autoencoders.ipynb"] = [
    new_markdown_cell(
        "# Sparse autoencoders: train, measure, splice, inspect\n\n"
        "A TopK sparse autoencoder (Makhzani & Frey 2013; Gao et al. 2024) rewrites an "
        "activation `x` as a few latents: `z = ReLU(TopK_k(W_enc(x − b_dec) + b_enc))`, "
        "`x̂ = z W_dec + b_dec`. This notebook runs on the embedded **SmolLM2-135M-Instruct** "
        "at a deliberately tiny scale (a few thousand tokens, 1,024 latents) so that it "
        "finishes in a couple of minutes on a CPU; the recipes in `saes/` run the same code at "
        "full size. We capture two sites of layer 6, measure how many directions they use, "
        "train several SAEs from one read of the store, and check them three ways: "
        "reconstruction (FVU about the mean), sparsity and dead latents, and the language "
        "model's loss when the SAE replaces the activations."
    ),
    new_code_cell(
        "import tempfile, torch\n"
        "from steerlab import load_model\n"
        "from steerlab.capture import capture_to_store\n"
        "from steerlab.data import chunk_tokens, load_texts\n"
        "from steerlab.saes import (SaeConfig, TrainConfig, activation_stats, evaluate, train,\n"
        "                           save_saelens, load_saelens)\n"
        "from steerlab.saes.splice import SaeSplice, spliced_losses, store_windows\n"
        "from steerlab.steering import steer\n"
        "from steerlab.views.saes import (density_figure, explained_variance_by_rank,\n"
        "                                 latent_dashboard, training_curves)\n\n"
        "torch.manual_seed(0)\n"
        "model = load_model()\n"
        "chunks = chunk_tokens(model.tokenizer, load_texts('prose'), seq_len=128, n_tokens=8192)\n"
        "store = capture_to_store(model, chunks, ['attn_out.6', 'resid_post.6'],\n"
        "                         tempfile.mkdtemp() + '/l6', shard_tokens=2048)\n"
        "store"
    ),
    new_markdown_cell(
        "## How many directions does each site use?\n\n"
        "Wang et al. (2025, *Attention layers add into low-dimensional residual subspaces*) "
        "found that attention outputs occupy far fewer directions than the residual stream. "
        "`activation_stats` streams the mean and covariance in float64; the effective rank is "
        "the number of principal directions that explain 99% of the variance."
    ),
    new_code_cell(
        "stats = {s: activation_stats(store, s, n_tokens=None) for s in store.sites}\n"
        "for s, st in stats.items():\n"
        "    print(f'{s:>13}: effective rank {st.effective_rank(0.99)} of {model.d_model}')\n"
        "explained_variance_by_rank(stats, title='SmolLM2-135M layer 6')"
    ),
    new_markdown_cell(
        "## Train several SAEs from one read of the store\n\n"
        "Three inits on `attn_out.6` (random, tied, and the active-subspace init that puts every "
        "decoder row inside the top principal subspace) and one SAE on `resid_post.6`, all fed "
        "by the same shuffled batches. AuxK is off here so that the init alone decides which "
        "latents die; `dead_tokens` is the window after which a silent latent counts as dead."
    ),
    new_code_cell(
        "configs = [SaeConfig(d_in=576, d_sae=1024, k=16, site='attn_out.6', init=i,\n"
        "                     model_id=model.model_id)\n"
        "           for i in ('random', 'tied', 'active_subspace')]\n"
        "configs.append(SaeConfig(d_in=576, d_sae=1024, k=16, site='resid_post.6',\n"
        "                         init='active_subspace', model_id=model.model_id))\n"
        "cfg = TrainConfig(batch_size=512, max_tokens=4 * 8192, warmup_steps=8, auxk_alpha=0.0,\n"
        "                  dead_tokens=4096, init_tokens=4096, log_every=4)\n"
        "logs = {c.name: [] for c in configs}\n"
        "def log(p):\n"
        "    for name, m in p.metrics.items():\n"
        "        logs[name].append({'tokens': p.tokens, **m})\n"
        "result = train(store, configs, cfg, callback=log)\n"
        "for name, rep in result.init_reports.items():\n"
        "    print(f\"{name:<45} d_active {rep['d_active']:>3}  encoder scale {rep['encoder_scale']:.2f}\")\n"
        "training_curves(logs)"
    ),
    new_markdown_cell(
        "## Reconstruction, sparsity, dead latents\n\n"
        "`evaluate` accumulates `Σ‖x − x̂‖²` and `Σ‖x − x̄‖²` separately in float64 over the "
        "whole store, so FVU is about the mean of all tokens and does not depend on batching. "
        "A latent is dead here if it never fires on any of the store's tokens."
    ),
    new_code_cell(
        "metrics = {n: evaluate(sae, store) for n, sae in result.saes.items()}\n"
        "for n, m in metrics.items():\n"
        "    print(f'{n:<45} FVU {m.fvu:.3f}  L0 {m.l0:4.1f}  dead {100 * m.dead_frac:5.1f}%')\n"
        "density_figure({n.split('.w')[0] + ' ' + n.rsplit('.', 1)[-1]: m.density\n"
        "                for n, m in metrics.items()})"
    ),
    new_markdown_cell(
        "## Splice the SAE into the model\n\n"
        "`SaeSplice` is a steering intervention whose edit is `h ← x̂(h)`. Cross-entropy loss "
        "recovered is `(L_ablated − L_spliced) / (L_ablated − L_clean)`, against zero- and "
        "mean-ablation of the site; the KL version compares next-token distributions with the "
        "clean model's. The windows are the store's own token windows."
    ),
    new_code_cell(
        "resid = result.saes[configs[-1].name]\n"
        "losses = spliced_losses(model, resid, store_windows(store, 4),\n"
        "                        mean=stats['resid_post.6'].mean.float(), batch_size=2)\n"
        "for k, r in (('CE', losses.ce), ('KL', losses.kl)):\n"
        "    print(f'{k}: clean {r.clean:.3f}  spliced {r.spliced:.3f}  zero-abl {r.zero_abl:.3f}  '\n"
        "          f'mean-abl {r.mean_abl:.3f}  recovered vs zero {r.vs_zero:.3f}  vs mean {r.vs_mean:.3f}')\n"
        "with steer(model, SaeSplice(resid, positions='last')):  # any position rule works\n"
        "    pass"
    ),
    new_markdown_cell(
        "## Files: steerlab and SAELens layouts\n\n"
        "`save_saelens` writes `cfg.json` with SAELens's fields, `sae_weights.safetensors` and "
        "`sparsity.safetensors`; `load_saelens` reads it back to the same weights."
    ),
    new_code_cell(
        "d = tempfile.mkdtemp() + '/saelens'\n"
        "save_saelens(resid, d, density=metrics[configs[-1].name].density)\n"
        "back = load_saelens(d)\n"
        "print(sorted(p.name for p in __import__('pathlib').Path(d).iterdir()),\n"
        "      all(torch.equal(getattr(back, n), getattr(resid, n)) for n in ('W_enc', 'W_dec')))"
    ),
    new_markdown_cell(
        "## Latent dashboard\n\n"
        "For a few frequently firing latents: the contexts where they fire most (the token in "
        "red brackets) and their direct logit effects `W_dec[i] ⊙ γ @ W_Uᵀ`, the tokens the "
        "latent's decoder direction promotes and suppresses through the final norm and the "
        "unembedding."
    ),
    new_code_cell(
        "dens = metrics[configs[-1].name].density\n"
        "latents = dens.argsort(descending=True)[5:8].tolist()\n"
        "figs = latent_dashboard(resid, store, model, latents, n_contexts=6, n_logits=6)\n"
        "for f in figs.values():\n"
        "    f.show()"
    ),
]


NB["03_probes_pls.ipynb"] = [
    new_markdown_cell(
        "# Numeric attributes in linear subspaces: PLS probes, control tasks, interventions\n\n"
        "After El-Shangiti et al., *The Geometry of Numerical Reasoning* (NAACL 2025), on the "
        "embedded **SmolLM2-135M-Instruct**, offline. We (1) probe every layer for the value of a "
        "year mentioned in a sentence, (2) check which birth years the model knows and find the "
        "PLS subspace of those entities, (3) move an entity along the first PLS direction and "
        "count how often the model's Yes/No comparison answer flips, against random directions, "
        "and (4) measure a token-level probe's *selectivity* with Hewitt & Liang's control task. "
        "The full-size runs are `probes/numeric_pls.py` and `probes/linear_sweep.py`."
    ),
    new_code_cell(
        "import torch\n"
        "from steerlab import load_model\n"
        "from steerlab.probes.numeric import (load_number_sentences, load_entities, recall_check,\n"
        "                                     comparison_prompts, flip_experiment)\n"
        "from steerlab.probes.pls import PLSConfig, fit_pls\n"
        "from steerlab.probes.linear import ProbeConfig\n"
        "from steerlab.probes.sweep import (capture_layers, pls_sweep, selectivity_sweep,\n"
        "                                   code_token_task, format_table)\n"
        "from steerlab.views.probes import layer_curves, pls_components, flip_rates\n\n"
        "model = load_model()"
    ),
    new_markdown_cell(
        "## 1. Years in text, every layer in one pass\n\nEach sentence carries the character "
        "span of its year; digits are single tokens in this tokenizer, so the span's *last* "
        "token (the last digit) is the row we probe: the model must have gathered the earlier "
        "digits there. One capture pass returns all 30 layers."
    ),
    new_code_cell(
        "sents = load_number_sentences(kind='year')[:240]\n"
        "print(sents[0])\n"
        "cap = capture_layers(model, [s.text for s in sents], [s.span for s in sents])\n"
        "years = torch.tensor([s.value for s in sents], dtype=torch.float64)\n"
        "rows = pls_sweep(cap.acts, years, PLSConfig(max_components=8, test_fraction=0.2))\n"
        "print(format_table(rows[::3], ['layer', 'r2', 'mae', 'n_components']))\n"
        "layer_curves({'years in text': rows}, ['r2'], y_title='held-out R²')"
    ),
    new_markdown_cell(
        "The probe is `StandardScaler → PLSRegression` (numerically identical to scikit-learn's; "
        "the tests check it). Its subspace lives in **raw** activation space: the gradient of a "
        "score with respect to the raw activation is `w/σ`, not `w·σ` (which the reference code "
        "steers with). The two directions differ:"
    ),
    new_code_cell(
        "best = max(rows, key=lambda r: r['r2'])['layer']\n"
        "res = fit_pls(cap.acts[best].double(), years, PLSConfig(max_components=8))\n"
        "p = res.probe\n"
        "w_sigma = p.x_weights[:, 0] * p.scale\n"
        "print(f'layer {best}: R² {res.test.r2:.3f}, MAE {res.test.mae:.1f} years, '\n"
        "      f'{res.n_components} components')\n"
        "print('cosine(w/σ, w·σ) =', float(p.direction @ w_sigma / w_sigma.norm()))\n"
        "p.subspace()"
    ),
    new_markdown_cell(
        "## 2. Which birth years does the model know?\n\nGreedy completion of \"X was born in "
        "the year\", kept when within 5 years. Then the entity's last token in \"Was X\" (the "
        "start of the comparison prompt) is probed."
    ),
    new_code_cell(
        "people = load_entities('birth_year')\n"
        "people = people.subset([i < 120 for i in range(len(people.names))])\n"
        "rec = recall_check(model, people, batch_size=40)\n"
        "kept = people.subset(rec.correct)\n"
        "print(f'{len(kept.names)} of {len(people.names)} birth years recalled within 5 years')\n"
        "ent = capture_layers(model, ['Was ' + n for n in people.names], 'last')\n"
        "prow = pls_sweep(ent.acts, people.targets, PLSConfig(max_components=5, test_fraction=0.2))\n"
        "L = max(prow, key=lambda r: r['r2'])['layer']\n"
        "print(f'best layer {L}: held-out R² {max(r[\"r2\"] for r in prow):.3f} (all {len(people.names)} people)')"
    ),
    new_code_cell(
        "x = ent.acts[L].double()\n"
        "probe = fit_pls(x, people.targets, PLSConfig(n_components=3, test_fraction=0.2)).probe\n"
        "pls_components(probe.transform(x)[:, :2], people.values, people.names, value_name='birth year')"
    ),
    new_markdown_cell(
        "## 3. Moving an entity along the PLS direction\n\n\"Was X born before Y? Answer:\" — "
        "the model's answer is the sign of logit(\" Yes\") − logit(\" No\"). We add α·(spread of "
        "the PLS coordinate) along the first PLS direction at X's last token (a steering "
        "`AddVector` at `resid_post.L`), and the same norm along random directions."
    ),
    new_code_cell(
        "cmp = comparison_prompts(people, per_entity=1, min_gap=20)[:48]\n"
        "u = probe.direction\n"
        "unit = float(probe.subspace(1).project(x)[:, 0].std())\n"
        "up = bool(u.double() @ probe.coef > 0)\n"
        "exp = flip_experiment(model, cmp, u, L, [-8.0, 8.0], unit=unit, increases_value=up,\n"
        "                      n_random=1)\n"
        "print(f'unsteered accuracy {exp.accuracy:.2f}')\n"
        "print(format_table(exp.rows, ['direction', 'alpha', 'flips', 'n', 'flip_rate', 'ci_low',\n"
        "                              'ci_high', 'directed']))\n"
        "flip_rates(exp.rows)"
    ),
    new_markdown_cell(
        "## 4. Selectivity of a token-level probe\n\nEvery token of small standard-library "
        "functions is labelled with its lexical role (keyword, builtin, definition, attribute, "
        "name, number, string, operator). The control task gives each word *type* a random "
        "label; selectivity = task − control accuracy on held-out snippets."
    ),
    new_code_cell(
        "task = code_token_task(12, max_files=60)\n"
        "tok = capture_layers(model, task.texts, task.spans, layers=[0, 6, 12, 18, 24, 29])\n"
        "d, s = tok.doc_ids.tolist(), tok.span_ids.tolist()\n"
        "labels = torch.tensor([task.labels[i][j] for i, j in zip(d, s)])\n"
        "vocab = {}\n"
        "types = torch.tensor([vocab.setdefault(task.words[i][j], len(vocab)) for i, j in zip(d, s)])\n"
        "sel = selectivity_sweep(tok.acts, labels, types, ProbeConfig(C_grid=(1.0,), n_folds=0),\n"
        "                        groups=tok.doc_ids)\n"
        "print(format_table(sel, ['layer', 'task_acc', 'control_acc', 'selectivity', 'majority']))\n"
        "layer_curves(sel, ['task_acc', 'control_acc', 'selectivity'])"
    ),
]


NB["02_steering_vectors.ipynb"] = [
    new_markdown_cell(
        "# Steering vectors: fit, steer, evaluate\n\n"
        "This notebook runs offline on the embedded **SmolLM2-135M-Instruct**. It fits a "
        "sentiment steering vector from the contrast pairs in `data/steering/sentiment.jsonl` "
        "(difference of means of the assistant's tokens, CAA style), steers generation with it, "
        "sweeps its strength α and scores every point as AxBench does (concept, fluency, "
        "relevance and their harmonic mean) against a prompting baseline, and colours a text "
        "token by token by its projection on the vector."
    ),
    new_code_cell(
        "import os\n"
        "from pathlib import Path\n"
        "import torch\n"
        "from IPython.display import HTML\n"
        "import steerlab\n"
        "from steerlab import load_model\n"
        "from steerlab.steering.pairs import load_pairs, load_prompts\n"
        "from steerlab.steering.vectors import fit_vector\n\n"
        "if (os.cpu_count() or 1) <= 2:\n"
        "    torch.set_num_threads(1)  # greedy decoding is many small ops: one thread is faster here\n"
        "DATA = Path(steerlab.__file__).resolve().parents[1] / 'data' / 'steering'  # the checkout\n"
        "model = load_model()\n"
        "pairs = load_pairs(DATA / 'sentiment.jsonl')\n"
        "print(len(pairs), 'pairs, e.g.', pairs[0])"
    ),
    new_markdown_cell(
        "## Fit\n\n`fit_vector` reads every requested layer in one forward pass. With `chat=True` "
        "each pair is an exchange rendered with the chat template, and the vector is read from "
        "the assistant's tokens (the `generation` part of the sequence). The vector records the "
        "mean activation norm of its layer, so a strength α is a fraction of that norm. (A "
        "subset of the pairs keeps this notebook quick.)"
    ),
    new_code_cell(
        "LAYER = 9\n"
        "vec = fit_vector(model, pairs.subset(range(48)), f'resid_post.{LAYER}', chat=True)\n"
        "vec, float(vec.norms[0])"
    ),
    new_markdown_cell(
        "## Steer\n\n`generate` renders the chat template, pads batches on the left and decodes "
        "greedily; `compare` runs the same prompts with and without the intervention. The "
        "command line does the same: `steerlab steer --vector DIR --alpha 0.1 --prompt ...`."
    ),
    new_code_cell(
        "from steerlab.steering.generate import compare, format_side_by_side\n\n"
        "prompts = load_prompts(DATA / 'neutral_prompts.jsonl')\n"
        "for alpha in (0.1, -0.2):\n"
        "    cmp = compare(model, prompts[:2], vec.intervention(LAYER, alpha), max_new_tokens=24)\n"
        "    print(format_side_by_side(cmp, width=110, labels=('unsteered', f'alpha={alpha:+g}')))"
    ),
    new_markdown_cell(
        "## Sweep the strength\n\nFor each α the neutral prompts are generated steered and scored:"
        "\n\n- **concept**: mean VADER compound of the continuations (−1 … 1);\n"
        "- **fluency**: perplexity of the continuation under the *unsteered* model given the "
        "prompt, and the repetition rate (repeated word 4-grams); normalised as "
        "`min(1, PPL₀/ppl) · (1 − rep)`;\n"
        "- **relevance**: cosine of MiniLM embeddings of the steered and unsteered answers;\n"
        "- **combined**: the harmonic mean of the three normalised parts (zero if any is zero), "
        "towards the positive or the negative pole.\n\n"
        "The prompting baseline asks for the sentiment in a system message (dashed lines)."
    ),
    new_code_cell(
        "from steerlab.steering.evals import Sentiment, SweepConfig, strength_sweep\n"
        "from steerlab.views.steering import sweep_figure\n\n"
        "cfg = SweepConfig(alphas=(-0.2, -0.1, 0.1, 0.2), max_new_tokens=24)\n"
        "sweep = strength_sweep(model, prompts[:6], lambda a: vec.intervention(LAYER, a),\n"
        "                       Sentiment(), cfg)\n"
        "cols = ['concept', 'perplexity', 'fluency', 'relevance', 'combined_pos', 'combined_neg']\n"
        "print(f\"{'':<10}\" + ''.join(f'{c:>13}' for c in cols))\n"
        "for row in sweep.table():\n"
        "    print(f\"{row['label']:<10}\" + ''.join(f'{row[c]:13.3f}' for c in cols))"
    ),
    new_code_cell("sweep_figure(sweep)"),
    new_markdown_cell(
        "`best` picks α on half of the prompts and reports it, and the baseline, on the other "
        "half (AxBench chooses the factor on held-out data)."
    ),
    new_code_cell(
        "for pole in (1, -1):\n"
        "    b = sweep.best(pole)\n"
        "    print(f'pole {pole:+d}: alpha {b.alpha:+g}  steered combined '\n"
        "          f'{b.steered.combined(pole):.3f}  prompting {b.baseline.combined(pole):.3f}')"
    ),
    new_markdown_cell(
        "## Token by token\n\nThe projection of each token's activation at the vector's layer "
        "on its direction (unsteered model; centred on the text's mean): blue leans positive, "
        "red negative."
    ),
    new_code_cell(
        "from steerlab.steering.scores import token_projections\n"
        "from steerlab.views.steering import token_projection_figure, token_projection_html\n\n"
        "text = 'The food was cold and the waiter was rude, but the dessert was wonderful.'\n"
        "tp = token_projections(model, text, vec.direction(LAYER), f'resid_post.{LAYER}')\n"
        "HTML(token_projection_html(tp.tokens, tp.scores))"
    ),
    new_code_cell("token_projection_figure(tp.tokens, tp.scores, per_row=10)"),
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
