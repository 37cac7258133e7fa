"""Atomic writes: a reader sees the old file (or directory) or the new one, never a mix.

Every file steerlab writes to a place someone may read from (artifacts, reports, caches, store
shards and manifests, GGUF exports, SAE checkpoints) goes through this module:

- :func:`atomic_write_bytes` / :func:`atomic_write_text`: one file;
- :func:`atomic_file`: one file written by a library that wants a path (safetensors, gguf);
- :func:`atomic_dir`: a whole directory (an artifact: ``cfg.json`` + ``<kind>.safetensors``).

The recipe is the usual one: write into a fresh temporary *sibling* (same directory, so the
rename stays on one file system), ``fsync`` the data, ``os.replace`` / rename it into place,
then ``fsync`` the parent directory so the rename itself survives a power cut. If anything
fails before the rename (disk full, permission denied, an exception in the caller's block),
the temporary sibling is removed and the previous file or directory is left exactly as it was.

Temporary names start with ``.`` and end with ``.tmp`` (``.<name>.<random>.tmp``), so tools
that clean up after an interrupted run (the activation store does on resume) can recognise
them. New files and directories get the permissions of an ordinary ``open``/``mkdir`` (the
umask applies), not ``mkstemp``'s private ``0600``.

A directory cannot be swapped in one system call on every platform, so :func:`atomic_dir`
renames the old directory aside (``.<name>.old-<random>``), renames the new one in, and then
deletes the old one. A crash between the two renames leaves the previous version under the
``.old`` name (:func:`previous_version` finds it), never a half-written one under the real name.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "previous_version",
]

TMP_SUFFIX = ".tmp"
"""Every temporary sibling ends with this."""
_OLD_INFIX = ".old"


def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a directory, making renames inside it durable (a no-op where directories
    cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the data is synced anyway
        pass
    finally:
        os.close(fd)


def _sibling(path: Path) -> Path:
    """A fresh hidden sibling name of ``path``: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write ``path``'s new content to; on success it is
    synced and renamed over ``path``, on any exception it is removed and ``path`` is untouched.

        >>> with atomic_file("vec.gguf") as tmp:
        ...     writer = gguf.GGUFWriter(tmp, "controlvector"); ...

    The yielded path does not exist yet (the writer creates it); the parent directory is
    created if needed.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; cannot write a file there")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, ``os.replace``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        # O_EXCL: the random name is ours alone; 0o666 & ~umask, as open() would give
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def _remove_stale_old(path: Path) -> None:
    """Delete ``.<name>.old*`` siblings left by a crash between the two renames of an
    earlier swap (their content is older than what is now in place)."""
    for old in path.parent.glob(f".{path.name}{_OLD_INFIX}*"):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename directory ``tmp`` to ``path``, replacing an existing directory there."""
    if not path.exists():
        # fails (ENOTEMPTY/EEXIST) if another process put a directory there meanwhile
        os.rename(tmp, path)
    else:
        old = path.with_name(f".{path.name}{_OLD_INFIX}-{secrets.token_hex(4)}")
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if not path.exists():  # put the previous version back
                os.rename(old, path)
            else:  # another process replaced it meanwhile: theirs is newer than ours
                shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _remove_stale_old(path)
    fsync_dir(path.parent)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces directory ``path``.

        >>> with atomic_dir("runs/leace") as tmp:
        ...     (tmp / "cfg.json").write_text(...)
        ...     save_file(tensors, tmp / "leace.safetensors")

    Every file inside is fsynced before the swap. On any exception the temporary directory
    is removed and ``path`` keeps its previous content.

    Args:
        path: the directory to write (its parent is created if needed).
        overwrite: if False and ``path`` is a non-empty directory, raise ``FileExistsError``
            before writing anything.

    Raises:
        FileExistsError: ``path`` is a file, or non-empty with ``overwrite=False``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)
    os.mkdir(tmp, 0o777)  # umask applies, as for an ordinary mkdir (mkdtemp would give 0700)
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def previous_version(path: str | os.PathLike) -> Path | None:
    """The newest ``.<name>.old-*`` sibling of ``path``: what :func:`atomic_dir` had moved
    aside when a crash interrupted its swap (None if there is none)."""
    path = Path(path)
    olds = [p for p in path.parent.glob(f".{path.name}{_OLD_INFIX}*") if p.is_dir()]
    if not olds:
        return None
    return max(olds, key=lambda p: p.stat().st_mtime)
