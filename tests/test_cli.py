"""The `steerlab` command end to end on the embedded model, including kill-and-resume."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import steerlab
import steerlab.cli.common as cli_common
from steerlab.capture import capture
from steerlab.capture.store import ActivationStore
from steerlab.cli import build_parser, main
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
    assert rc == 1 and "valid sites are" in err and "0..29" in err and "Traceback" not in err
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
    assert rc == 1 and "sites" in capsys.readouterr().err
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


def test_capture_tokenises_before_loading_the_model(tmp_path, capsys, monkeypatch):
    # a corpus too short for one window fails before the weights load (and leaves nothing)
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the corpus was tokenised")

    monkeypatch.setattr(cli_common, "load_model", refuse)
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.")
    rc = main(["capture", "--sites", "resid_post.1", "--corpus", str(short), "--out",
               str(tmp_path / "s")])  # fmt: skip
    assert rc == 1 and "needs 128" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_python_dash_m_steerlab_runs_the_command():
    r = subprocess.run([sys.executable, "-m", "steerlab", "--version"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == f"steerlab {steerlab.__version__}"


def _subparsers(parser: argparse.ArgumentParser, path=()):
    """Every (command path, parser) of the command line, the top level included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_every_option_has_help_and_shows_its_default():
    switches = (argparse._StoreTrueAction, argparse._HelpAction, argparse._VersionAction,
                argparse._SubParsersAction)  # fmt: skip
    n = 0
    for path, parser in _subparsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, switches):
                continue
            n += 1
            where = f"steerlab {' '.join(path)} {action.option_strings or action.dest}"
            assert action.help and action.help.strip(), where
            shown = formatter._get_help_string(action)
            assert action.required or not action.option_strings or "default" in shown, where
    assert n > 80  # every command's options were seen


def test_top_level_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in text
    for command in ("demo", "capture", "store", "view", "steer", "vector", "sae"):
        assert f"steerlab {command}" in text, command
    # no internal wording: the reader sees what the tool does, not how it is built
    for word in ("argparse", "thin layer", "Namespace", "dataclass", "cli.py"):
        assert word not in text


@pytest.mark.parametrize(
    "argv",
    [["capture", "--help"], ["store", "info", "--help"], ["demo", "--help"],
     ["view", "--help"], ["view", "pca", "--help"], ["view", "probe", "--help"],
     ["view", "eraser", "--help"], ["view", "sae", "--help"], ["view", "vector", "--help"],
     ["view", "sweep", "--help"]],
)  # fmt: skip
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage: steerlab" in capsys.readouterr().out
