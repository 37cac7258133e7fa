"""Inputs shared by the torchrun workers (worker.py) and the one-process references of the tests.

Everything is a function of fixed seeds, so a worker rank and the test process build the same
data, models and configs without exchanging anything but paths.
"""

from __future__ import annotations

from pathlib import Path

import torch

from steerlab.capture.store import StoreWriter
from steerlab.probes.pls import PLSConfig
from steerlab.saes.sae import SaeConfig
from steerlab.saes.train import TrainConfig

D = 8
"""Width of the fit data and of the SAE store."""
N_FIT = 301
"""Rows of the fit data (odd: the ranks' shares differ in size)."""
SITES = "resid_post.0,mlp_out.1"
"""Sites of the distributed capture."""
CAPTURE = {"n_seq": 13, "seq_len": 8, "batch_size": 2, "shard_tokens": 20}
"""Corpus and store shape of the distributed capture: 7 batches, the last one short."""
PLS = PLSConfig(n_components=None, max_components=4, n_folds=3, test_fraction=0.2, seed=1)


def fit_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x [n, d], labels [n] in 0..2, y [n] real, pairs [n, 2, d])`` with structure to find."""
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 3, (N_FIT,), generator=g)
    scale = torch.linspace(3.0, 0.3, D)  # distinct variances: a well-separated PCA spectrum
    x = torch.randn(N_FIT, D, generator=g, dtype=torch.float64) * scale
    x[:, 0] += 2.0 * labels
    y = x @ torch.linspace(1.0, -1.0, D, dtype=torch.float64) + 0.1 * torch.randn(
        N_FIT, generator=g, dtype=torch.float64
    )
    pos = x + torch.linspace(0.5, 1.5, D, dtype=torch.float64)
    pos = pos + 0.3 * torch.randn(N_FIT, D, generator=g, dtype=torch.float64)
    return x, labels, y, torch.stack([pos, x], 1)


def real_targets(x: torch.Tensor, labels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` real targets for the orthogonal LEACE fit: ``y`` and ``1[label = 1]``."""
    return torch.stack([y, (labels == 1).double()], 1)


def asi_config() -> SaeConfig:
    """A float64 TopK SAE with active-subspace init, built from the fit statistics."""
    return SaeConfig(d_in=D, d_sae=24, k=4, site="x", name="asi", init="active_subspace",
                     init_var=0.9, dtype="float64")  # fmt: skip


def tiny_model_dir(path: Path) -> Path:
    """A randomly initialised 2-layer GPT-2 (config only, no weights needed) with the embedded
    model's tokenizer, saved as an ordinary HF directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from steerlab.models import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def capture_tokens(vocab: int) -> torch.Tensor:
    """``[n_seq, seq_len]`` token windows of the distributed capture."""
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, vocab, (CAPTURE["n_seq"], CAPTURE["seq_len"]), generator=g)


def sae_store(path: Path) -> Path:
    """A store of 640 rows at site ``x`` (some attention-sink rows marked at position 0)."""
    g = torch.Generator().manual_seed(11)
    w = StoreWriter(path, model_id="synthetic", sites={"x": D, "y": D}, shard_tokens=96)
    basis = torch.randn(4, D, generator=g)
    for b in range(20):  # 20 batches of 4 sequences of 8 tokens
        n = 32
        acts = {
            "x": torch.randn(n, 4, generator=g) @ basis + 0.1 * torch.randn(n, D, generator=g),
            "y": torch.randn(n, D, generator=g) * torch.linspace(2.0, 0.5, D),
        }
        pos = torch.arange(8).repeat(4)
        docs = torch.arange(4 * b, 4 * b + 4).repeat_interleave(8)
        w.add(acts, torch.randint(0, 100, (n,), generator=g), docs, pos, n_sequences=4)
    w.finish()
    return path


def sae_configs() -> list[SaeConfig]:
    """Two TopK SAEs and a ReLU-L1 SAE on two sites, in float64 (see the tests' tolerance)."""
    return [
        SaeConfig(d_in=D, d_sae=32, k=4, site="x", name="topk_x", init="active_subspace",
                  dtype="float64"),
        SaeConfig(d_in=D, d_sae=16, k=3, site="y", name="topk_y", init="tied", dtype="float64"),
        SaeConfig(d_in=D, d_sae=16, architecture="relu_l1", l1_coefficient=0.05, site="x",
                  name="relu_x", init="random", dtype="float64"),
    ]  # fmt: skip


def train_config(checkpoint_dir: Path | None, distribute: str = "data") -> TrainConfig:
    """Six steps of 64 rows; latents count as dead after 64 tokens, so AuxK takes part."""
    return TrainConfig(
        batch_size=64, max_tokens=64 * 6, lr=3e-3, warmup_steps=0, decay_frac=0.0,
        dead_tokens=64, init_tokens=256, shards_in_memory=2, seed=5, log_every=2,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
        checkpoint_every=3, distribute=distribute,  # type: ignore[arg-type]
    )  # fmt: skip


def cli_capture(model_dir: Path, out: Path) -> list[str]:
    """``steerlab capture`` arguments: 384 prose tokens, 6 batches of 4 windows of 16."""
    return ["capture", "--sites", "resid_post.1", "--model", str(model_dir), "--corpus", "prose",
            "--tokens", "384", "--seq-len", "16", "--batch-size", "4", "--shard-tokens", "64",
            "--out", str(out)]  # fmt: skip


def cli_sae(store: Path, out: Path) -> list[str]:
    """``steerlab sae train`` arguments: a float64 TopK SAE, 4 steps of 64 rows."""
    return ["sae", "train", "--store", str(store), "--site", "resid_post.1", "--width", "32",
            "--k", "4", "--dtype", "float64", "--tokens", "256", "--batch-size", "64",
            "--init-tokens", "128", "--warmup-steps", "0", "--out", str(out)]  # fmt: skip
