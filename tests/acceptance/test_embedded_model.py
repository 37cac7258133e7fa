"""Real-model acceptance: the safetensors cache equals the model transformers builds from GGUF."""

import pytest
import torch

from steerlab.models import SMOLLM2_GGUF, _package_dir

pytestmark = pytest.mark.slow


def test_cache_matches_gguf_dequantisation(model):
    from transformers import AutoModelForCausalLM

    folder = _package_dir("smollm2-135m-instruct")
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    x = model.tokenizer(
        ["The capital of France is", "def f(x):\n    return"], return_tensors="pt", padding=True
    )
    with torch.inference_mode():
        a = model.model(**x).logits
        b = ref(**x).logits
    # the same float32 weights run through the same code: identical up to nothing at all
    assert torch.equal(a, b)
