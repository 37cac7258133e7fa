"""Atomic writes: a failure at any point leaves the previous file or directory intact.

Failures are injected where a real disk fails: the writer raises half way (disk full), fsync
raises (I/O error), the final rename raises (permission denied). After each, the previous
content must read back unchanged and no temporary sibling may be left behind.
"""

from __future__ import annotations

import errno
import os
import stat

import plotly.graph_objects as go
import pytest
import torch

import steerlab.artifacts as artifacts
import steerlab.io as sio
from steerlab.io import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text
from steerlab.saes import formats
from steerlab.saes.io import saelens as saelens_io
from steerlab.saes.sae import SaeConfig, build_sae
from steerlab.subspace import Subspace
from steerlab.views.report import write_html


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _siblings(path):
    """Everything next to ``path`` except itself: temporaries that should not be there."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_write_and_replace_a_file(tmp_path):
    f = tmp_path / "sub" / "a.txt"
    assert atomic_write_text(f, "one") == f and f.read_text() == "one"
    atomic_write_bytes(f, b"two")
    assert f.read_bytes() == b"two" and _siblings(f) == []


def test_new_files_get_ordinary_permissions(tmp_path):
    ref = tmp_path / "ref"
    ref.write_text("x")  # what open() gives under this process's umask
    atomic_write_text(tmp_path / "a", "x")
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == stat.S_IMODE(ref.stat().st_mode)
    os.mkdir(tmp_path / "refdir")
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("x")
    want = stat.S_IMODE((tmp_path / "refdir").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == want


def test_fsync_failure_keeps_the_old_file(tmp_path, monkeypatch):
    f = tmp_path / "a.json"
    atomic_write_text(f, "old")
    monkeypatch.setattr(sio.os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(f, "new content that never lands")
    assert f.read_text() == "old" and _siblings(f) == []


def test_a_writer_that_dies_half_way_keeps_the_old_file(tmp_path):
    f = tmp_path / "v.gguf"
    atomic_write_bytes(f, b"old")
    with pytest.raises(OSError, match="No space"), atomic_file(f) as tmp:
        tmp.write_bytes(b"half a fi")
        _disk_full()
    assert f.read_bytes() == b"old" and _siblings(f) == []


def test_permission_denied_on_rename_keeps_the_old_file(tmp_path, monkeypatch):
    f = tmp_path / "r.html"
    atomic_write_text(f, "old")

    def denied(*_a):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(sio.os, "replace", denied)
    with pytest.raises(PermissionError):
        atomic_write_text(f, "new")
    assert f.read_text() == "old" and _siblings(f) == []


def test_a_directory_is_replaced_whole(tmp_path):
    d = tmp_path / "art"
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(p.name for p in d.iterdir()) == ["a"] and (d / "a").read_text() == "2"
    assert _siblings(d) == []
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_dir(d, overwrite=False):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"), atomic_dir(tmp_path / "file"):
        pass


def test_an_artifact_write_that_fills_the_disk_keeps_the_previous_artifact(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    old = Subspace.from_vectors(torch.randn(2, 8, generator=g))
    old.save(tmp_path / "s")

    def half_then_full(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 40)  # part of a header, as a full disk would leave it
        _disk_full()

    monkeypatch.setattr(artifacts, "save_file", half_then_full)
    with pytest.raises(OSError, match="No space"):
        Subspace.from_vectors(torch.randn(3, 8, generator=g)).save(tmp_path / "s")
    monkeypatch.undo()
    back = Subspace.load(tmp_path / "s")
    assert torch.equal(back.basis, old.basis) and _siblings(tmp_path / "s") == []


def test_a_failed_swap_puts_the_previous_directory_back(tmp_path, monkeypatch):
    d = tmp_path / "art"
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("old")
    real_rename = os.rename
    calls = []

    def second_rename_denied(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old aside worked; new into place is refused
            raise PermissionError(errno.EACCES, "Permission denied")
        real_rename(src, dst)

    monkeypatch.setattr(sio.os, "rename", second_rename_denied)
    with pytest.raises(PermissionError), atomic_dir(d) as tmp:
        (tmp / "a").write_text("new")
    monkeypatch.undo()
    assert (d / "a").read_text() == "old" and _siblings(d) == []


def test_a_crash_between_the_renames_leaves_the_previous_version_findable(tmp_path, monkeypatch):
    d = tmp_path / "checkpoint"
    with atomic_dir(d) as tmp:
        (tmp / "state.json").write_text("{}")
    real_rename = os.rename
    calls = []

    def crash_after_first(src, dst):
        calls.append(1)
        real_rename(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process dies after moving the old one aside

    monkeypatch.setattr(sio.os, "rename", crash_after_first)
    monkeypatch.setattr(sio.shutil, "rmtree", lambda *a, **k: None)  # a dead process cleans nothing
    with pytest.raises(KeyboardInterrupt), atomic_dir(d) as tmp:
        (tmp / "state.json").write_text('{"step": 2}')
    monkeypatch.undo()
    assert not d.exists()
    prev = sio.previous_version(d)
    assert prev is not None and (prev / "state.json").read_text() == "{}"
    assert formats.find_checkpoint(tmp_path) == prev
    # the next successful write clears the stale copy
    with atomic_dir(d) as tmp:
        (tmp / "state.json").write_text("{}")
    assert sio.previous_version(d) is None


def test_callers_keep_the_previous_file_on_failure(tmp_path, monkeypatch):
    # views.report: the HTML file
    page = tmp_path / "r.html"
    write_html(go.Figure(), page, title="old")
    before = page.read_text()
    monkeypatch.setattr(sio.os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space"):
        write_html(go.Figure(), page, title="new")
    monkeypatch.undo()
    assert page.read_text() == before and _siblings(page) == []
    # saes.io.saelens (re-exported by saes.formats): the SAELens directory
    sae = build_sae(SaeConfig(d_in=8, d_sae=16, k=2))
    formats.save_saelens(sae, tmp_path / "lens")
    w = (tmp_path / "lens" / formats.SAELENS_WEIGHTS).read_bytes()
    monkeypatch.setattr(saelens_io, "save_file", _disk_full)  # the writer lives in saes.io
    with pytest.raises(OSError, match="No space"):
        formats.save_saelens(build_sae(SaeConfig(d_in=8, d_sae=16, k=2)), tmp_path / "lens")
    monkeypatch.undo()
    assert (tmp_path / "lens" / formats.SAELENS_WEIGHTS).read_bytes() == w
    assert _siblings(tmp_path / "lens") == ["r.html"]
