"""Shared fixtures: seeds, the embedded model (session-scoped), tiny GPT-2 / BERT models."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

# Keep the two cores of CI machines for torch's intra-op pool, not for oversubscription.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
