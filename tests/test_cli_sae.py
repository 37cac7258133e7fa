"""`steerlab sae train` / `steerlab sae eval`: round trip, kill-and-resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from steerlab.capture.store import ActivationStore, StoreWriter
from steerlab.cli import main
from steerlab.saes import evaluate, load_sae, load_saelens
from steerlab.saes.formats import CHECKPOINT_NAME, STATE_JSON, load_saelens_sparsity


def synthetic_store(path, n: int = 4096, d: int = 32, seed: int = 0) -> ActivationStore:
    """Sparse rows ``x = c D + μ`` (4 of 64 atoms each) in a store of 128-row shards."""
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(64, d, generator=g), dim=1)
    idx = torch.rand(n, 64, generator=g).topk(4, dim=1).indices
    codes = torch.zeros(n, 64).scatter_(1, idx, torch.rand(n, 4, generator=g) + 0.5)
    x = codes @ D + torch.randn(d, generator=g)
    with StoreWriter(path, model_id="tiny", sites={"x.0": d}, shard_tokens=128) as w:
        for i in range(0, n, 32):
            rows = torch.arange(i, i + 32)
            w.add({"x.0": x[rows]}, rows, rows // 32, rows % 32, 1)
        w.finish()
    return ActivationStore(path)


def test_train_eval_saelens_round_trip(tmp_path, model, capsys):
    store = tmp_path / "store"
    assert (
        main(
            [
                "capture",
                "--sites",
                "resid_post.1",
                "--tokens",
                "2048",
                "--seq-len",
                "64",
                "--shard-tokens",
                "512",
                "--out",
                str(store),
            ]
        )
        == 0
    )
    out, sl = tmp_path / "run", tmp_path / "saelens"
    argv = [
        "sae",
        "train",
        "--store",
        str(store),
        "--site",
        "resid_post.1",
        "--width",
        "256",
        "--k",
        "8",
        "--tokens",
        "4096",
        "--batch-size",
        "256",
        "--warmup-steps",
        "4",
        "--init-tokens",
        "1024",
        "--checkpoint-every",
        "4",
        "--init",
        "active-subspace",  # the library's default is "tied"; the dash spelling is accepted
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    for f in (
        "sae/cfg.json",
        "saelens/cfg.json",
        "saelens/sae_weights.safetensors",
        f"{CHECKPOINT_NAME}/{STATE_JSON}",
        "train.json",
        "train_log.jsonl",
    ):
        assert (out / f).is_file(), f
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 16]  # log_every=10 and the final step
    summary = json.loads((out / "train.json").read_text())
    assert summary["tokens"] == 4096 and summary["init"]["method"] == "active_subspace"

    capsys.readouterr()
    assert (
        main(
            [
                "sae",
                "eval",
                str(out),
                "--store",
                str(store),
                "--loss-windows",
                "2",
                "--loss-batch-size",
                "2",
                "--saelens",
                str(sl),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "recovered vs zero" in printed
    report = json.loads((out / "eval.json").read_text())
    sae = load_sae(out / "sae")
    ref = evaluate(sae, ActivationStore(store))  # the library on the same tokens
    assert report["metrics"]["fvu"] == ref.fvu and report["metrics"]["l0"] == ref.l0
    assert report["loss"]["n_tokens"] == 2 * 63
    ce = report["loss"]["ce"]
    assert ce["zero_abl"] > ce["spliced"] and 0 < ce["vs_zero"] <= 1.0 + 1e-9

    # the SAELens directory reads back to the same SAE, with the measured sparsity
    back = load_saelens(sl)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, n), getattr(sae, n)), n
    assert back.cfg.k == 8 and back.cfg.site == "resid_post.1"
    sparsity = load_saelens_sparsity(sl)
    torch.testing.assert_close(sparsity, torch.log10(ref.density.double() + 1e-10).float())
    # `sae eval` also reads the SAELens directory directly
    assert (
        main(
            [
                "sae",
                "eval",
                str(sl),
                "--store",
                str(store),
                "--loss-windows",
                "0",
                "--out",
                str(tmp_path / "e2.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e2.json").read_text())["metrics"] == report["metrics"]


def _train_args(store, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "steerlab.cli",
        "sae",
        "train",
        "--store",
        str(store),
        "--site",
        "x.0",
        "--width",
        "128",
        "--k",
        "4",
        "--tokens",
        str(64 * 600),
        "--batch-size",
        "64",
        "--warmup-steps",
        "20",
        "--dead-tokens",
        "2000",
        "--init-tokens",
        "1024",
        "--checkpoint-every",
        "10",
        "--out",
        str(out),
    ]


def test_killed_train_resumes_bit_exact(tmp_path):
    store = tmp_path / "store"
    synthetic_store(store)
    # the same thread count in every process: bit-exactness holds per machine and threads
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    r = subprocess.run(_train_args(store, ref_out), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen(
        _train_args(store, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = out / CHECKPOINT_NAME / STATE_JSON
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not state.is_file():
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = json.loads(state.read_text())  # checkpoints are atomic: never half-written
    assert not partial["complete"] and 10 <= partial["step"] < 600
    assert not (out / "sae").exists()

    r = subprocess.run(_train_args(store, out), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming at" in r.stdout
    a, b = load_sae(ref_out / "sae"), load_sae(out / "sae")
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, n), getattr(b, n)), n
    # the log has each step at most once, in order. Only the line of the checkpoint step may
    # be missing: train() writes the checkpoint, then calls back, and the kill can fall between
    steps = [json.loads(ln)["step"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    ref_steps = [
        json.loads(ln)["step"] for ln in (ref_out / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)) and set(steps) <= set(ref_steps)
    assert set(ref_steps) - set(steps) <= {partial["step"]}
    # a finished run rerun is a no-op that rewrites the same weights
    r = subprocess.run(_train_args(store, out), env=env, capture_output=True, text=True)
    assert r.returncode == 0 and torch.equal(load_sae(out / "sae").W_dec, a.W_dec)


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    store = tmp_path / "store"
    synthetic_store(store, n=1024)
    base = [
        "sae",
        "train",
        "--store",
        str(store),
        "--width",
        "64",
        "--tokens",
        "1024",
        "--batch-size",
        "128",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*base, "--site", "resid_post.6"]) == 1
    assert "no site 'resid_post.6'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a bad option value is a usage error naming the flag
        main([*base, "--site", "x.0", "--k", "64"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--k" in err and "k must satisfy" in err
    assert not (tmp_path / "o").exists()
    assert main([*base, "--site", "x.0", "--k", "4", "--init-tokens", "256"]) == 0
    capsys.readouterr()
    # another config into the same directory: refused, the checkpoint untouched
    before = (tmp_path / "o" / CHECKPOINT_NAME / STATE_JSON).read_text()
    assert main([*base, "--site", "x.0", "--k", "8", "--init-tokens", "256"]) == 1
    assert "another run" in capsys.readouterr().err
    assert (tmp_path / "o" / CHECKPOINT_NAME / STATE_JSON).read_text() == before
    assert main(["sae", "eval", str(tmp_path / "nothing"), "--store", str(store)]) == 1


@pytest.mark.parametrize(
    "argv", [["sae", "--help"], ["sae", "train", "--help"], ["sae", "eval", "--help"]]
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    if argv[1] == "train":  # options generated from SaeConfig and TrainConfig, with docstrings
        text = " ".join(capsys.readouterr().out.split())
        assert "--auxk-alpha" in text and "--dead-tokens" in text and "--tokens" in text
        assert "Weight of the AuxK loss of TopK SAEs" in text and "(default: 0.03125)" in text
        assert "--width" in text and "Number of latents" in text and "(default: tied)" in text
