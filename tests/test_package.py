"""The top-level package: its lazy re-exports and what ``import steerlab`` loads."""

from __future__ import annotations

import importlib
import subprocess
import sys

import steerlab


def test_all_lists_exactly_the_lazy_names():
    assert set(steerlab.__all__) == {"__version__", *steerlab._LAZY}
    assert len(steerlab.__all__) == len(set(steerlab.__all__))


def test_each_lazy_name_is_its_module_attribute():
    for name, module in steerlab._LAZY.items():
        assert getattr(steerlab, name) is getattr(importlib.import_module(module), name)


def test_import_is_light_and_silent():
    code = (
        "import sys, steerlab; "
        "print(sorted(m for m in sys.modules if m.startswith(('steerlab.', 'torch', 'transformers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert out.stderr == ""
