"""steerlab.config: config dataclasses become command-line options and back; ``--help`` shows
each field's docstring and default; bad values are refused naming the field (or the flag)
before anything runs; the recipes' defaults are the library's."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlab.config import (
    ConfigError,
    ConfigOptions,
    add_config,
    check_fraction,
    check_positive,
    check_types,
    field_docs,
    parse_configs,
)
from steerlab.erasure.inlp import InlpConfig
from steerlab.erasure.rlace import RlaceConfig
from steerlab.probes.ast.probe import AstProbeConfig
from steerlab.probes.linear import ProbeConfig
from steerlab.probes.pls import PLSConfig
from steerlab.saes.sae import SaeConfig
from steerlab.saes.train import TrainConfig as SaeTrainConfig
from steerlab.steering.evals import SweepConfig
from steerlab.steering.train import TrainConfig as SteerTrainConfig
from steerlab.steering.vectors import VectorConfig

ROOT = Path(__file__).resolve().parent.parent

REQUIRED = {SaeConfig: {"d_in": 64, "d_sae": 256}, SweepConfig: {"alphas": (-0.5, 0.5)}}
"""Values of the fields that have no library default."""

LIBRARY = [ProbeConfig, PLSConfig, AstProbeConfig, InlpConfig, RlaceConfig, SaeConfig,
           SaeTrainConfig, SteerTrainConfig, VectorConfig, SweepConfig]  # fmt: skip

VARIED = {
    ProbeConfig: {"kind": "ridge", "C_grid": (0.3,), "alpha_grid": (0.5, 2.0), "n_folds": 3, "test_fraction": 0.3,
                  "seed": 7, "max_iter": 50, "tol": 1e-4},
    PLSConfig: {"n_components": 3, "max_components": 4, "n_folds": 3, "test_fraction": 0.25,
                "seed": 2, "cv_tol": 0.0},
    AstProbeConfig: {"rank": 16, "orth_lambda": 0.0, "lr": 0.02, "batch_size": 4,
                     "max_epochs": 3, "patience": 2, "lr_factor": 0.5, "lr_patience": 1,
                     "init_range": 0.1, "normalize": "center", "seed": 3},
    InlpConfig: {"n_iter": 4, "classifier": "svm", "C": 0.3, "max_iter": 10, "epsilon": 0.0,
                 "dev_fraction": 0.5, "affine": False, "seed": None},
    RlaceConfig: {"rank": 2, "max_iter": 100, "batch_size": 8, "lr_P": 0.005,
                  "lr_predictor": 0.004, "weight_decay": 0.0, "momentum": 0.9, "epsilon": 0.01,
                  "eval_every": 10, "dev_fraction": 0.3, "init": "leace", "init_scale": 0.2, "affine": False, "solver": "dense",
                  "dtype": "float32", "seed": 5},
    SaeConfig: {"d_in": 32, "d_sae": 64, "architecture": "relu_l1", "k": 4,
                "l1_coefficient": 0.1, "site": "resid_post.3", "model_id": "m",
                "init": "active_subspace", "init_var": 0.9, "init_dim": 8, "dtype": "float64",
                "name": "my-sae"},
    SaeTrainConfig: {"batch_size": 64, "max_tokens": 1024, "lr": 1e-3, "base_lr": 1e-4,
                     "warmup_steps": 0, "warmup_frac": 0.1, "decay_frac": 0.0, "sinks": "keep",
                     "betas": (0.8, 0.99), "eps": 1e-8, "auxk_alpha": 0.0,
                     "dead_tokens": 100, "k_anneal_steps": 5, "k_anneal_start": 16,
                     "init_tokens": 128, "nan_policy": "error", "seed": 1,
                     "shards_in_memory": 2, "checkpoint_dir": "ck", "checkpoint_every": 0,
                     "log_every": 3, "device": "cuda:1", "distribute": "modules",
                     "autocast": "off"},
    SteerTrainConfig: {"epochs": 2, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.1,
                       "max_target_tokens": 8, "add_eos": False, "chat": False,
                       "positions": "all", "grad_clip": None, "seed": 9},
    VectorConfig: {"method": "pca_diff", "positions": "last", "chat": True, "center": False,
                   "batch_size": 4},
    SweepConfig: {"alphas": (-1.0, 0.25, 2.0), "max_new_tokens": 5, "batch_size": 2,
                  "chat": False, "system": "Be brief.", "repetition_n": 3, "baseline": False,
                  "fluency_prefix": "Go on.", "relevance_floor": 0.2},
}  # fmt: skip
"""For each library config, a valid instance whose every field differs from the default."""


def make(cls, **kw):
    return cls(**{**REQUIRED.get(cls, {}), **kw})


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _squash(text: str) -> str:
    """No whitespace: argparse re-wraps help text (and may break lines at hyphens)."""
    return "".join(text.split())


# --------------------------------------------------------------------------- a toy config


@dataclass
class Toy:
    """A config with one field of every supported kind."""

    width: int
    """Latents of the toy."""
    rate: float = 0.5
    """A rate in (0, 1)."""
    name: str | None = None
    """An optional name."""
    mode: Literal["fast", "exact_fit"] = "fast"
    """How to run."""
    flag: bool = False
    """Switch something on."""
    sizes: tuple[int, ...] = (1, 2)
    """Several sizes."""
    scales: tuple[float, ...] = (0.5,)
    """Several scales."""

    def __post_init__(self) -> None:
        check_types(self)
        check_positive(self, "width")
        check_fraction(self, "rate")


def test_field_docs_are_read_from_the_source():
    assert field_docs(Toy) == {
        "width": "Latents of the toy.",
        "rate": "A rate in (0, 1).",
        "name": "An optional name.",
        "mode": "How to run.",
        "flag": "Switch something on.",
        "sizes": "Several sizes.",
        "scales": "Several scales.",
    }
    # reStructuredText roles and literals become plain text for --help
    assert (
        field_docs(SaeConfig)["init"]
        == "Initialisation used by the trainer (see steerlab.saes.init)."
    )


@pytest.mark.parametrize("cls", LIBRARY, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_library_config_documents_every_field(cls):
    assert set(field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}
    assert all(doc.strip() for doc in field_docs(cls).values())


def test_parse_every_kind_of_field():
    (cfg,) = parse_configs(Toy, argv=["--width", "3", "--rate", "0.25", "--name", "x",
                                      "--mode", "exact-fit", "--flag", "--sizes", "3,4", "5",
                                      "--scales=-1e-3,2"])  # fmt: skip
    assert cfg == Toy(3, 0.25, "x", "exact_fit", True, (3, 4, 5), (-1e-3, 2.0))
    (cfg,) = parse_configs(Toy, argv=["--width", "3", "--name", "none", "--no-flag"])
    assert cfg == Toy(3)
    # a repeated flag of several values adds to it
    (cfg,) = parse_configs(Toy, argv=["--width", "1", "--sizes", "7", "--sizes", "8"])
    assert cfg.sizes == (7, 8)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 10**12),
    rate=st.floats(1e-9, 1 - 1e-9),
    name=st.none() | st.text("abcxyz_.", min_size=1, max_size=8).filter(lambda s: s != "none"),
    mode=st.sampled_from(["fast", "exact_fit"]),
    flag=st.booleans(),
    sizes=st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=4).map(tuple),
    scales=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=4).map(tuple),
)
def test_to_argv_round_trips(width, rate, name, mode, flag, sizes, scales):
    # str(float) is the shortest repr that reads back to the same float, so equality is exact
    cfg = Toy(width, rate, name, mode, flag, sizes, scales)
    (back,) = parse_configs(Toy, argv=ConfigOptions(Toy).to_argv(cfg))
    assert back == cfg


@pytest.mark.parametrize("cls", LIBRARY, ids=lambda c: c.__name__)
def test_library_configs_round_trip(cls):
    default = make(cls)
    varied = cls(**VARIED[cls])
    assert all(getattr(varied, f.name) != getattr(default, f.name)
               for f in dataclasses.fields(cls)), "VARIED must change every field"  # fmt: skip
    for cfg in (default, varied):
        parser = argparse.ArgumentParser()
        spec = add_config(parser, cls)
        assert spec.build(parser.parse_args(spec.to_argv(cfg))) == cfg
    # no arguments: the library's defaults (the required fields aside)
    parser = argparse.ArgumentParser()
    spec = add_config(parser, cls, skip=tuple(REQUIRED.get(cls, ())))
    assert spec.build(parser.parse_args([]), **REQUIRED.get(cls, {})) == default


@pytest.mark.parametrize("cls", LIBRARY, ids=lambda c: c.__name__)
def test_help_shows_each_docstring_and_default(cls):
    parser = argparse.ArgumentParser()
    add_config(parser, cls)
    text = _squash(parser.format_help())
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert _squash(docs[f.name]) in text, f.name
        if f.default is not dataclasses.MISSING and not re.search(r"\bdefault\b", docs[f.name],
                                                                  re.IGNORECASE):  # fmt: skip
            assert _squash(f"(default: {_shown(f.default)})") in text, f.name


# --------------------------------------------------------------------------- bad values


def _fields_of(kind):
    for cls in LIBRARY:
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, tp in hints.items():
            if re.fullmatch(kind, str(tp).replace(" ", "")):
                yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")


@pytest.mark.parametrize("cls,field", list(_fields_of(r"float(\|None)?")))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_everywhere(cls, field, value):
    with pytest.raises(ConfigError, match=re.escape(f"{cls.__name__}.{field}:")) as e:
        make(cls, **{field: value})
    assert e.value.field == field


@pytest.mark.parametrize("cls,field", list(_fields_of(r"int(\|None)?")))
@pytest.mark.parametrize("value", ["3", 2.0, True])
def test_integers_of_the_wrong_type_are_refused(cls, field, value):
    with pytest.raises(ConfigError, match=re.escape(f"{cls.__name__}.{field}:")):
        make(cls, **{field: value})


BAD = [
    (ProbeConfig, {"n_folds": -1}), (ProbeConfig, {"max_iter": 0}), (ProbeConfig, {"tol": 0.0}),
    (ProbeConfig, {"test_fraction": 0.0}), (ProbeConfig, {"test_fraction": 1.0}),
    (ProbeConfig, {"C_grid": ()}), (ProbeConfig, {"C_grid": (1.0, 0.0)}),
    (ProbeConfig, {"seed": -1}), (ProbeConfig, {"kind": "svm"}),
    (PLSConfig, {"n_components": 0}), (PLSConfig, {"max_components": -2}),
    (PLSConfig, {"n_folds": 1}), (PLSConfig, {"test_fraction": 1.5}), (PLSConfig, {"cv_tol": -0.1}),
    (AstProbeConfig, {"rank": 0}), (AstProbeConfig, {"lr": 0.0}), (AstProbeConfig, {"lr": -1e-3}),
    (AstProbeConfig, {"batch_size": 0}), (AstProbeConfig, {"max_epochs": 0}),
    (AstProbeConfig, {"patience": 0}), (AstProbeConfig, {"lr_factor": 0.0}),
    (AstProbeConfig, {"lr_factor": 1.5}), (AstProbeConfig, {"orth_lambda": -1.0}),
    (AstProbeConfig, {"init_range": 0.0}), (AstProbeConfig, {"normalize": "whiten"}),
    (InlpConfig, {"n_iter": 0}), (InlpConfig, {"C": 0.0}), (InlpConfig, {"max_iter": -1}),
    (InlpConfig, {"epsilon": -0.1}), (InlpConfig, {"dev_fraction": 0.0}),
    (RlaceConfig, {"rank": 0}), (RlaceConfig, {"max_iter": 0}), (RlaceConfig, {"batch_size": -1}),
    (RlaceConfig, {"eval_every": 0}), (RlaceConfig, {"lr_P": 0.0}),
    (RlaceConfig, {"lr_predictor": -1.0}), (RlaceConfig, {"momentum": 1.0}),
    (RlaceConfig, {"weight_decay": -1.0}), (RlaceConfig, {"dtype": "float16"}),
    (SaeConfig, {"d_in": 0}), (SaeConfig, {"d_sae": -4}), (SaeConfig, {"k": 0}),
    (SaeConfig, {"init_var": 0.0}), (SaeConfig, {"l1_coefficient": -1.0}),
    (SaeConfig, {"init_dim": 0}), (SaeConfig, {"dtype": "int8"}),
    (SaeTrainConfig, {"batch_size": 0}), (SaeTrainConfig, {"max_tokens": 0}),
    (SaeTrainConfig, {"lr": 0.0}), (SaeTrainConfig, {"lr": -1e-3}), (SaeTrainConfig, {"base_lr": 0.0}),
    (SaeTrainConfig, {"dead_tokens": 0}), (SaeTrainConfig, {"warmup_steps": -1}),
    (SaeTrainConfig, {"auxk_alpha": -0.5}), (SaeTrainConfig, {"betas": (0.9, 1.0)}),
    (SaeTrainConfig, {"betas": (0.9,)}), (SaeTrainConfig, {"init_tokens": 0}),
    (SaeTrainConfig, {"log_every": 0}), (SaeTrainConfig, {"nan_policy": "ignore"}),
    (SteerTrainConfig, {"epochs": 0}), (SteerTrainConfig, {"batch_size": 0}),
    (SteerTrainConfig, {"lr": 0.0}), (SteerTrainConfig, {"max_target_tokens": 0}),
    (SteerTrainConfig, {"grad_clip": 0.0}), (SteerTrainConfig, {"weight_decay": -1.0}),
    (VectorConfig, {"batch_size": 0}), (VectorConfig, {"method": "svd"}),
    (SweepConfig, {"alphas": ()}), (SweepConfig, {"max_new_tokens": 0}),
    (SweepConfig, {"batch_size": -1}), (SweepConfig, {"repetition_n": 0}),
]  # fmt: skip


@pytest.mark.parametrize("cls,kw", BAD, ids=lambda x: getattr(x, "__name__", None) or str(x))
def test_out_of_range_values_are_refused_naming_the_field(cls, kw):
    (field,) = kw
    with pytest.raises(ValueError, match=re.escape(field)):
        make(cls, **kw)


def test_a_bad_value_on_the_command_line_is_a_usage_error_naming_the_flag(capsys):
    for argv, flag in ((["--width", "0"], "--width"), (["--width", "nan"], "--width"),
                       (["--width", "2", "--rate", "nan"], "--rate"),
                       (["--width", "2", "--rate", "1"], "--rate"),
                       (["--width", "2", "--sizes", "1,x"], "--sizes"),
                       (["--width", "2", "--mode", "slow"], "--mode"), ([], "--width")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            parse_configs(Toy, argv=argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and "Traceback" not in err, (argv, err)


def test_build_without_a_parser_names_the_flag():
    parser = argparse.ArgumentParser()
    spec = add_config(parser, RlaceConfig, prefix="rlace")
    with pytest.raises(ConfigError, match="--rlace-lr-P") as e:
        spec.build(parser.parse_args(["--rlace-lr-P", "-1"]))
    assert e.value.field == "lr_P"


def test_options_are_checked_when_declared():
    with pytest.raises(ValueError, match="library default"):
        ConfigOptions(ProbeConfig, defaults={"n_folds": 3})  # a command may not move it
    ConfigOptions(SaeConfig, defaults={"d_sae": 4608})  # no library default: allowed
    with pytest.raises(ValueError, match="no fields"):
        ConfigOptions(ProbeConfig, skip=("nonexistent",))
    with pytest.raises(ValueError, match="--max-iter"):  # InlpConfig and RlaceConfig share it
        parse_configs(InlpConfig, RlaceConfig, argv=[])
    inlp, rlace = parse_configs(ConfigOptions(InlpConfig, prefix="inlp"),
                                ConfigOptions(RlaceConfig, prefix="rlace"),
                                argv=["--inlp-max-iter", "3", "--rlace-max-iter", "4"])  # fmt: skip
    assert (inlp.max_iter, rlace.max_iter) == (3, 4)

    @dataclass
    class Odd:
        table: dict
        """Not a command-line type."""

    with pytest.raises(TypeError, match="Odd.table"):
        add_config(argparse.ArgumentParser(), Odd)
    add_config(argparse.ArgumentParser(), Odd, skip=("table",))


# --------------------------------------------------------------------------- recipes


def _recipe(path: str):
    """Import a recipe script (recipes are not a package)."""
    name = "recipe_" + Path(path).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "path,expected",
    [
        ("probes/ast_probe.py", [AstProbeConfig()]),
        ("probes/erase_concept.py", [RlaceConfig(), InlpConfig()]),
        ("probes/linear_sweep.py", [ProbeConfig()]),
        ("probes/numeric_pls.py", [PLSConfig()]),
        ("steering/msrs_experiment.py", [SteerTrainConfig()]),
        ("steering/sentiment_sweep.py",
         [VectorConfig(chat=True), SweepConfig(alphas=(-0.6, -0.4, -0.2, 0.2, 0.4, 0.6))]),
    ],
)  # fmt: skip
def test_recipe_defaults_are_the_library_configs(path, expected):
    recipe, *configs = _recipe(path).parse_args([])
    assert configs == expected
    # and a library option set on the command line reaches the config
    if path == "probes/ast_probe.py":
        _, cfg = _recipe(path).parse_args(["--lr", "0.01", "--epochs", "16", "--patience", "3"])
        assert (cfg.lr, cfg.max_epochs, cfg.patience) == (0.01, 16, 3)


@pytest.mark.parametrize("path", ["saes/train_topk.py", "saes/attn_out_subspace_init.py"])
def test_sae_recipe_defaults_are_the_library_configs(path, tmp_path):
    recipe, tcfg, sae = _recipe(path).parse_args(["--out", str(tmp_path)])
    # the checkpoint folder is the recipe's; every other field is the library's default
    assert dataclasses.replace(tcfg, checkpoint_dir=None) == SaeTrainConfig()
    # d_in, site and model come from the store; 4608 latents is the recipe's own choice,
    # SaeConfig has no default width
    built = sae.build(d_in=576, site="resid_post.6", model_id="m")
    assert built == SaeConfig(d_in=576, d_sae=4608, site="resid_post.6", model_id="m")


def _commands(text: str, script: str) -> list[list[str]]:
    """The command lines running ``script`` in ``text`` (continuation lines joined)."""
    lines = text.replace("\\\n", " ").splitlines()
    return [shlex.split(ln.split(script, 1)[1]) for ln in lines
            if ln.strip().startswith(f"python {script}")]  # fmt: skip


# The SAE engineer's runs (issue #15, docs/sae_results.md and the recipes' docstrings), as that
# version of each recipe built them from its own flags and defaults: every command written down
# must still give these configs. Keys: the command's --out (or its --only-eval-store run).
SAE_RUNS = {
    "saes/train_topk.py": {
        "only-eval-store": (  # captures the held-out store; trains nothing
            {"store": "runs/sae_store2m", "eval_store": "runs/sae_eval", "only_eval_store": True},
            {},
            {},
        ),
        "runs/sae_resid6_2m": (
            {"store": "runs/sae_store2m", "eval_store": "runs/sae_eval", "site": "resid_post.6",
             "out": "runs/sae_resid6_2m"},
            {"max_tokens": 2_000_000, "dead_tokens": 1_000_000, "checkpoint_every": 50},
            {"init": "active_subspace"},
        ),
    },
    "saes/attn_out_subspace_init.py": {
        "runs/attn_out_init_2m": (
            {"store": "runs/sae_store2m", "eval_store": "runs/sae_eval", "site": "attn_out.6",
             "skip_ranks": True, "seeds": (0, 1, 2), "threads": 1, "out": "runs/attn_out_init_2m"},
            {"max_tokens": 2_000_000, "dead_tokens": 1_000_000, "lr": 3e-3, "auxk_alpha": 0.0,
             "log_every": 5, "checkpoint_every": 50},
            {},
        ),
        "runs/attn_out_init": (
            {"store": "runs/sae_store2m", "eval_store": "runs/sae_eval", "site": "attn_out.6",
             "seeds": (0, 1, 2), "out": "runs/attn_out_init"},
            {"max_tokens": 10_000_000, "dead_tokens": 10_000_000, "auxk_alpha": 0.0,
             "log_every": 5, "checkpoint_every": 50},
            {"d_sae": 18432},
        ),
    },
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(SAE_RUNS))
def test_sae_recipe_commands_keep_their_meaning(path):
    module = _recipe(path)
    commands = _commands((ROOT / "docs/sae_results.md").read_text(), path)
    commands += _commands(module.__doc__, path)
    runs = SAE_RUNS[path]
    seen = set()
    for argv in commands:
        recipe, tcfg, sae = module.parse_args(argv)
        key = "only-eval-store" if "--only-eval-store" in argv else recipe.out
        assert key in runs, f"{path} {' '.join(argv)}: a run this test does not know"
        fields, train, sae_fields = runs[key]
        seen.add(key)
        assert recipe == module.Recipe(**fields), argv
        # floats here are parsed from the same decimal text, so they compare exactly
        assert dataclasses.replace(tcfg, checkpoint_dir=None) == SaeTrainConfig(**train), argv
        site = recipe.site
        built = sae.build(d_in=576, site=site, model_id="m")
        assert built == SaeConfig(**{"d_in": 576, "d_sae": 4608, "k": 32, "site": site,
                                     "model_id": "m", **sae_fields}), argv  # fmt: skip
    assert seen == set(runs), f"{path}: runs written down nowhere: {set(runs) - seen}"


def test_sae_recipes_keep_every_flag_of_issue_15(capsys):
    flags = {
        "saes/train_topk.py": "--store --site --width --k --init --tokens --batch-size "
        "--dead-tokens --eval-store --eval-capture-tokens --loss-windows --eval-tokens "
        "--only-eval-store --dashboard-latents --threads --out",
        "saes/attn_out_subspace_init.py": "--store --site --layers --rank-tokens --corpus "
        "--eval-store --width --k --tokens --batch-size --lr --auxk-alpha --dead-window "
        "--eval-tokens --seeds --skip-ranks --skip-inits --threads --out",
    }
    for path, names in flags.items():
        with pytest.raises(SystemExit):
            _recipe(path).parse_args(["--help"])
        shown = set(re.findall(r"--[a-z0-9-]+", capsys.readouterr().out))
        assert set(names.split()) <= shown, (path, set(names.split()) - shown)
    # the comma-separated lists of that version still parse
    args, _, _ = _recipe("saes/attn_out_subspace_init.py").parse_args(
        ["--seeds", "1,2", "--layers", "2,6,10"]
    )
    assert (args.seeds, args.layers) == ((1, 2), (2, 6, 10))


@pytest.mark.parametrize(
    "path,argv,flag",
    [
        ("saes/attn_out_subspace_init.py", ["--dead-window", "0"], "--dead-window"),
        ("saes/attn_out_subspace_init.py", ["--seeds", "0,0"], "--seeds"),
        ("saes/attn_out_subspace_init.py", ["--auxk-alpha", "-1"], "--auxk-alpha"),
        ("saes/train_topk.py", ["--tokens", "100"], "--tokens"),
        ("saes/train_topk.py", ["--eval-capture-tokens", "0"], "--eval-capture-tokens"),
    ],
)
def test_sae_recipe_refuses_a_bad_value_naming_the_flag(path, argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        _recipe(path).parse_args(argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_recipe_refuses_a_bad_value_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        _recipe("probes/ast_probe.py").parse_args(["--lr", "nan"])
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err
