"""Write the narrative notebooks from cell sources kept here (so diffs stay readable).

    python scripts/make_notebooks.py                      # every notebook
    python scripts/make_notebooks.py 06_ast_probe.ipynb   # only these

The notebooks are written without outputs; execute them with
``jupyter nbconvert --to notebook --execute --inplace notebooks/NAME.ipynb`` before committing.
"""

import sys
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
        "from steerlab.datasets.corpora import chunk_tokens, load_texts, token_contexts\n"
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
        "try:\n    capture(model, 'hello', 'resid_post.42')\nexcept ValueError as e:\n    print(e)"
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
        "from steerlab.datasets.corpora import chunk_tokens, load_texts\n"
        "from steerlab.saes import (SaeConfig, TrainConfig, activation_stats, evaluate, train,\n"
        "                           save_saelens, load_saelens)\n"
        "from steerlab.saes.splice import SaeSplice, spliced_losses, store_windows\n"
        "from steerlab.interventions import steer\n"
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
        "count how often the model's comparison answer flips, against random directions, "
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
        '## 2. Which birth years does the model know?\n\nGreedy completion of "X was born in '
        'the year", kept when within 5 years. Then the entity\'s last token in "Was X" (the '
        "start of the comparison prompt) is probed."
    ),
    new_code_cell(
        "people = load_entities('birth_year')  # 301 people\n"
        "rec = recall_check(model, people, batch_size=40)\n"
        "kept = people.subset(rec.correct)\n"
        "print(f'{len(kept.names)} of {len(people.names)} birth years recalled within 5 years')\n"
        "ent = capture_layers(model, ['Was ' + n for n in people.names], 'last')\n"
        "prow = pls_sweep(ent.acts, people.targets, PLSConfig(max_components=10, test_fraction=0.2))\n"
        "print(format_table(prow[::3], ['layer', 'r2', 'mae', 'n_components']))\n"
        "# an edit at resid_post.L reaches the answer only through the blocks after L (the last\n"
        "# block's output at X is read by nothing), so take the best layer of the first half\n"
        "L = max(prow[:15], key=lambda r: r['r2'])['layer']\n"
        "print(f'layer {L}: held-out R² {prow[L][\"r2\"]:.3f} ({len(people.names)} people)')"
    ),
    new_code_cell(
        "x = ent.acts[L].double()\n"
        "probe = fit_pls(x, people.targets, PLSConfig(max_components=10, test_fraction=0.2)).probe\n"
        "pls_components(probe.transform(x)[:, :2], people.values, people.names, value_name='birth year')"
    ),
    new_markdown_cell(
        '## 3. Moving an entity along the PLS direction\n\n"Was X born before Y? Answer:" — '
        'the model\'s answer is the sign of logit(" Yes") − logit(" No"). We add α·(spread of '
        "the PLS coordinate) along the first PLS direction at X's last token (a steering "
        "`AddVector` at `resid_post.L`), and the same norm along random directions."
    ),
    new_code_cell(
        "cmp = comparison_prompts(people, per_entity=1, min_gap=20)[:48]\n"
        "# the first PLS direction, signed so that α > 0 raises the birth year, and the\n"
        "# people's spread along it (the unit of α)\n"
        "u, unit = probe.steering_direction(x)\n"
        "exp = flip_experiment(model, cmp, u, L, [-8.0, 8.0], unit=unit, n_random=1)\n"
        "print(f'unsteered accuracy {exp.accuracy:.2f}')\n"
        "print(format_table(exp.rows, ['direction', 'alpha', 'flips', 'n', 'flip_rate', 'ci_low',\n"
        "                              'ci_high', 'directed']))\n"
        "flip_rates(exp.rows)"
    ),
    new_markdown_cell(
        "The 135M model answers these comparisons near chance (above), so there is little for "
        "a direction to flip. It does *recall* many birth years, so the causal test that fits "
        'this model edits X in "X was born in the year" and reads the year it then states: '
        "a *directed* change moves the year the way α should move it."
    ),
    new_code_cell(
        "from steerlab.probes.numeric import value_shift_experiment\n"
        "shift = value_shift_experiment(model, kept, u, L, [-8.0, 8.0], unit=unit, n_random=2)\n"
        "print(format_table(shift['rows'], ['direction', 'alpha', 'n', 'directed', 'changed',\n"
        "                                   'directed_rate', 'ci_low', 'ci_high', 'median_shift']))\n"
        "flip_rates(shift['rows'], rate='directed_rate', title='Recalled year moved as intended')"
    ),
    new_markdown_cell(
        '### A comparison the model does\n\nWith both years in the prompt, "Which year is '
        'later, X or Y?" in the chat template and answered "The later year is 1…", the model '
        "is right about 93% of the time; its choice is the margin between the two years' second "
        "digits (`Comparison.answer_ids`). A PLS probe of X's year at X's last digit, fitted on "
        "*other* prompts, gives the direction; lowering X along it (α < 0) should turn the "
        "answer to Y, raising it should turn it to X."
    ),
    new_code_cell(
        "from steerlab.probes.numeric import year_comparisons\n"
        "train_years, train = year_comparisons(model, 160, seed=1)\n"
        "_, test = year_comparisons(model, 64, seed=0)\n"
        "print(repr(test[0].text[-70:]))\n"
        "yc = capture_layers(model, [c.text for c in train], [c.span_a for c in train], layers=[8])\n"
        "xy = yc.acts[8].double()\n"
        "yres = fit_pls(xy, train_years.values[[c.a for c in train]], PLSConfig(max_components=8))\n"
        "uy, yunit = yres.probe.steering_direction(xy)  # α > 0 raises X's year\n"
        "yexp = flip_experiment(model, test, uy, 8, [-8.0, 8.0], unit=yunit, yes_if_less=False,\n"
        "                       n_random=1)\n"
        "print(f'held-out R² of the year {yres.test.r2:.3f}; unsteered accuracy {yexp.accuracy:.2f}')\n"
        "print(format_table(yexp.rows, ['direction', 'alpha', 'flips', 'n', 'flip_rate', 'ci_low',\n"
        "                               'ci_high', 'directed', 'eligible']))\n"
        "flip_rates(yexp.rows, title='Which year is later? Answer flips, PLS vs random')"
    ),
    new_markdown_cell(
        "Lowering X flips many answers to Y, far more than random directions of the same norm; "
        "raising X moves the margin towards X too, but flips few answers (the README has the "
        "full run: `python probes/numeric_pls.py --stages compare`)."
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
        "from steerlab.datasets.pairs import load_pairs, load_prompts\n"
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
        "- **fluency**: perplexity of the continuation under the *unsteered* model after a "
        "generic prefix (the same for every prompt, so new content is not counted as "
        "disfluency), and the repetition rate (repeated word 4-grams); normalised as "
        "`min(1, PPL₀/ppl) · (1 − rep)`;\n"
        "- **relevance**: cosine of the MiniLM embeddings of the answer and of the *prompt*, "
        "relative to the unsteered answer's (`similarity` is the raw cosine);\n"
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
        "cols = ['concept', 'perplexity', 'fluency', 'similarity', 'relevance', 'combined_pos',\n"
        "        'combined_neg']\n"
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


NB["04_concept_erasure.ipynb"] = [
    new_markdown_cell(
        "# Linear concept erasure: LEACE, R-LACE and INLP, inside the model\n\n"
        "This notebook runs offline on the embedded **SmolLM2-135M-Instruct**. The concept is "
        "the gender of the person in short third-person bios (`data/erasure/gender.jsonl`: "
        "templates x first names x professions, in the spirit of Bias in Bios), read at each "
        "text's last token; the held-out split uses first names never seen in training. We "
        "(1) capture every layer in one pass and find where gender is most linearly "
        "decodable, (2) erase it there with LEACE (closed form, Belrose et al. 2023), R-LACE "
        "(a rank-k minimax game, Ravfogel et al. 2022) and INLP (iterated nullspace "
        "projections, Ravfogel et al. 2020) and compare a fresh probe's held-out accuracy "
        "with the majority rate, as a function of the rank of the edit, (3) apply the LEACE "
        "eraser inside the model with `steer` and measure its cost in language modelling, and "
        "(4) scrub two layers. The full-size run is `probes/erase_concept.py`."
    ),
    new_code_cell(
        "import tempfile\n"
        "\n"
        "import torch\n"
        "from threadpoolctl import threadpool_limits\n"
        "\n"
        "from steerlab import load_model\n"
        "from steerlab.capture import capture\n"
        "from steerlab.datasets.corpora import chunk_tokens, prose_corpus\n"
        "from steerlab.erasure.leace import LeaceEraser\n"
        "from steerlab.erasure.evaluation import (accuracy_vs_rank, best_site, directions_needed,\n"
        "                                          evaluate_eraser, load_concept, probe_by_site)\n"
        "from steerlab.erasure.scrub import EraserEdit, lm_cost, scrub\n"
        "from steerlab.erasure.inlp import InlpConfig\n"
        "from steerlab.erasure.rlace import RlaceConfig\n"
        "from steerlab.interventions import load_intervention, steer\n"
        "from steerlab.views.erasure import (accuracy_vs_rank_figure, erasure_pca_figure,\n"
        "                                    probe_by_site_figure)\n"
        "\n"
        "# small problems on a shared CPU: one torch and one BLAS thread avoid oversubscription\n"
        "torch.set_num_threads(1)\n"
        "threadpool_limits(1)\n"
        "model = load_model()\n"
        "data = load_concept(n=320)  # a seeded subset of the 2,016 texts\n"
        "train, test = ~data.test, data.test\n"
        "y = data.labels\n"
        "print(f'{len(data.texts)} texts, {int(test.sum())} held out; classes {data.class_names}')\n"
        "for r in data.records[:3]:\n"
        "    print(r['label'], r['text'])"
    ),
    new_markdown_cell(
        "## 1. Where is gender linearly decodable?\n\n"
        "One capture pass returns the last-token residual stream after every block. A fresh "
        "logistic probe per layer (standardised features, trained on the train names, scored "
        "on the held-out names) picks the layer to erase at; ties go to the lower held-out "
        "log-loss."
    ),
    new_code_cell(
        "sites = [f'resid_post.{layer}' for layer in range(model.n_layers)]\n"
        "cap = capture(model, data.texts, sites, positions='last', batch_size=32)\n"
        "scores = probe_by_site(cap.acts, y, train, test)\n"
        "site = best_site(scores)\n"
        "majority = float(torch.bincount(y[test]).max()) / int(test.sum())\n"
        "print(f'best site {site}: held-out accuracy {scores[site].accuracy:.3f} '\n"
        "      f'(majority {majority:.3f})')\n"
        "probe_by_site_figure(scores, majority)"
    ),
    new_markdown_cell(
        "## 2. Erase it at that layer\n\n"
        "LEACE is closed form: `r(x) = x − P(x − μ)` with the oblique rank-1 `P` that makes "
        "both class means equal with the least squared change, so no linear classifier beats "
        "a constant on the training rows. `evaluate_eraser` trains a *fresh* probe on erased "
        "training rows and scores it on erased held-out rows, and reports the squared change "
        "and the rank of the edit. A probe that learned nothing predicts the training split's "
        "majority class; when that class is the *minority* of the held-out split it scores `1 "
        "− majority`, so `constant` is printed beside the majority rate."
    ),
    new_code_cell(
        "x = cap[site].double()\n"
        "xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]\n"
        "leace = LeaceEraser.fit(xtr, ytr)\n"
        "ev = evaluate_eraser(leace, xtr, ytr, xte, yte)\n"
        "print(f'probe accuracy {ev.accuracy_before:.3f} -> {ev.accuracy:.3f}; majority {ev.majority:.3f}, '\n"
        "      f'constant probe {ev.constant:.3f}')\n"
        "print(f'rank {ev.rank}; mean squared change {ev.mse:.1f} = {ev.relative_mse:.1%} of the variance')"
    ),
    new_markdown_cell(
        "R-LACE plays a game: a rank-k orthogonal projection (relaxed to the fantope) against "
        "a logistic predictor, alternating SGD steps; it keeps the projection with the "
        "highest held-out loss on a dev split of the training rows. Its steps scale with the "
        "activations, so it runs on unit-RMS inputs (`rlace_rescaled`; the projection is "
        "scale-free). INLP removes one classifier direction at a time; its curve shows how "
        "many directions a plain probe needs to lose. Kept short here (300 game steps, 20 "
        "classifiers; the recipe runs longer): with ~200 training rows in 576 dimensions, "
        "every INLP classifier finds a fresh separating direction, and R-LACE's game has not "
        "settled; `probes/erase_concept.py` runs both on all 2,016 texts."
    ),
    new_code_cell(
        "curves = accuracy_vs_rank(\n"
        "    xtr, ytr, xte, yte, rlace_ranks=(1,),\n"
        "    rlace_config=RlaceConfig(max_iter=300, eval_every=100, lr_P=0.02, lr_predictor=0.02,\n"
        "                             epsilon=0.001, dtype='float32'),\n"
        "    inlp_config=InlpConfig(n_iter=20, epsilon=0.01),\n"
        ")\n"
        "for method, c in curves.curves.items():\n"
        "    print(f'{method:>6}:', ', '.join(f'rank {r}: {a:.3f}' for r, a in zip(c.ranks, c.accuracy)))\n"
        "print('INLP needs', directions_needed(curves.curves['inlp'], curves.majority), 'directions to '\n"
        "      'come within 2 points of the majority rate')\n"
        "accuracy_vs_rank_figure(curves)"
    ),
    new_code_cell(
        "erased = {f'{m} (rank {c.ranks[-1]})': c.erasers[-1](xte) for m, c in curves.curves.items()}\n"
        "erasure_pca_figure(xte, erased, yte, class_names=data.class_names)"
    ),
    new_markdown_cell(
        "## 3. Inside the model\n\n"
        "`EraserEdit` turns any eraser into a steering intervention, saved and loaded like "
        "the others. Captured under `steer`, the site's activations are the eraser applied to "
        "the plain capture, up to float32 rounding, so the probe results above hold inside "
        "the model (the tests check it with a fresh probe on re-captured activations)."
    ),
    new_code_cell(
        "iv = EraserEdit(leace, site)  # every token, prompt and generation\n"
        "few = data.texts[:64]\n"
        "with steer(model, iv):\n"
        "    inside = capture(model, few, site, positions='last', batch_size=32)[site]\n"
        "print('max |in-model - eraser(captured)| =', (inside.double() - leace(x[:64])).abs().max().item(),\n"
        "      'on activations of norm', x[:64].norm(dim=1).mean().item())\n"
        "path = iv.save(tempfile.mkdtemp() + '/leace-gender')\n"
        "print(load_intervention(path))"
    ),
    new_markdown_cell(
        "What does the model do without the gender direction at that layer? Greedy "
        "continuations with and without the eraser, and the price in language modelling: mean "
        "next-token cross-entropy on a prose sample (the Python reference manual, shipped "
        "with CPython)."
    ),
    new_code_cell(
        "kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=model.tokenizer.eos_token_id)\n"
        "for prompt in ['Jessica is a nurse at the city hospital. Every morning,',\n"
        "               'Michael is a nurse at the city hospital. Every morning,']:\n"
        "    enc = model.tokenizer(prompt, return_tensors='pt')\n"
        "    plain = model.model.generate(**enc, **kw)[0, enc.input_ids.shape[1]:]\n"
        "    with steer(model, iv):\n"
        "        edited = model.model.generate(**enc, **kw)[0, enc.input_ids.shape[1]:]\n"
        "    print(prompt, '\\n   plain :', repr(model.tokenizer.decode(plain)),\n"
        "          '\\n   erased:', repr(model.tokenizer.decode(edited)))\n"
        "prose = chunk_tokens(model.tokenizer, prose_corpus(docstrings=False), seq_len=128,\n"
        "                     n_tokens=1024)\n"
        "cost = lm_cost(model, prose, iv)\n"
        "print(f'cross-entropy {cost.ce_base:.4f} -> {cost.ce_edited:.4f} nats/token '\n"
        "      f'(+{cost.increase:.4f}) over {cost.n_tokens} tokens')"
    ),
    new_markdown_cell(
        "## 4. Scrubbing several layers\n\n"
        "Erasing at one layer leaves the concept to be recomputed later. Concept scrubbing "
        "fits one LEACE eraser per layer, in order, each on activations captured with the "
        "earlier erasers already applied in the model."
    ),
    new_code_cell(
        "layer = int(site.split('.')[1])\n"
        "pair = [f'resid_post.{max(layer - 6, 0)}', site]\n"
        "texts_tr = [t for t, keep in zip(data.texts, train.tolist()) if keep][:96]\n"
        "res = scrub(model, texts_tr, ytr[:96], pair, batch_size=32)\n"
        "for s, e in res.erasers.items():\n"
        "    print(s, e)\n"
        "print(lm_cost(model, prose, res.interventions, base=cost.ce_base))"
    ),
]


NB["06_ast_probe.ipynb"] = [
    new_markdown_cell(
        "# AST-Probe: recover Python syntax trees from hidden states\n\n"
        "Hernández López et al. (ASE 2022) ask whether a code model's hidden states hold the "
        "abstract syntax tree of the code it reads. Their probe projects each AST leaf's "
        "vector with a matrix `B` (d_model x rank, kept near-orthonormal) and reads off, for "
        "each pair of adjacent leaves, a *syntactic distance* `d̂_i = ‖Bᵀh_i − Bᵀh_{i−1}‖²` and "
        "the label of their lowest common ancestor; each leaf also gets a unary label. Splitting "
        "the leaves recursively at the largest `d̂` rebuilds a tree, which is scored against "
        "tree-sitter's AST by labelled-constituent F1.\n\n"
        "This notebook runs the probe at two depths of the embedded SmolLM2-135M on a small "
        "sample of standard-library functions (a couple of minutes on a CPU). "
        "`python probes/ast_probe.py` runs every layer, the rank sweep and both baselines."
    ),
    new_code_cell(
        "import torch\n"
        "from steerlab import load_model, Subspace\n"
        "from steerlab.probes.ast.data import load_ast_snippets\n"
        "from steerlab.probes.ast.features import capture_leaf_features, snippet_from_code, "
        "subsample_splits\n"
        "from steerlab.probes.ast.probe import AstProbeConfig, evaluate_ast_probe, "
        "fit_ast_probe, predict_trees, split_data\n"
        "from steerlab.views.ast import f1_by_layer, pick_example, tree_pair\n\n"
        "torch.set_num_threads(1)  # small matrices: one thread avoids synchronisation overhead\n"
        "model = load_model()\n"
        "ds = load_ast_snippets(max_leaves=50, tokenizer=model.tokenizer)\n"
        "splits = subsample_splits(ds, n_train=150, n_dev=40, n_test=60, seed=0)\n"
        "print({k: len(v) for k, v in splits.items()}, 'of', ds.counts['kept'], 'functions kept;',\n"
        "      {k: ds.counts[k] for k in ('syntax_error', 'empty_body', 'too_many_leaves', "
        "'duplicate')})"
    ),
    new_markdown_cell(
        "## Data and targets\n\nEach function is cleaned (no comments or docstrings, strings "
        "collapsed to one leaf) and parsed with tree-sitter. The probe's targets come from the "
        "binarised tree: a distance and a label per adjacent leaf pair, a unary label per leaf."
    ),
    new_code_cell(
        "s = splits['test'][0]\n"
        "t = s.targets()\n"
        "print(s.code)\n"
        "for leaf, d, c in list(zip(s.leaves, t.d, t.c))[:8]:\n"
        "    print(f'{leaf!r:>12}  d={d:2d}  {c}')"
    ),
    new_markdown_cell(
        "## Leaf vectors\n\nOne forward pass pools every leaf's subword tokens (located "
        "through the tokenizer's character offsets) at the requested sites: the embeddings "
        "(`resid_pre.0`, depth 0) and the output of block 14 (depth 15)."
    ),
    new_code_cell(
        "SITES = ['resid_pre.0', 'resid_post.14']\n"
        "snippets = splits['train'] + splits['dev'] + splits['test']\n"
        "feats = capture_leaf_features(model, snippets, SITES)\n"
        "feats, feats.meta['straddling_tokens']"
    ),
    new_markdown_cell(
        "## Train and score\n\nThe paper's loss (pairwise hinge on the distances, "
        "cross-entropy on the labels, `5‖BᵀB − I‖²`), Adam and early stopping on dev; a higher "
        "learning rate than the paper's 1e-3 because this sample is small."
    ),
    new_code_cell(
        "cfg = AstProbeConfig(rank=64, lr=1e-2, max_epochs=12, patience=3, lr_patience=1)\n"
        "runs, probes = [], {}\n"
        "for depth, site in zip([0, 15], SITES):\n"
        "    data = split_data(feats, site, splits)\n"
        "    fit = fit_ast_probe(data['train'], data['dev'], cfg, meta={'site': site})\n"
        "    ev = evaluate_ast_probe(fit.probe, data['test'])\n"
        "    probes[site] = (fit.probe, data)\n"
        "    runs.append({'depth': depth, 'site': site, 'rank': cfg.rank, 'f1': ev.f1})\n"
        "    print(f'{site:>14}: test F1 {ev.f1:.3f} (P {ev.precision:.3f}, R {ev.recall:.3f}), '\n"
        "          f'label accuracy c {ev.c_accuracy:.3f} u {ev.u_accuracy:.3f}')\n"
        "f1_by_layer(runs, embeddings_f1=runs[0]['f1'], reference={'code models': 0.75})"
    ),
    new_markdown_cell(
        "## Predicted vs gold tree\n\nGreen nodes are constituents (label and leaf span) "
        "found in both trees, red ones only in this tree. Hover a node for its label and code."
    ),
    new_code_cell(
        "probe, data = probes['resid_post.14']\n"
        "trees = predict_trees(probe, data['test'])\n"
        "ev = evaluate_ast_probe(probe, data['test'])\n"
        "k = pick_example(ev.per_snippet, [len(t.leaves) for t in data['test'].targets])\n"
        "tree_pair(trees[k], data['test'].trees[k], splits['test'][k].leaves,\n"
        "          code=splits['test'][k].code)"
    ),
    new_markdown_cell(
        "## Your own code\n\n`snippet_from_code` cleans and parses a function (and says why "
        "when it cannot); the probe then predicts its tree from the model's hidden states."
    ),
    new_code_cell(
        "mine = snippet_from_code('def area(w, h):\\n    if w < 0:\\n        return 0\\n"
        "    return w * h\\n')\n"
        "h = capture_leaf_features(model, [mine], ['resid_post.14'])['resid_post.14']\n"
        "tree_pair(probe.predict(h, mine.leaves), mine.tree, mine.leaves, code=mine.code)"
    ),
    new_code_cell(
        "try:\n"
        "    snippet_from_code('def broken(:\\n    return')\n"
        "except ValueError as e:\n"
        "    print(e)"
    ),
    new_markdown_cell(
        "## The syntactic subspace\n\n`probe.subspace()` is the span of the directions the "
        "probe reads, as a `Subspace`. Its principal angles to the top principal directions "
        "of the same layer say whether syntax lives in the high-variance directions."
    ),
    new_code_cell(
        "sub = probe.subspace()\n"
        "x = data['train'].x[data['train'].index[data['train'].index >= 0]].float()\n"
        "pca = Subspace.from_pca(x, k=sub.k)\n"
        "rnd = Subspace.from_vectors(torch.randn(sub.k, model.d_model))\n"
        "print(sub, '\\nmedian principal angle to the top-64 PCA directions: '\n"
        "      f'{torch.rad2deg(sub.principal_angles(pca)).median():.1f} deg; '\n"
        "      f'to a random 64-dim subspace: {torch.rad2deg(sub.principal_angles(rnd)).median():.1f} deg')"
    ),
]

NB["07_multi_subspace_steering.ipynb"] = [
    new_markdown_cell(
        "# Multi-subspace steering (MSRS): attributes, gates and the tokens they act on\n\n"
        "MSRS (arXiv 2508.10599) steers several attributes at once with one module "
        "`h' = h + Rᵀ diag(m(h)) (W h + b − R h)`: the rows of `R` are orthonormal and split "
        "into a *shared* block and one block per attribute, and `m(h) = sigmoid(MLP(h))` gives "
        "each block a gate. This notebook runs offline on the embedded "
        "**SmolLM2-135M-Instruct** with two attributes from `data/steering`: negative sentiment "
        "and casual register, each with its own kind of input (a task frame from "
        "`task_frames.json`), as the paper's attributes come from different data sets. It "
        "initialises the blocks from activation differences, trains the module, steers with "
        "the ungated edit (what the paper's code does at inference) at three token rules, "
        "checks whether the gates route framed held-out prompts, and compares the learned "
        "subspaces with CAA vectors. `python steering/msrs_experiment.py` runs the full "
        "comparison (three attributes, three seeds, the paper's training settings, CAA, "
        "LoReFT, prompting, interference with confidence intervals)."
    ),
    new_code_cell(
        "import json\n"
        "import os\n"
        "from pathlib import Path\n"
        "import torch\n"
        "import steerlab\n"
        "from steerlab import load_model\n"
        "from steerlab.capture import capture\n"
        "from steerlab.interventions import TokenView, as_positions, load_intervention, scored\n"
        "from steerlab.steering.generate import generate\n"
        "from steerlab.steering.msrs import MSRS, MSRSLoss, init_bases, read_differences\n"
        "from steerlab.datasets.pairs import load_pairs, load_prompts\n"
        "from steerlab.steering.train import TrainConfig, TrainExample, train_intervention\n"
        "from steerlab.steering.user_tokens import chat_markers, user_token_mean\n"
        "from steerlab.steering.vectors import fit_vector\n"
        "from steerlab.datasets.pairs import ContrastPair\n"
        "from steerlab.views.msrs import gate_figure\n\n"
        "if (os.cpu_count() or 1) <= 2:\n"
        "    torch.set_num_threads(1)  # small ops: one thread avoids synchronisation overhead\n"
        "DATA = Path(steerlab.__file__).resolve().parents[1] / 'data' / 'steering'  # the checkout\n"
        "model = load_model()\n"
        "SITE = 'resid_post.9'\n"
        "FRAMES = json.loads((DATA / 'task_frames.json').read_text())['frames']\n"
        "# attribute -> (pair file, the side we steer towards)\n"
        "ATTRS = {'sentiment': ('sentiment.jsonl', 'negative'),\n"
        "         'formality': ('formality.jsonl', 'negative')}  # negative = casual register\n"
        "pairs = {a: [ContrastPair(p.positive, p.negative, FRAMES[a].format(prompt=p.prompt))\n"
        "             for p in load_pairs(DATA / f).subset(range(48))] for a, (f, _) in ATTRS.items()}\n"
        "examples = [TrainExample(p.prompt, getattr(p, side), a)\n"
        "            for a, (_, side) in ATTRS.items() for p in pairs[a]]\n"
        "prompts = load_prompts(DATA / 'neutral_prompts.jsonl')[:6]\n"
        "examples[0], examples[-1]"
    ),
    new_markdown_cell(
        "## Initial subspaces\n\nThe per-pair differences `x_target − x_other` (mean over the "
        "assistant's tokens) of both attributes are stacked; the shared block is their top "
        "singular vectors, each attribute's block the top singular vectors of what is left of "
        "its own differences. `energy` says how much of each attribute's difference energy each "
        "block keeps."
    ),
    new_code_cell(
        "diffs = read_differences(model, pairs, SITE, target={a: s for a, (_, s) in ATTRS.items()})\n"
        "init = init_bases(diffs, shared_rank=2, attribute_ranks=2)\n"
        "{block: {a: round(v, 3) for a, v in e.items()} for block, e in init.energy.items()}"
    ),
    new_markdown_cell(
        "## Train\n\nCross-entropy on the target tokens with the module at the last prompt "
        "token, plus MSRS's gate prior (shared ≈ 1, own attribute 0.9, others 0.1) and a term "
        "that keeps each block near its initial span. The orthogonal parametrisation keeps `R` "
        "orthonormal throughout. `TrainConfig()` defaults to the paper's code (4 epochs at "
        "batch 2, lr 5e-3); two quick epochs at batch 8 keep this notebook short.\n\n"
        "The module also gets what its token-level rule needs: the chat template's user-message "
        "markers and `μ`, the mean activation over the user tokens of the training prompts."
    ),
    new_code_cell(
        "markers = chat_markers(model)\n"
        "mu = user_token_mean(model, [e.prompt for e in examples], SITE, markers)\n"
        "torch.manual_seed(0)\n"
        "msrs = MSRS.from_init(init, SITE, markers=markers, center=mu)\n"
        "cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2)\n"
        "res = train_intervention(model, msrs, examples, cfg, extra_loss=MSRSLoss())\n"
        "R = msrs.R.weight.detach()\n"
        "print('CE per epoch', [round(x, 3) for x in res.epoch_ce],\n"
        "      '| max |R Rᵀ − I| =', float((R @ R.T - torch.eye(len(R))).abs().max()))"
    ),
    new_markdown_cell(
        "## Steer one attribute, or both, with the ungated edit\n\n`set_active` chooses the "
        "blocks (the shared block stays on while any attribute is). With "
        "`gates_at_inference=False` every active block has gate 1 outside training, as in the "
        "paper's code. Three position rules: `'last'` (every block at the last prompt token, "
        "as in training); `scored()` with `token_rule='user'` (each attribute block at the user "
        "message's token with the largest centred projection `‖R_i (h_t − μ)‖`); and "
        "`token_rule='paper'`, the paper's literal rule (largest `‖R_i h_t‖` over every prompt "
        "token)."
    ),
    new_code_cell(
        "msrs.gates_at_inference = False\n"
        "plain = generate(model, prompts, None, max_new_tokens=24)\n"
        "rows = {'unsteered': plain.texts}\n"
        "for rule, token_rule in [('last', 'user'), (scored(), 'user'), (scored(), 'paper')]:\n"
        "    msrs.positions, msrs.token_rule = as_positions(rule), token_rule\n"
        "    for active in (['sentiment'], ['formality'], ['sentiment', 'formality']):\n"
        "        msrs.set_active(active)\n"
        "        g = generate(model, prompts, msrs, max_new_tokens=24)\n"
        "        rows[f\"{'+'.join(active)} @ {msrs.positions} ({token_rule})\"] = g.texts\n"
        "for label, texts in rows.items():\n"
        "    print(f'--- {label}')\n"
        "    for t in texts[:2]:\n"
        "        print('  ', t.replace(chr(10), ' ')[:110])"
    ),
    new_markdown_cell(
        "## Which tokens the rules pick\n\nOver a whole chat prompt, the literal rule's argmax "
        'lands on the template: the default system prompt (" Sm" of "SmolLM") and role '
        "markers have large activations whatever the user asked. The user rule only looks at "
        "the user's own words, and centres the scores."
    ),
    new_code_cell(
        "def picks(m, prompt):\n"
        "    ids = model.tokenizer(model.chat(prompt), add_special_tokens=False, return_tensors='pt').input_ids\n"
        "    h = capture(model, ids, SITE, positions=torch.ones_like(ids, dtype=torch.bool))[SITE][None]\n"
        "    view = TokenView.from_mask(torch.ones_like(ids), ids.shape[1], input_ids=ids)\n"
        "    masks = m.block_masks(view, h)[0]\n"
        "    toks = model.tokenizer.convert_ids_to_tokens(ids[0].tolist())\n"
        "    return {n: toks[int(masks[:, sl.start].float().argmax())]\n"
        "            for n, sl in zip(m.names[1:], m.blocks()[1:])}\n\n"
        "msrs.positions = scored()\n"
        "msrs.set_active(list(ATTRS))\n"
        "for token_rule in ('paper', 'user'):\n"
        "    msrs.token_rule = token_rule\n"
        "    print(token_rule, [picks(msrs, p) for p in prompts[:4]])"
    ),
    new_markdown_cell(
        "## Do the gates route by input?\n\nHeld-out prompts (the neutral prompts, never "
        "trained on) wrapped in each attribute's frame, every attribute active, gates on: "
        "each block's gate at the token where it acts. If the gates route, the sentiment gate "
        "is high on feedback-survey prompts and the formality gate on coworker messages."
    ),
    new_code_cell(
        "msrs.gates_at_inference = True\n"
        "for rule in ('last', scored()):\n"
        "    msrs.positions, msrs.token_rule = as_positions(rule), 'user'\n"
        "    for a in ATTRS:\n"
        "        gs = []\n"
        "        for p in prompts:\n"
        "            ids = model.tokenizer(model.chat(FRAMES[a].format(prompt=p)),\n"
        "                                  add_special_tokens=False, return_tensors='pt').input_ids\n"
        "            h = capture(model, ids, SITE, positions=torch.ones_like(ids, dtype=torch.bool))[SITE][None]\n"
        "            view = TokenView.from_mask(torch.ones_like(ids), ids.shape[1], input_ids=ids)\n"
        "            gs.append(msrs.selected_gates(view, h)[0])\n"
        "        g = torch.stack(gs).nanmean(0)\n"
        "        print(f'{str(msrs.positions):<14} {a:>10} prompts: ' + '  '.join(\n"
        "            f'{n} {v:.2f}' for n, v in zip(msrs.names, g.tolist())))"
    ),
    new_markdown_cell(
        "## Gates over a steered text\n\nThe gate of every block and its token score at every "
        "token (the module's input: the unsteered activations of the steered text); crosses "
        "mark the token each attribute block chooses in the prompt (user rule)."
    ),
    new_code_cell(
        "msrs.positions, msrs.token_rule = scored(), 'user'\n"
        "g = generate(model, [FRAMES['sentiment'].format(prompt=prompts[0])], msrs, max_new_tokens=24)\n"
        "ids = torch.cat([g.prompt_ids[0], g.token_ids[0]])\n"
        "h = capture(model, ids[None], SITE, positions=torch.ones(1, len(ids), dtype=torch.bool))[SITE]\n"
        "tr = msrs.trace(h)\n"
        "plen = len(g.prompt_ids[0])\n"
        "view = TokenView.from_mask(torch.ones(1, len(ids), dtype=torch.long), len(ids),\n"
        "                           torch.tensor([plen]), ids[None])\n"
        "masks = msrs.block_masks(view, h[None])[0]\n"
        "chosen = {n: int(masks[:, sl.start].float().argmax())\n"
        "          for n, sl in zip(msrs.names[1:], msrs.blocks()[1:])}\n"
        "tokens = model.tokenizer.convert_ids_to_tokens(ids.tolist())\n"
        "print({n: tokens[p] for n, p in chosen.items()})\n"
        "gate_figure(tr, tokens, chosen=chosen, start=max(0, min(chosen.values()) - 6))"
    ),
    new_markdown_cell(
        "## Learned subspaces\n\nThe attribute blocks are orthogonal by construction (90°). "
        "How far did training move them from their initial span, and how close is each "
        "attribute's span (shared + own block) to that attribute's CAA vector?"
    ),
    new_code_cell(
        "caa = {a: fit_vector(model, pairs[a], SITE, chat=True).directions[0] for a in ATTRS}\n"
        "start = 0\n"
        "for name, size in zip(init.names, init.sizes):\n"
        "    moved = msrs.subspace(name).principal_angles(\n"
        "        steerlab.Subspace.from_vectors(init.R[start:start + size]))\n"
        "    start += size\n"
        "    print(f'{name:>10}: angles to its initial span {torch.rad2deg(moved).round().tolist()} deg')\n"
        "for a in ATTRS:\n"
        "    span = steerlab.Subspace.from_vectors(torch.cat([msrs.block('shared'), msrs.block(a)]).detach().double())\n"
        "    for b in ATTRS:\n"
        "        ang = span.principal_angles(steerlab.Subspace.from_vectors(caa[b].double()))[0]\n"
        "        print(f'span(shared+{a}) vs CAA {b}: {float(torch.rad2deg(ang)):.1f} deg')"
    ),
    new_markdown_cell(
        "## Save and load\n\nLike every intervention: a directory with `cfg.json` (kind `msrs`, "
        "blocks, attributes, active set, position and token rules, the user markers, whether "
        "the gates act at inference) and `msrs.safetensors` (with `μ`)."
    ),
    new_code_cell(
        "import tempfile\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    msrs.save(Path(d) / 'msrs')\n"
        "    back = load_intervention(Path(d) / 'msrs')\n"
        "    same = generate(model, prompts[:2], back, max_new_tokens=16).texts == \\\n"
        "        generate(model, prompts[:2], msrs, max_new_tokens=16).texts\n"
        "print(type(back).__name__, back.active, back.token_rule, 'same generations:', same)"
    ),
]


def main() -> None:
    here = Path(__file__).resolve().parent.parent / "notebooks"
    here.mkdir(exist_ok=True)
    names = sys.argv[1:] or list(NB)
    unknown = sorted(set(names) - set(NB))
    if unknown:
        raise SystemExit(f"unknown notebooks {unknown}; known: {sorted(NB)}")
    for name in names:
        cells = NB[name]
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, here / name)


if __name__ == "__main__":
    main()
