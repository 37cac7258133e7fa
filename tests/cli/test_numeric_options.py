"""Every numeric option of the commands that write (capture, sae train, vector fit, steer, report)
refuses 0, -1, NaN and a non-number at the boundary: a usage error (exit status 2) whose last
line names the flag, before any folder is created or a model is loaded.

The options are read from the parser itself (every ``int``/``float`` option, single or list), so
an option added later is covered without editing this file. Where 0 or -1 is a meaningful value
of an option (a seed, a layer, α, "0 disables"), :data:`MEANINGFUL` says why; the test then
checks the other side: the value passes validation (the command goes on and fails later, at the
model this test refuses to load, or at the tiny store).
"""

from __future__ import annotations

import argparse

import pytest

import steerlab.cli.common as common
from steerlab.cli import build_parser, main

LINES = {
    "capture": "capture --sites resid_post.1 --out {out}",
    "sae train": "sae train --store {store} --site resid_post.0 --width 64 --out {out}",
    "vector fit": "vector fit --pairs {out}.jsonl --sites resid_post.3 --out {out}",
    "steer": "steer --vector {out} --alpha 1 --prompt hi",
    "report": "report --out {out}",
}
"""A valid command line of each command (the option under test is appended: the last use of a
flag wins); ``{out}`` is where the command would write, ``{store}`` a small store."""

BAD = ("0", "-1", "nan", "x")

MEANINGFUL: dict[tuple[str, str], dict[str, str]] = {
    ("sae train", "--seed"): {"0": "a seed"},
    ("sae train", "--l1-coefficient"): {"0": "no L1 penalty (TopK SAEs ignore it)"},
    ("sae train", "--warmup-steps"): {"0": "no warm-up"},
    ("sae train", "--warmup-frac"): {"0": "no warm-up"},
    ("sae train", "--decay-frac"): {"0": "a constant rate after the warm-up"},
    ("sae train", "--auxk-alpha"): {"0": "AuxK loss off"},
    ("sae train", "--k-anneal-steps"): {"0": "no k annealing (the default)"},
    ("sae train", "--checkpoint-every"): {"0": "only the final checkpoint"},
    ("steer", "--alpha"): {"0": "unsteered (a baseline)", "-1": "steers the other way"},
    ("steer", "--seed"): {"0": "a seed"},
    ("report", "--seed"): {"0": "a seed (the default)"},
    ("report", "--atlas-layer"): {"0": "the first layer"},
    ("report", "--pca-scatter-layers"): {"0": "the first layer"},
    ("report", "--steer-shown"): {"0": "α = 0, the unsteered column (in the default)"},
}
"""(command, flag) -> the values of :data:`BAD` that mean something there, and what."""


def _subparser(parser: argparse.ArgumentParser, path: str) -> argparse.ArgumentParser:
    for name in path.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def numeric_options() -> dict[str, list[str]]:
    """command -> the flags of its options that take numbers (one, or a list)."""
    parser = build_parser()
    out = {}
    for command in LINES:
        flags = []
        for a in _subparser(parser, command)._actions:
            convert = getattr(a, "type", None) or getattr(a, "item", None)  # item: list options
            if a.option_strings and getattr(convert, "__name__", None) in ("int", "float"):
                flags.append(a.option_strings[0])
        out[command] = flags
    return out


OPTIONS = numeric_options()


def _cases():
    for command, flags in OPTIONS.items():
        for flag in flags:
            for value in BAD:
                yield pytest.param(command, flag, value, id=f"{command} {flag}={value}")


def test_the_options_are_found():
    # every command has numeric options, and each MEANINGFUL entry names one of them
    assert all(OPTIONS.values()), OPTIONS
    assert {"--tokens", "--batch-size", "--seq-len", "--shard-tokens"} <= set(OPTIONS["capture"])
    assert {"--width", "--k", "--lr", "--batch-size"} <= set(OPTIONS["sae train"])
    assert "--batch-size" in OPTIONS["vector fit"] and "--alpha" in OPTIONS["steer"]
    assert {"--tokens", "--sae-lr", "--steer-alphas"} <= set(OPTIONS["report"])
    for (command, flag), values in MEANINGFUL.items():
        assert flag in OPTIONS[command] and set(values) <= set(BAD), (command, flag)


@pytest.fixture
def refuse_models(monkeypatch):
    """Loading a model or tokenizer raises (the commands check their options before)."""

    class ModelLoaded(Exception):
        pass

    def refuse(*args, **kwargs):
        raise ModelLoaded("the command got past its options and loaded a model")

    monkeypatch.setattr(common, "load_model", refuse)
    monkeypatch.setattr(common, "load_tokenizer", refuse)


@pytest.mark.parametrize(("command", "flag", "value"), list(_cases()))
def test_numeric_option_refuses_zero_negative_nan_and_text(
    command, flag, value, tmp_path, store, capsys, refuse_models
):
    out = tmp_path / "out"
    line = LINES[command].format(out=out, store=store.path)
    argv = [*line.split(), f"{flag}={value}"]
    meaningful = MEANINGFUL.get((command, flag), {})
    if value in meaningful:
        # accepted: the command goes past validation and fails later (the refused model, the
        # store's 128 rows against the default batch of 4096, the missing vector)
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err, err
        return
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the usage above it lists every flag
    assert e.value.code == 2, err
    assert last.startswith(f"steerlab {command}: error: ") and flag in last, last
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "a file or folder was created"
