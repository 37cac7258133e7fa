"""The import graph follows the layers of DESIGN.md: data flows up, nothing imports from above.

    foundation    sites, models, tokens, positions, subspace, artifacts, datasets, io, ...
    mechanisms    capture, interventions (neither imports the other)
    methods       probes, erasure, saes, steering (none imports another)
    views  <  report  <  cli

Every ``import`` / ``from ... import`` statement of every module under ``steerlab/`` is read
with :mod:`ast` (type-only imports included: they are dependencies of the code's meaning), and
each edge between top-level packages is checked against that order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import steerlab

ROOT = Path(steerlab.__file__).resolve().parent

MECHANISMS = {"capture", "interventions"}
METHODS = {"probes", "erasure", "saes", "steering"}
RANK = {**dict.fromkeys(MECHANISMS, 1), **dict.fromkeys(METHODS, 2),
        "views": 3, "report": 4, "cli": 5, "__main__": 6}  # fmt: skip
"""Everything else under steerlab/ is foundation (rank 0)."""


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "steerlab" and len(parts) > 1 else None


def edges() -> set[tuple[str, str, str]]:
    """(importing package, imported package, file) for every cross-package import."""
    out = set()
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("").parts
        if rel == ("__init__",):  # the package root only re-exports names, lazily
            continue
        src = rel[0]
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                dst = _top(name)
                if dst is not None and dst != src:
                    out.add((src, dst, str(f.relative_to(ROOT))))
    return out


def test_the_graph_is_read():
    """The reader sees the edges the layering is about (else the checks below are empty)."""
    found = {(a, b) for a, b, _ in edges()}
    assert {("probes", "interventions"), ("saes", "capture"), ("cli", "report")} <= found


def test_nothing_imports_from_a_layer_above():
    bad = sorted((a, b, f) for a, b, f in edges() if RANK.get(b, 0) > RANK.get(a, 0))
    assert bad == [], "imports from a layer above: " + "; ".join(f"{f} -> {b}" for _, b, f in bad)


def test_methods_and_mechanisms_do_not_import_each_other():
    same = [(a, b, f) for a, b, f in edges()
            if (a in METHODS and b in METHODS) or (a in MECHANISMS and b in MECHANISMS)]  # fmt: skip
    assert sorted(same) == [], "; ".join(f"{f} -> {b}" for _, b, f in same)
