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
# # Numeric attributes in linear subspaces: PLS probes, control tasks, interventions
#
# After El-Shangiti et al., *The Geometry of Numerical Reasoning* (NAACL 2025), on the embedded
# **SmolLM2-135M-Instruct**, offline. We (1) probe every layer for the value of a year mentioned in
# a sentence, (2) check which birth years the model knows and find the PLS subspace of those
# entities, (3) move an entity along the first PLS direction and count how often the model's
# comparison answer flips, against random directions, and (4) measure a token-level probe's
# *selectivity* with Hewitt & Liang's control task. The full-size runs are `probes/numeric_pls.py`
# and `probes/linear_sweep.py`.

# %%
from steerlab.views.notebook import notebook_setup

notebook_setup()  # figures as interactive plot + HTML + PNG; no progress bars

# %%
import torch

from steerlab import load_model
from steerlab.datasets.numeric import comparison_prompts, load_entities, load_number_sentences
from steerlab.probes.linear import ProbeConfig
from steerlab.probes.numeric import recall_check
from steerlab.probes.numeric_causal import flip_experiment
from steerlab.probes.pls import PLSConfig, fit_pls
from steerlab.probes.sweep import (
    capture_layers,
    code_token_task,
    format_table,
    pls_sweep,
    selectivity_sweep,
)
from steerlab.views.probes import flip_rates, layer_curves, pls_components

model = load_model()
print(f"{model.model_id}: {model.n_layers} layers, d_model {model.d_model}")

# %% [markdown]
# ## 1. Years in text, every layer in one pass
#
# Each sentence carries the character span of its year; digits are single tokens in this tokenizer,
# so the span's *last* token (the last digit) is the row we probe: the model must have gathered the
# earlier digits there. One capture pass returns all 30 layers.

# %%
sents = load_number_sentences(kind="year")[:240]
print(sents[0])
cap = capture_layers(model, [s.text for s in sents], [s.span for s in sents])
years = torch.tensor([s.value for s in sents], dtype=torch.float64)
rows = pls_sweep(cap.acts, years, PLSConfig(max_components=8, test_fraction=0.2))
print(format_table(rows[::3], ["layer", "r2", "mae", "n_components"]))
layer_curves({"years in text": rows}, ["r2"], y_title="held-out R²")

# %% [markdown]
# The probe is `StandardScaler → PLSRegression` (numerically identical to scikit-learn's; the tests
# check it). Its subspace lives in **raw** activation space: the gradient of a score with respect to
# the raw activation is `w/σ`, not `w·σ` (which the reference code steers with). The two directions
# differ:

# %%
best = max(rows, key=lambda r: r["r2"])["layer"]
res = fit_pls(cap.acts[best].double(), years, PLSConfig(max_components=8))
p = res.probe
w_sigma = p.x_weights[:, 0] * p.scale
print(
    f"layer {best}: R² {res.test.r2:.3f}, MAE {res.test.mae:.1f} years, "
    f"{res.n_components} components"
)
print(f"cosine(w/σ, w·σ) = {float(p.direction @ w_sigma / w_sigma.norm()):.3f}")
p.subspace()

# %% [markdown]
# ## 2. Which birth years does the model know?
#
# Greedy completion of "X was born in the year", kept when within 5 years. Then the entity's last
# token in "Was X" (the start of the comparison prompt) is probed.

# %%
people = load_entities("birth_year")  # 301 people
rec = recall_check(model, people, batch_size=40)
kept = people.subset(rec.correct)
print(f"{len(kept.names)} of {len(people.names)} birth years recalled within 5 years")
ent = capture_layers(model, ["Was " + n for n in people.names], "last")
prow = pls_sweep(ent.acts, people.targets, PLSConfig(max_components=10, test_fraction=0.2))
print(format_table(prow[::3], ["layer", "r2", "mae", "n_components"]))
# an edit at resid_post.L reaches the answer only through the blocks after L (the last
# block's output at X is read by nothing), so take the best layer of the first half
L = max(prow[:15], key=lambda r: r["r2"])["layer"]
print(f"layer {L}: held-out R² {prow[L]['r2']:.3f} ({len(people.names)} people)")

# %%
x = ent.acts[L].double()
probe = fit_pls(x, people.targets, PLSConfig(max_components=10, test_fraction=0.2)).probe
pls_components(probe.transform(x)[:, :2], people.values, people.names, value_name="birth year")

