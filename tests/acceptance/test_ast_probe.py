"""Real-model acceptance for the AST-Probe (slow: minutes on a 2-core CPU).

On a small sample of standard-library functions, a probe on a middle layer of the embedded
SmolLM2-135M must rebuild held-out ASTs clearly better than the same probe on the token
embeddings (depth 0) and on the same layer of a randomly initialised model of the same
architecture: the two baselines of AST-Probe (Hernández López et al., ASE 2022).

Thresholds sit below what probes/ast_probe.py measured on more data (see docs/results_probes.md), so the
check catches regressions without depending on one run's numbers.
"""

from __future__ import annotations

import pytest
import torch

from steerlab.probes.ast.data import load_ast_snippets
from steerlab.probes.ast.features import capture_leaf_features, random_init_model, subsample_splits
from steerlab.probes.ast.probe import AstProbeConfig, evaluate_ast_probe, fit_ast_probe, split_data

pytestmark = pytest.mark.slow

MID = "resid_post.14"


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _f1(feats, site, splits) -> float:
    data = split_data(feats, site, splits)
    cfg = AstProbeConfig(rank=64, lr=1e-2, max_epochs=12, patience=3, lr_patience=1)
    fit = fit_ast_probe(data["train"], data["dev"], cfg)
    return evaluate_ast_probe(fit.probe, data["test"]).f1


def test_middle_layer_beats_both_baselines(model, one_thread):
    ds = load_ast_snippets(max_leaves=60, tokenizer=model.tokenizer)
    splits = subsample_splits(ds, 250, 50, 100, seed=0)
    snippets = splits["train"] + splits["dev"] + splits["test"]
    feats = capture_leaf_features(model, snippets, ["resid_pre.0", MID])
    rand = capture_leaf_features(random_init_model(model, seed=0), snippets, [MID])
    f1_mid, f1_emb = _f1(feats, MID, splits), _f1(feats, "resid_pre.0", splits)
    f1_rand = _f1(rand, MID, splits)
    assert f1_mid > f1_emb + 0.05, (f1_mid, f1_emb)
    assert f1_mid > f1_rand + 0.05, (f1_mid, f1_rand)
    assert f1_mid > 0.3, f1_mid
