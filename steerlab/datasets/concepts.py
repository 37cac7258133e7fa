"""Concept data sets for probing and erasure: texts labelled with a concept, split train/test.

``data/erasure/gender.jsonl`` holds 2,016 templated biographies labelled by the gender of the
person (see ``data/README.md``); any JSONL file with ``text`` and ``label`` works the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from steerlab.datasets.paths import data_dir


def gender_path() -> Path:
    """``data/erasure/gender.jsonl``: the curated gender concept (see ``data/README.md``)."""
    return data_dir("erasure") / "gender.jsonl"


class ConceptData(NamedTuple):
    """Texts labelled with a concept, split into train and held-out rows."""

    texts: list[str]
    """The texts; the concept is read at each text's last token."""
    labels: Tensor
    """Class index per text (int64)."""
    test: Tensor
    """True for held-out rows (bool)."""
    class_names: list[str]
    """Name of each class index."""
    records: list[dict]
    """The JSONL records themselves (names, professions, cue spans, ...)."""


def load_concept(
    path: str | os.PathLike | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    class_field: str = "gender",
) -> ConceptData:
    """Read a concept JSONL file (``text``, ``label``; optional ``split`` and a class name field).

    Args:
        path: the file (default ``data/erasure/gender.jsonl``, :func:`gender_path`).
        n: keep a seeded random ``n`` of the rows (in file order); None keeps all.
        seed: seed of that subsample and of the held-out split when rows carry no ``split``
            (then a random 25% is held out).
        class_field: field naming each row's class, for ``class_names`` (else ``"0"``, ``"1"``).
    """
    f = Path(path) if path is not None else gender_path()
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found (the concept sets live in data/erasure/)")
    rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or any("text" not in r or "label" not in r for r in rows):
        raise ValueError(f"{f}: every line needs 'text' and 'label'")
    g = torch.Generator().manual_seed(seed)
    if any("split" not in r for r in rows):
        held = (torch.rand(len(rows), generator=g) < 0.25).tolist()
        rows = [{**r, "split": "test" if h else "train"} for r, h in zip(rows, held)]
    if n is not None and n < len(rows):
        rows = [rows[i] for i in torch.randperm(len(rows), generator=g)[:n].sort().values.tolist()]
    labels = torch.tensor([int(r["label"]) for r in rows])
    names: dict[int, str] = {}
    for r in rows:
        names.setdefault(int(r["label"]), str(r.get(class_field, r["label"])))
    class_names = [names.get(i, str(i)) for i in range(int(labels.max()) + 1)]
    test = torch.tensor([r["split"] == "test" for r in rows])
    return ConceptData([r["text"] for r in rows], labels, test, class_names, rows)
