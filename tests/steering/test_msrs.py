"""MSRS: the module against a float64 closed form, its blocks, gates, positions, artifacts,
initialisation and bad input.

Closed-form checks run in float64 on d = 12 with O(1) entries: round-off ~d·eps64 ≈ 3e-15, so
ATOL = 1e-10 leaves a wide margin while a wrong formula is off by O(1).
"""

from __future__ import annotations

import pytest
import torch

from steerlab.capture import capture
from steerlab.interventions import Positions, TokenView, load_intervention, steer
from steerlab.steering.generate import generate
from steerlab.steering.msrs import MSRS, SHARED, MSRSLoss, init_bases
from steerlab.steering.train import TrainConfig, TrainExample, train_intervention
from steerlab.steering.user_tokens import ChatMarkers, chat_markers, user_token_mean

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


# a toy chat layout for the synthetic views: [7 8] system, [1 2 3] user header, user tokens,
# [4] footer, then the assistant header [1 5 3]
MARKERS = ChatMarkers(header=(1, 2, 3), footer=(4,))
IDS = torch.tensor([[7, 8, 1, 2, 3, 20, 21, 22, 4, 1, 5, 3],
                    [0, 0, 7, 1, 2, 3, 30, 31, 4, 1, 5, 3]])  # fmt: skip
USER = torch.zeros(2, 12, dtype=torch.bool)
USER[0, 5:8] = True
USER[1, 6:8] = True


def _module(dtype=torch.float64, positions=None, token_rule="paper", **kw) -> MSRS:
    init = init_bases(_diffs(), 2, {"a": 2, "b": 3})
    m = MSRS.from_init(init, SITE, positions, hidden=8, token_rule=token_rule, **kw).to(dtype)
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


def _chat_view() -> TokenView:
    am = torch.ones(2, 12, dtype=torch.long)
    am[1, :2] = 0  # row 1 is left-padded
    return TokenView.from_mask(am, 12, input_ids=IDS)


def test_user_rule_is_centred_argmax_over_user_tokens():
    center = torch.randn(D, dtype=torch.float64) * 3
    m = _module(token_rule="user", markers=MARKERS, center=center)
    h = torch.randn(2, 12, D, dtype=torch.float64)
    h[:, 0] *= 50  # a massive "sink" activation on a template token must not matter
    masks = m.block_masks(_chat_view(), h)
    R = m.R.weight.detach()
    for sl in m.blocks()[1:]:
        score = torch.linalg.vector_norm((h - m.center) @ R[sl].T, dim=-1)
        want = score.masked_fill(~USER, -1).argmax(1)
        chosen = masks[..., sl.start]
        assert chosen.sum(1).tolist() == [1, 1]
        assert chosen.float().argmax(1).tolist() == want.tolist()
        assert (chosen <= USER).all()  # never outside the user message
    # the paper's literal rule takes the sink (largest uncentred norm) instead
    m.token_rule = "paper"
    lit = m.block_masks(_chat_view(), h)
    assert lit[0, 0].all()


def test_user_rule_needs_markers_and_center():
    h = torch.randn(2, 12, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="markers"):
        _module(token_rule="user").block_masks(_chat_view(), h)
    with pytest.raises(ValueError, match="set_center"):
        _module(token_rule="user", markers=MARKERS).block_masks(_chat_view(), h)
    m = _module(token_rule="user", markers=MARKERS, center=torch.zeros(D))
    no_header = TokenView.from_mask(torch.ones(1, 4, dtype=torch.long), 4,
                                    input_ids=torch.tensor([[9, 9, 9, 9]]))  # fmt: skip
    with pytest.raises(ValueError, match="no user header"):
        m.block_masks(no_header, h[:1, :4])
    with pytest.raises(ValueError, match="center has shape"):
        m.set_center(torch.zeros(D + 1))
    with pytest.raises(ValueError, match="token_rule"):
        MSRS(D, [1, 1], ["a"], SITE, token_rule="argmax")


def test_gates_off_at_inference_is_the_ungated_edit():
    m = _module(gates_at_inference=False)
    h = torch.randn(2, 5, D, dtype=torch.float64)
    R = m.R.weight.detach()
    W, b = m.f.weight.detach(), m.f.bias.detach()
    m.set_active(["a"])  # shared + a rows with gate 1, b's rows 0
    on = torch.tensor([1.0] * 4 + [0.0] * 3, dtype=torch.float64)
    expected = h + (on * (h @ W.T + b - h @ R.T)) @ R  # h + Rᵀ diag(mask) (W h + b − R h)
    assert torch.allclose(m.edit(h), expected, atol=ATOL)
    m.train()  # training keeps the gates (they shape what each block learns)
    n1, n2 = m.gate.net[0], m.gate.net[2]
    gate = torch.sigmoid(torch.relu(h @ n1.weight.T + n1.bias) @ n2.weight.T + n2.bias)
    gate = gate.repeat_interleave(torch.tensor([2, 2, 3]), -1) * on
    assert torch.allclose(m.edit(h), h + (gate * (h @ W.T + b - h @ R.T)) @ R, atol=ATOL)


def test_selected_gates_read_each_block_at_its_token():
    m = _module(positions="last")
    h = torch.randn(2, 5, D, dtype=torch.float64)
    view = _view()
    got = m.selected_gates(view, h)
    last = [3, 4]  # row 0 has 4 real tokens
    want = torch.stack([m.group_gates(h[b, last[b]]) for b in range(2)]).detach()
    assert torch.allclose(got, want, atol=ATOL)
    m = _module(token_rule="user", markers=MARKERS, center=torch.zeros(D))
    masks = m.block_masks(_chat_view(), torch.randn(2, 12, D, dtype=torch.float64))
    got = m.selected_gates(_chat_view(), hh := torch.randn(2, 12, D, dtype=torch.float64))
    masks = m.block_masks(_chat_view(), hh)
    for g, sl in enumerate(m.blocks()):
        for b in range(2):
            pos = masks[b, :, sl.start].nonzero().flatten()
            assert torch.allclose(got[b, g], m.group_gates(hh[b, pos]).detach()[:, g].mean())


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


