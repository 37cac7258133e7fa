"""Steered generation against a hand-written greedy loop, batching, sampling and artifacts."""

from __future__ import annotations

import pytest
import torch

from steerlab.interventions import AddVector, LoReFT, steer
from steerlab.steering.generate import (
    compare,
    format_side_by_side,
    generate,
    left_pad,
    load_steering,
    render,
)

L = 12
N_NEW = 8
PROMPTS = ["Describe a chair.", "What is the capital of France?", "Write one line about rain."]


@pytest.fixture(scope="module")
def vec(model):
    g = torch.Generator().manual_seed(1)
    return torch.randn(model.d_model, generator=g)


def _hooks(module) -> dict:
    return {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
            for n, m in module.named_modules()}  # fmt: skip


def _manual_greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    """Greedy decoding by hand: full forward without cache, argmax of the last logits."""
    seq = ids.clone()
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model.model(input_ids=seq[None]).logits[0, -1]
            t = int(logits.argmax())
            if t == model.tokenizer.eos_token_id:
                break
            out.append(t)
            seq = torch.cat([seq, torch.tensor([t])])
    return out


def test_render_uses_chat_template(model):
    r = render(model, ["hi"], system="Be brief.")
    assert r == [model.chat("hi", system="Be brief.")]
    assert "Be brief." in r[0] and r[0].endswith("assistant\n")
    assert render(model, ["plain text"], chat=False) == ["plain text"]
    with pytest.raises(TypeError):
        render(model, "one string")
    with pytest.raises(ValueError, match="empty"):
        render(model, ["ok", ""])
    with pytest.raises(ValueError, match="chat=True"):
        render(model, ["x"], chat=False, system="s")


def test_prompt_ids_are_the_rendered_template(model):
    gen = generate(model, PROMPTS[:1], max_new_tokens=1)
    expected = model.tokenizer(model.chat(PROMPTS[0]), add_special_tokens=False)["input_ids"]
    assert gen.prompt_ids[0].tolist() == expected
    assert gen.prompts[0] == model.chat(PROMPTS[0])


def test_greedy_matches_manual_loop_unsteered_and_steered(model, vec):
    gen = generate(model, PROMPTS[:2], max_new_tokens=N_NEW)
    for ids, new in zip(gen.prompt_ids, gen.token_ids):
        assert new.tolist() == _manual_greedy(model, ids, N_NEW)
    iv = AddVector(vec, 8.0, f"resid_post.{L}")
    steered = generate(model, PROMPTS[:2], iv, max_new_tokens=N_NEW)
    with steer(model, iv):  # no cache, no padding, one example: the independent path
        manual = [_manual_greedy(model, ids, N_NEW) for ids in steered.prompt_ids]
    assert [t.tolist() for t in steered.token_ids] == manual
    assert steered.texts[0] == model.tokenizer.decode(manual[0], skip_special_tokens=True)


def test_loreft_generation_matches_manual_loop(model):
    # generate() caches LoReFT's parametrized R for the call; the manual loop recomputes it
    lo = LoReFT(model.d_model, 4, f"resid_post.{L}")
    with torch.no_grad():
        lo.f.weight.mul_(0.01)  # a mild edit, so that the text stays text
    gen = generate(model, PROMPTS[:1], lo, max_new_tokens=N_NEW)
    with steer(model, lo):
        assert gen.token_ids[0].tolist() == _manual_greedy(model, gen.prompt_ids[0], N_NEW)


def test_batched_left_padding_equals_one_by_one(model, vec):
    iv = AddVector(vec, 6.0, f"resid_post.{L}", positions="generation")
    batched = generate(model, PROMPTS, iv, max_new_tokens=N_NEW, batch_size=3)
    single = generate(model, PROMPTS, iv, max_new_tokens=N_NEW, batch_size=1)
    assert [t.tolist() for t in batched.token_ids] == [t.tolist() for t in single.token_ids]
    assert batched.texts == single.texts