# %% [markdown]
# ## 3. Moving an entity along the PLS direction
#
# "Was X born before Y? Answer:" — the model's answer is the sign of logit(" Yes") − logit(" No").
# We add α·(spread of the PLS coordinate) along the first PLS direction at X's last token (a
# steering `AddVector` at `resid_post.L`), and the same norm along random directions.

# %%
cmp = comparison_prompts(people, per_entity=1, min_gap=20)[:48]
# the first PLS direction, signed so that α > 0 raises the birth year, and the
# people's spread along it (the unit of α)
u, unit = probe.steering_direction(x)
exp = flip_experiment(model, cmp, u, L, [-8.0, 8.0], unit=unit, n_random=1)
print(f"unsteered accuracy {exp.accuracy:.2f}")
print(
    format_table(
        exp.rows, ["direction", "alpha", "flips", "n", "flip_rate", "ci_low", "ci_high", "directed"]
    )
)
flip_rates(exp.rows)

# %% [markdown]
# The 135M model answers these comparisons near chance (above), so there is little for a direction
# to flip. It does *recall* many birth years, so the causal test that fits this model edits X in "X
# was born in the year" and reads the year it then states: a *directed* change moves the year the
# way α should move it.

# %%
from steerlab.probes.numeric_causal import value_shift_experiment

shift = value_shift_experiment(model, kept, u, L, [-8.0, 8.0], unit=unit, n_random=2)
print(
    format_table(
        shift["rows"],
        [
            "direction",
            "alpha",
            "n",
            "directed",
            "changed",
            "directed_rate",
            "ci_low",
            "ci_high",
            "median_shift",
        ],
    )
)
flip_rates(shift["rows"], rate="directed_rate", title="Recalled year moved as intended")

# %% [markdown]
# ### A comparison the model does
#
# With both years in the prompt, "Which year is later, X or Y?" in the chat template and answered
# "The later year is 1…", the model is right about 93% of the time; its choice is the margin between
# the two years' second digits (`Comparison.answer_ids`). A PLS probe of X's year at X's last digit,
# fitted on *other* prompts, gives the direction; lowering X along it (α < 0) should turn the answer
# to Y, raising it should turn it to X.

# %%
from steerlab.datasets.numeric import year_comparisons

train_years, train = year_comparisons(model, 160, seed=1)
_, test = year_comparisons(model, 64, seed=0)
print(repr(test[0].text[-70:]))
yc = capture_layers(model, [c.text for c in train], [c.span_a for c in train], layers=[8])
xy = yc.acts[8].double()
yres = fit_pls(xy, train_years.values[[c.a for c in train]], PLSConfig(max_components=8))
uy, yunit = yres.probe.steering_direction(xy)  # α > 0 raises X's year
yexp = flip_experiment(model, test, uy, 8, [-8.0, 8.0], unit=yunit, yes_if_less=False, n_random=1)
print(f"held-out R² of the year {yres.test.r2:.3f}; unsteered accuracy {yexp.accuracy:.2f}")
print(
    format_table(
        yexp.rows,
        [
            "direction",
            "alpha",
            "flips",
            "n",
            "flip_rate",
            "ci_low",
            "ci_high",
            "directed",
            "eligible",
        ],
    )
)
flip_rates(yexp.rows, title="Which year is later? Answer flips, PLS vs random")

# %% [markdown]
# Lowering X flips many answers to Y, far more than random directions of the same norm; raising X
# moves the margin towards X too, but flips few answers (the README has the full run: `python
# probes/numeric_pls.py --stages compare`).

# %% [markdown]
# ## 4. Selectivity of a token-level probe
#
# Every token of small standard-library functions is labelled with its lexical role (keyword,
# builtin, definition, attribute, name, number, string, operator). The control task gives each word
# *type* a random label; selectivity = task − control accuracy on held-out snippets.

# %%
task = code_token_task(12, max_files=60)
tok = capture_layers(model, task.texts, task.spans, layers=[0, 6, 12, 18, 24, 29])
d, s = tok.doc_ids.tolist(), tok.span_ids.tolist()
labels = torch.tensor([task.labels[i][j] for i, j in zip(d, s)])
vocab = {}
types = torch.tensor([vocab.setdefault(task.words[i][j], len(vocab)) for i, j in zip(d, s)])
sel = selectivity_sweep(
    tok.acts, labels, types, ProbeConfig(C_grid=(1.0,), n_folds=0), groups=tok.doc_ids
)
print(format_table(sel, ["layer", "task_acc", "control_acc", "selectivity", "majority"]))
layer_curves(sel, ["task_acc", "control_acc", "selectivity"])