@pytest.mark.parametrize("token_rule", ["user", "paper"])
def test_save_load_identical(tmp_path, token_rule):
    m = _module(torch.float32, token_rule=token_rule, markers=MARKERS,
                center=torch.randn(D), gates_at_inference=token_rule == "paper")  # fmt: skip
    m.set_active(["b"])
    m.scale = 1.5
    m.save(tmp_path / "msrs")
    back = load_intervention(tmp_path / "msrs")
    assert isinstance(back, MSRS) and back.to_config() == m.to_config()
    assert back.markers == MARKERS and back.has_center and torch.equal(back.center, m.center)
    h = torch.randn(2, 12, D)
    view = _chat_view()
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
    # the tiny GPT-2 has no chat template: the paper's rule over every prompt token
    return MSRS.from_init(init_bases(diffs, 2, 2), SITE, hidden=8, token_rule="paper")


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


def test_positions_rule_default_is_scored_over_user_tokens():
    m = MSRS(D, [1, 1], ["a"], SITE)
    assert m.positions == Positions(part="prompt", tokens="scored", n=1)
    assert m.token_rule == "user" and m.gates_at_inference


# --- the token rule on the embedded model -------------------------------------------------------

CHAT_PROMPTS = ["Tell me about your weekend.", "What do you usually eat for breakfast?",
                "Describe the weather today.", "Write a short story about a cat.",
                "How do you usually get to work?", "What is your favourite season?"]  # fmt: skip


def _chosen_tokens(model, m: MSRS, prompts: list[str]) -> list[list[tuple[int, int]]]:
    """Per prompt, the (rank, token id) of every token an attribute block picked in the real
    steered generation (prefill call, left-padded batch)."""
    seen = []
    inner = m.block_masks

    def record(view, h):
        masks = inner(view, h)
        if view.is_prompt.any():
            seen.append((view, masks))
        return masks

    m.block_masks = record  # type: ignore[method-assign]
    try:
        generate(model, prompts, m, max_new_tokens=2, batch_size=3)
    finally:
        del m.block_masks
    out = []
    for view, masks in seen:
        starts = [sl.start for sl in m.blocks()[1:]]
        for b in range(masks.shape[0]):
            picks = masks[b][:, starts].any(-1).nonzero().flatten()
            out.append([(int(view.rank[b, p]), int(view.input_ids[b, p])) for p in picks])
    return out


def _template_basis(model, site: str) -> torch.Tensor:
    """Rows aimed at the template: block a contains the mean activation of " Sm" (of "SmolLM",
    in the default system prompt), block b that of the system message's <|im_end|> (the
    tokens the paper's rule picked after training, issue #16), plus random rows."""
    tok = model.tokenizer
    texts = [model.chat(p) for p in CHAT_PROMPTS]
    toks = tok.convert_ids_to_tokens(tok(texts[0], add_special_tokens=False)["input_ids"])
    i_sm, i_end = toks.index("ĠSm"), toks.index("<|im_end|>")
    h = capture(model, texts, site, positions=f"prompt:first_{i_end + 1}")[site].double()
    h = h.reshape(len(texts), i_end + 1, -1)  # the system part is the same length in every text
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(4, model.d_model, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(
        torch.cat([h[:, i_sm].mean(0)[None], h[:, i_end].mean(0)[None], rand]).T
    ).Q.T
    return Q[[2, 3, 0, 4, 1, 5]]  # [shared | a = " Sm", rand | b = <|im_end|>, rand]


def _outside_user(model, prompt: str, rank: int) -> bool:
    # independent of the markers: the user message's characters in the rendered prompt
    text = model.chat(prompt)
    lo = text.rindex(prompt)
    s, e = model.tokenizer(text, add_special_tokens=False,
                           return_offsets_mapping=True)["offset_mapping"][rank]  # fmt: skip
    return not (lo <= s and e <= lo + len(prompt))


def test_user_rule_never_picks_system_prompt_or_special_tokens(model):
    site = "resid_post.9"
    markers = chat_markers(model)
    mu = user_token_mean(model, CHAT_PROMPTS, site, markers)
    m = MSRS(model.d_model, [2, 2, 2], ["a", "b"], site, hidden=8, init=_template_basis(model, site),
             token_rule="paper", markers=markers, center=mu)  # fmt: skip
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    # the paper's literal rule falls for the template: some block leaves the user message in
    # every prompt (" Sm" of the system prompt, or a role marker)
    for prompt, picks in zip(CHAT_PROMPTS, _chosen_tokens(model, m, CHAT_PROMPTS)):
        assert any(_outside_user(model, prompt, r) for r, _ in picks), prompt
    # the restricted, centred rule with the same module stays inside the user's own words
    m.token_rule = "user"
    for prompt, picks in zip(CHAT_PROMPTS, _chosen_tokens(model, m, CHAT_PROMPTS)):
        ids = tok(model.chat(prompt), add_special_tokens=False)["input_ids"]
        assert len(picks) >= 1
        for rank, tid in picks:
            assert ids[rank] == tid and tid not in special
            assert not _outside_user(model, prompt, rank), (prompt, tok.decode([tid]))
