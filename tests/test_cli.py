"""The `steerlab` command end to end on the embedded model, including kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from steerlab.capture import capture
from steerlab.capture.store import ActivationStore
from steerlab.cli import main
from steerlab.datasets.corpora import chunk_tokens, load_texts


def test_capture_info_view(tmp_path, capsys, model):
    out = tmp_path / "store"
    rc = main(
        [
            "capture",
            "--sites",
            "resid_post.2,attn_out.2",
            "--tokens",
            "1024",
            "--seq-len",
            "64",
            "--shard-tokens",
            "300",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert main(["store", "info", str(out), "--verify", "--json"]) == 0
    store = ActivationStore(out)
    assert store.n_tokens == 1024 and store.manifest["complete"]
    # reading back equals an in-memory capture of the same token windows
    chunks = chunk_tokens(model.tokenizer, load_texts("prose"), seq_len=64, n_tokens=1024)
    ref = capture(model, chunks.input_ids, "resid_post.2")
    torch.testing.assert_close(
        store.site("resid_post.2").to_tensor(), ref["resid_post.2"], atol=0, rtol=0
    )
    html = tmp_path / "pca.html"
    assert main(["view", "pca", str(out), "--site", "attn_out.2", "--out", str(html)]) == 0
    text = html.read_text()
    assert "plotly" in text and "attn_out.2" in text


def test_store_info_json(tmp_path, capsys):
    out = tmp_path / "s"
    main(
        [
            "capture",
            "--sites",
            "resid_post.1",
            "--tokens",
            "256",
            "--seq-len",
            "64",
            "--out",
            str(out),
        ]
    )
    capsys.readouterr()
    assert main(["store", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_tokens"] == 256 and info["model_id"] == "smollm2-135m-instruct"


def test_bad_site_is_a_clear_error(tmp_path, capsys):
    rc = main(
        ["capture", "--sites", "resid_post.99", "--tokens", "64", "--out", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "valid sites are" in err and "0..29" in err
    assert not (tmp_path / "x").exists()


def test_other_sites_into_existing_store_refused(tmp_path, capsys):
    out = tmp_path / "s"
    main(
        [
            "capture",
            "--sites",
            "resid_post.1",
            "--tokens",
            "128",
            "--seq-len",
            "64",
            "--out",
            str(out),
        ]
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc = main(
        [
            "capture",
            "--sites",
            "resid_post.2",
            "--tokens",
            "128",
            "--seq-len",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "sites" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_killed_capture_resumes(tmp_path, model):
    out = tmp_path / "s"
    args = [
        sys.executable,
        "-m",
        "steerlab.cli",
        "capture",
        "--sites",
        "resid_post.3",
        "--tokens",
        "6400",
        "--seq-len",
        "32",
        "--batch-size",
        "1",
        "--shard-tokens",
        "256",
        "--out",
        str(out),
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if manifest.is_file():
                m = json.loads(manifest.read_text())  # replaced atomically: never half-written
                if len(m["shards"]) >= 2:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = json.loads(manifest.read_text())
    assert not partial["complete"] and 2 <= len(partial["shards"]) < 25
    rc = subprocess.run(args, env=env, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    store = ActivationStore(out, verify=True)
    assert store.manifest["complete"] and store.n_tokens == 6400
    chunks = chunk_tokens(model.tokenizer, load_texts("prose"), seq_len=32, n_tokens=6400)
    ref = capture(model, chunks.input_ids, "resid_post.3", batch_size=1)
    torch.testing.assert_close(
        store.site("resid_post.3").to_tensor(), ref["resid_post.3"], atol=0, rtol=0
    )


@pytest.mark.parametrize("argv", [["--help"], ["capture", "--help"], ["store", "info", "--help"]])
def test_help(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
