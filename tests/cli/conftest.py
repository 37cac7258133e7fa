"""Shared by the tests of the `steerlab` command: a small store of real token ids, and the
check that a failure is one line on stderr."""

from __future__ import annotations

import pytest
import torch

from steerlab.capture.store import ActivationStore, StoreWriter

MODEL = "smollm2-135m-instruct"


def _one_line(err: str) -> str:
    """The single line of a failed command's stderr (as a terminal shows it: a progress bar
    erased with carriage returns is gone)."""
    lines = [ln.split("\r")[-1] for ln in err.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("steerlab: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def one_line():
    return _one_line


@pytest.fixture
def store(tmp_path) -> ActivationStore:
    """Random activations at ``resid_post.0`` (width 16) with real token ids of the embedded
    model (so views can decode them): 8 windows of 16 tokens, one ``doc_id`` each."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "store"
    with StoreWriter(path, model_id=MODEL, sites={"resid_post.0": 16}, shard_tokens=64) as w:
        for win in range(8):
            tok = torch.randint(200, 20_000, (16,), generator=g)
            x = torch.randn(16, 16, generator=g) * 3 + torch.linspace(-1, 1, 16)
            w.add({"resid_post.0": x}, tok, torch.full((16,), win), torch.arange(16), 1)
        w.finish()
    return ActivationStore(path)
