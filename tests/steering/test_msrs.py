"""MSRS: the module against a float64 closed form, its blocks, gates, positions, artifacts,
initialisation and bad input.

Closed-form checks run in float64 on d = 12 with O(1) entries: round-off ~d·eps64 ≈ 3e-15, so
ATOL = 1e-10 leaves a wide margin while a wrong formula is off by O(1).
"""

from __future__ import annotations

import pytest
import torch

from steerlab.interventions import Positions, TokenView, load_intervention, steer
from steerlab.steering.msrs import MSRS, SHARED, MSRSLoss, init_bases
from steerlab.steering.train import TrainConfig, TrainExample, train_intervention

ATOL = 1e-10
SITE = "resid_post.1"
D = 12


def _diffs(d: int = D, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e = torch.eye(d, dtype=torch.float64)
    return {
        "a": torch.randn(10, d, generator=g, dtype=torch.float64) + 4 * e[0],
        "b": torch.randn(9, d, generator=g, dtype=torch.float64) + 4 * e[1],
    }


def _module(dtype=torch.float64, positions=None) -> MSRS:
    init = init_bases(_diffs(), 2, {"a": 2, "b": 3})
    m = MSRS.from_init(init, SITE, positions, hidden=8).to(dtype)
    with torch.no_grad():  # move W, b and the gate away from their identity start
        for p in [m.f.weight, m.f.bias, *m.gate.parameters()]:
            p.add_(torch.randn_like(p) * 0.5)
    return m


def _view(batch: int = 2, pos: int = 5) -> TokenView:
    am = torch.ones(batch, pos, dtype=torch.long)
    am[0, -1] = 0  # one padded token
    return TokenView.from_mask(am, pos)


def test_init_blocks_orthonormal_and_energy():
    diffs = _diffs()
    init = init_bases(diffs, 2, 3)
    R = init.R
    assert init.sizes == [2, 3, 3] and init.names == [SHARED, "a", "b"]
    assert torch.allclose(R @ R.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    # the shared block is the top-2 right singular space of the stacked normalised differences
    X = torch.cat([x / torch.linalg.matrix_norm(x) for x in diffs.values()])
    V = torch.linalg.svd(X, full_matrices=False).Vh[:2]
    assert torch.allclose(R[:2].T @ R[:2], V.T @ V, atol=1e-10)
    for a in "ab":
        assert 0 < init.energy[SHARED][a] <= 1 and 0 < init.energy["residual"][a] <= 1
    # shared + own energy never exceeds the attribute's (unit) total
    assert init.energy[SHARED]["a"] + init.energy["a"]["a"] <= 1 + 1e-12


def test_closed_form_float64():
    m = _module()
    h = torch.randn(2, 5, D, dtype=torch.float64)
    R = m.R.weight.detach()
    W, b = m.f.weight.detach(), m.f.bias.detach()
    n1, n2 = m.gate.net[0], m.gate.net[2]
    gate = torch.sigmoid(torch.relu(h @ n1.weight.T + n1.bias) @ n2.weight.T + n2.bias)
    gate = gate.repeat_interleave(torch.tensor([2, 2, 3]), -1)
    expected = h + (gate * (h @ W.T + b - h @ R.T)) @ R  # h + Rᵀ diag(m(h)) (W h + b − R h)
    assert torch.allclose(m.edit(h), expected, atol=ATOL)
    m.scale = 0.5
    assert torch.allclose(m.edit(h), h + 0.5 * (expected - h), atol=ATOL)


def test_gates_at_zero_is_identity():
    m = _module(torch.float32)
    h = torch.randn(2, 5, D)
    view = _view()
    m.set_active([])
    assert torch.equal(m.apply_at(SITE, h, view), h)
    m.set_active(["a", "b"])
    with torch.no_grad():
        m.gate.net[2].bias.fill_(-1e4)  # sigmoid(−1e4) == 0 in float32
    assert torch.equal(m.edit(h), h)


def test_inactive_attribute_rows_do_not_act():
    m = _module()
    h = torch.randn(1, 4, D, dtype=torch.float64)
    m.set_active(["a"])
    delta = m.edit(h) - h
    # the change lies in span(shared, a); b's block sees none of it (R was built in float32,
    # so its rows are orthonormal to ~1e-7 only: 1e-5 on O(1) activations)
    leak = delta @ m.block("b").detach().T
    assert torch.allclose(leak, torch.zeros_like(leak), atol=1e-5)
    assert delta.abs().max() > 1e-3


def test_token_level_choice_is_argmax_per_block():
    m = _module()
    h = torch.randn(2, 5, D, dtype=torch.float64)
    view = _view()
    view = TokenView(view.real, view.rank, torch.tensor([4, 5]), None)
    masks = m.block_masks(view, h)
    R = m.R.weight.detach()
    for name, sl in zip(m.names[1:], m.blocks()[1:]):
        score = torch.linalg.vector_norm(h @ R[sl].T, dim=-1).masked_fill(~view.is_prompt, -1)
        chosen = masks[..., sl.start]
        assert chosen.sum(1).tolist() == [1, 1], name
        assert chosen.float().argmax(1).tolist() == score.argmax(1).tolist(), name
        assert masks[..., sl].all(-1).eq(chosen).all()  # every row of the block agrees
    shared = masks[..., 0]
    assert torch.equal(shared, masks[..., 2] | masks[..., 4])
    # the output edits exactly those tokens, and each block only at its own token
    out = m.apply_at(SITE, h, view)
    edited = (out != h).any(-1)
    assert torch.equal(edited, masks.any(-1))
    assert torch.allclose(out, torch.where(edited[..., None], m.edit(h, masks), h), atol=ATOL)


def test_other_rules_apply_every_block_at_the_rule():
    m = _module(positions="last")
    h = torch.randn(2, 5, D, dtype=torch.float64)
    view = _view()
    out = m.apply_at(SITE, h, view)
    mask = m.positions.mask(view)
    assert torch.equal((out != h).any(-1), mask)
    assert torch.allclose(out[mask], m.edit(h)[mask], atol=ATOL)


def test_save_load_identical(tmp_path):
    m = _module(torch.float32)
    m.set_active(["b"])
    m.scale = 1.5
    m.save(tmp_path / "msrs")
    back = load_intervention(tmp_path / "msrs")
    assert isinstance(back, MSRS) and back.to_config() == m.to_config()
    h = torch.randn(2, 5, D)
    view = _view()
    assert torch.equal(back.apply_at(SITE, h, view), m.apply_at(SITE, h, view))
    assert torch.equal(back.R.weight, m.R.weight) and torch.equal(back.R_init, m.R_init)


def test_subspaces_are_orthogonal():
    m = _module()
    angles = m.subspace("a").principal_angles(m.subspace("b"))
    assert torch.allclose(angles, torch.full_like(angles, torch.pi / 2), atol=1e-6)


def test_bad_input():
    diffs = _diffs()
    with pytest.raises(ValueError, match="no data"):
        init_bases({**diffs, "c": torch.zeros(0, D, dtype=torch.float64)}, 2, 2)
    with pytest.raises(ValueError, match="at least one"):
        init_bases({}, 1, 1)
    with pytest.raises(ValueError, match="mismatched widths"):
        init_bases({**diffs, "c": torch.randn(5, D + 1, dtype=torch.float64)}, 2, 2)
    with pytest.raises(ValueError, match="d_model"):
        init_bases(diffs, 4, 5)
    with pytest.raises(ValueError, match="exceeds the rank"):
        init_bases({"a": diffs["a"][:2], "b": diffs["b"][:2]}, 5, 1)  # stacked rank 4
    with pytest.raises(ValueError, match="exceeds the rank"):
        init_bases({"a": diffs["a"][:2], "b": diffs["b"]}, 1, {"a": 3, "b": 1})
    with pytest.raises(ValueError, match="NaN"):
        init_bases({"a": torch.full((3, D), float("nan"), dtype=torch.float64)}, 1, 1)
    with pytest.raises(ValueError, match="block sizes"):
        MSRS(D, [2, 2], ["a", "b"], SITE)
    with pytest.raises(ValueError, match="d_model"):
        MSRS(D, [4, 5, 4], ["a", "b"], SITE)
    with pytest.raises(ValueError, match="expected"):
        MSRS(D, [1, 1], ["a"], SITE, init=torch.eye(D)[:3])
    m = MSRS(D, [1, 1], ["a"], SITE)
    with pytest.raises(ValueError, match="width"):
        m(torch.randn(1, 2, D + 1))
    with pytest.raises(ValueError, match="unknown attributes"):
        m.set_active(["z"])


# --- with a model -----------------------------------------------------------------------------

EXAMPLES = [
    TrainExample("Say something.", "Blue whales sing.", "a"),
    TrainExample("Tell me a fact.", "Blue whales sing.", "a"),
    TrainExample("Hello there.", "Quiet rivers flow.", "b"),
    TrainExample("What now?", "Quiet rivers flow.", "b"),
]


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models["gpt2"]


def _gpt2_msrs(handle) -> MSRS:
    torch.manual_seed(0)
    d = handle.d_model
    diffs = {a: torch.randn(6, d, dtype=torch.float64) for a in "ab"}
    return MSRS.from_init(init_bases(diffs, 2, 2), SITE, hidden=8)


def test_training_keeps_R_orthonormal_and_lowers_loss(gpt2):
    m = _gpt2_msrs(gpt2)
    cfg = TrainConfig(epochs=6, batch_size=2, lr=2e-2, max_target_tokens=6)
    res = train_intervention(gpt2, m, EXAMPLES, cfg, extra_loss=MSRSLoss())
    R = m.R.weight.detach().double()
    # the orthogonal parametrisation keeps R orthonormal to float32 round-off (r = 6 rows)
    assert torch.allclose(R @ R.T, torch.eye(6, dtype=torch.float64), atol=1e-5)
    assert (R - m.R_init.double()).abs().max() > 1e-4  # R did move
    assert res.epoch_ce[-1] < res.epoch_ce[0]
    assert {"gate", "align", "ce", "loss"} <= set(res.history[0])
    assert m.positions.tokens == "scored" and not m.training  # rule and mode restored


def test_generation_with_and_without_cache(gpt2):
    m = _gpt2_msrs(gpt2)
    with torch.no_grad():
        m.f.bias.add_(5.0)  # a visible edit
    ids = torch.tensor([[5, 17, 300, 42, 9, 77]])
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        plain = gpt2.model.generate(input_ids=ids, **kw)
        with steer(gpt2, m):
            cached = gpt2.model.generate(input_ids=ids, use_cache=True, **kw)
            uncached = gpt2.model.generate(input_ids=ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)


def test_positions_rule_default_is_scored():
    m = MSRS(D, [1, 1], ["a"], SITE)
    assert m.positions == Positions(part="prompt", tokens="scored", n=1)