def test_per_example_interventions(model, vec):
    iv = AddVector(vec, 8.0, f"resid_post.{L}")
    mixed = generate(model, PROMPTS[:2], [iv, None], per_example=True, max_new_tokens=N_NEW)
    a = generate(model, PROMPTS[:1], iv, max_new_tokens=N_NEW)
    b = generate(model, PROMPTS[1:2], None, max_new_tokens=N_NEW)
    assert mixed.texts == [a.texts[0], b.texts[0]]
    with pytest.raises(ValueError, match="one entry per prompt"):
        generate(model, PROMPTS[:2], [iv], per_example=True)


def test_hooks_removed_and_eos_cut(model, vec):
    before = _hooks(model.model)
    gen = generate(model, ["Say only the word yes."], AddVector(vec, 1.0, f"resid_post.{L}"),
                   max_new_tokens=24)  # fmt: skip
    assert _hooks(model.model) == before and "generate" not in model.model.__dict__
    eos = model.tokenizer.eos_token_id
    assert all(eos not in t.tolist() for t in gen.token_ids)
    assert gen.finished[0] == (len(gen.token_ids[0]) < 24)


def test_sampling_is_seeded_and_leaves_global_rng(model):
    state = torch.get_rng_state()
    a = generate(model, PROMPTS[:2], greedy=False, seed=7, max_new_tokens=N_NEW)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(model, PROMPTS[:2], greedy=False, seed=7, max_new_tokens=N_NEW)
    c = generate(model, PROMPTS[:2], greedy=False, seed=8, max_new_tokens=N_NEW, temperature=2.0)
    assert a.texts == b.texts
    assert a.texts != c.texts  # two 8-token samples at T=2 coinciding is vanishingly unlikely
    with pytest.raises(ValueError, match="temperature"):
        generate(model, PROMPTS[:1], greedy=False, temperature=0.0)


def test_compare_and_side_by_side(model, vec):
    cmp = compare(model, PROMPTS[:1], AddVector(vec, 12.0, f"resid_post.{L}"), max_new_tokens=6)
    assert cmp.unsteered.texts == generate(model, PROMPTS[:1], max_new_tokens=6).texts
    text = format_side_by_side(cmp, width=80)
    assert PROMPTS[0] in text and "unsteered" in text and "steered" in text
    first_words = cmp.steered.texts[0].split()[0]
    assert first_words in text


def test_left_pad():
    ids, am = left_pad([torch.tensor([1, 2, 3]), torch.tensor([4])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and am.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_load_steering_from_intervention_and_vector(model, vec, tmp_path):
    iv = AddVector(vec, 1.0, f"resid_post.{L}")
    iv.save(tmp_path / "iv")
    (loaded,) = load_steering(tmp_path / "iv", alpha=3.0)
    assert isinstance(loaded, AddVector) and loaded.alpha == 3.0
    torch.testing.assert_close(loaded.effective(), 3.0 * vec / vec.norm())
    with pytest.raises(ValueError, match="layer applies"):
        load_steering(tmp_path / "iv", layer=3)

    from steerlab.steering.vectors import SteeringVector

    sv = SteeringVector.from_direction(vec, "resid_post.4,resid_post.8", norms=[2.0, 5.0])
    sv.save(tmp_path / "sv")
    (a,) = load_steering(tmp_path / "sv", alpha=0.5, layer=8)
    assert a.site == "resid_post.8"
    torch.testing.assert_close(a.effective(), 0.5 * 5.0 * vec / vec.norm())
    assert len(load_steering(tmp_path / "sv", alpha=0.5, layer="all")) == 2
    with pytest.raises(ValueError, match="choose one"):
        load_steering(tmp_path / "sv", alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        load_steering(tmp_path / "sv", layer=8)

    from steerlab.steering.gguf import export_gguf

    export_gguf(sv, tmp_path / "sv.gguf", model_hint="llama")
    (g,) = load_steering(tmp_path / "sv.gguf", alpha=0.5, layer=8)
    torch.testing.assert_close(g.effective(), a.effective())


def test_bad_input(model, tiny_models):
    with pytest.raises(ValueError, match="encoder"):
        generate(tiny_models["bert"], ["x"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, [])
