"""steerlab's error for files it cannot use: one type, whatever the file and whatever is wrong.

Everything steerlab reads from disk (an artifact's ``cfg.json`` and ``<kind>.safetensors``, an
activation store's ``manifest.json`` and shards) goes through :mod:`steerlab.validation`,
which turns every way a file can be damaged or wrong (truncated, not JSON, a key missing, a
value of the wrong type or out of range, a tensor of the wrong shape, a checksum that differs)
into a :class:`FormatError`. Its message names the file, the field and what was expected, so a
user can tell which file to replace or which value to fix; the ``steerlab`` command prints it
as one line. It is a ``ValueError``, so code that caught ``ValueError`` keeps working.

This module imports nothing from steerlab, so any module (the CLI included) can use it.
"""

from __future__ import annotations

import os

__all__ = ["FormatError", "MissingFileError"]


class FormatError(ValueError):
    """A file steerlab reads is damaged or does not hold what its format requires.

    Args:
        file: the file (or directory) at fault; the message starts with it.
        message: what is wrong and what was expected.
        field: the field (dotted for nested JSON, e.g. ``shards.3.sha256``) or tensor at fault,
            if one is.

    Attributes:
        file: the file, as a string.
        field: the field, or None.
    """

    def __init__(self, file: str | os.PathLike, message: str, *, field: str | None = None):
        self.file = str(file)
        self.field = field
        super().__init__(f"{file}: {message}")


class MissingFileError(FormatError, FileNotFoundError):
    """A file the format requires is missing (also a ``FileNotFoundError``)."""

    def __new__(cls, file: str | os.PathLike, message: str, *, field: str | None = None):
        # OSError.__new__ would read two positional arguments as (errno, strerror); the field
        # is set by FormatError.__init__
        del field
        return FileNotFoundError.__new__(cls, f"{file}: {message}")
