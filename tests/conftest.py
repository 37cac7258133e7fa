"""Shared fixtures: seeds, the embedded model (session-scoped), tiny GPT-2 / BERT models; the
hypothesis profiles and the ``property`` marker.

Property tests (every ``@given`` test; they get the ``property`` marker automatically) run
under one of two hypothesis profiles, chosen by ``$STEERLAB_HYPOTHESIS_PROFILE``:

- ``derandomized`` (the default): the examples are a fixed function of each test, so the suite
  passes or fails the same way on every clone and every run;
- ``random``: fresh examples each run; ``.ci/run`` runs ``pytest -m property`` a second time
  with it and a ``--hypothesis-seed`` it prints, so a failure found there replays with
  ``STEERLAB_HYPOTHESIS_PROFILE=random pytest -m property --hypothesis-seed=<seed>``.

Neither keeps an example database (``.hypothesis/``): what runs depends only on the profile,
the seed and the code. Tests that set ``max_examples`` themselves keep their own count.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Keep the two cores of CI machines for torch's intra-op pool, not for oversubscription.
torch.set_num_threads(min(2, os.cpu_count() or 1))

PROFILE_ENV = "STEERLAB_HYPOTHESIS_PROFILE"
_COMMON = {
    "max_examples": 50,
    "deadline": None,  # wall-clock limits fail on a loaded machine, not on wrong code
    "database": None,
    "print_blob": True,  # a failure prints @reproduce_failure(...) to replay it exactly
    # generation speed depends on the machine's load, never on the code's correctness
    "suppress_health_check": [HealthCheck.too_slow],
}
settings.register_profile("derandomized", derandomize=True, **_COMMON)
settings.register_profile("random", derandomize=False, **_COMMON)
settings.load_profile(os.environ.get(PROFILE_ENV, "derandomized"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "property: a hypothesis property test (added to every @given test)"
    )


@pytest.hookimpl(tryfirst=True)  # before -m selects by markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def model():
    """The embedded SmolLM2-135M-Instruct (loads from the steerlab cache in ~1 s)."""
    from steerlab.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def tiny_models(model):
    """Randomly initialised tiny GPT-2 and BERT sharing the embedded model's tokenizer.

    They exercise the GPT-2 and BERT site maps without any download.
    """
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    from steerlab.models import from_hf

    torch.manual_seed(0)
    vocab = len(model.tokenizer)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=3, n_head=4)
    )
    bert = BertModel(
        BertConfig(
            vocab_size=vocab,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=256,
        )
    )
    return {
        "gpt2": from_hf(gpt2, model.tokenizer, "tiny-gpt2"),
        "bert": from_hf(bert, model.tokenizer, "tiny-bert"),
    }
