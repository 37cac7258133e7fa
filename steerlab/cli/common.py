"""What every command group shares: help formatting, errors, progress bars, and loading models,
tokenizers and corpora so that a missing one fails fast, in one line, without the hub."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from steerlab.datasets.corpora import NAMED_CORPORA, load_texts
from steerlab.models import EMBEDDED, ModelHandle, load_model, load_tokenizer, resolve

# --------------------------------------------------------------------------- errors


class CliError(Exception):
    """A problem the user can fix; ``steerlab`` prints its message as one line."""


EXIT_ERROR = 1
"""Exit status of a command that failed (2 is a usage error, as argparse has it)."""


# --------------------------------------------------------------------------- help


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples, and shows every option's default
    (unless its help already says it, or the option is required or a plain switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        plain_switch = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        if (
            "default" in text
            or action.required
            or plain_switch
            or not action.option_strings
            or action.default in (None, argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


def add_common_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``-v/--verbose`` and ``--debug``, accepted before or after the command name."""
    default = False if top else argparse.SUPPRESS  # a subcommand must not reset the top's value
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log what the library does (debug level)")  # fmt: skip
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback when a command fails")  # fmt: skip


def subcommand(sub: Any, name: str, help: str, description: str | None = None,
               epilog: str | None = None) -> argparse.ArgumentParser:  # fmt: skip
    """A subcommand parser with steerlab's help formatting and common flags."""
    p = sub.add_parser(name, help=help, description=description or (help[0].upper() + help[1:]).replace("%%", "%"),
                       epilog=epilog, formatter_class=HelpFormatter)  # fmt: skip
    add_common_flags(p)
    p.set_defaults(parser=p)
    return p


# --------------------------------------------------------------------------- output


@contextmanager
def progress_bar(
    total: int, desc: str, unit: str = "tok", *, disable: bool = False
) -> Iterator[tqdm]:
    """A progress bar on stderr (``TQDM_DISABLE=1`` or ``disable=True`` turns it off: the
    ranks of a torchrun launch but rank 0), erased if the command fails so that the error
    stands alone on its line."""
    # disable only when asked: an explicit disable=False would override TQDM_DISABLE
    off: dict[str, Any] = {"disable": True} if disable else {}
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
               smoothing=0.1, **off)  # fmt: skip
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


def advance(bar: tqdm) -> Callable[[int], None]:
    """A progress callback of the library (``n`` more done) that moves ``bar``."""

    def step(n: int) -> None:
        bar.update(n)

    return step


def say(*parts: Any) -> None:
    """Print a line of the command's report on stdout."""
    print(*parts, flush=True)


def table(rows: Sequence[tuple[str, Any]]) -> str:
    """Two aligned columns: names right-aligned, values as given."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (a temporary sibling, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, with an error naming it and ``what`` it should be."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"{path}: no such file (expected {what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CliError(f"{path}: not a JSON file ({e}); expected {what}") from None


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, not after minutes of work, if ``path`` cannot be created or written.

    Looks at the nearest existing folder on the way to ``path``: its permission bits, then a
    file created there and removed at once (``os.access`` says yes to root, and knows nothing
    of file systems that refuse writes, e.g. sysfs); leaves nothing behind.
    """
    p = Path(path).expanduser().absolute()
    existing = next(a for a in (p, *p.parents) if a.exists())
    if existing != p and not existing.is_dir():
        raise CliError(f"cannot create {p}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"cannot write {p}: permission denied on {folder}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".steerlab-write-check-", dir=folder)
    except OSError as e:
        raise CliError(f"cannot write {p}: {e.strerror or e} in {folder}") from e
    os.close(fd)
    os.unlink(probe)


# --------------------------------------------------------------------------- the hub


@cache
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) counts as unreachable without trying.
    The check is one connection attempt, name lookup included, given ``timeout`` seconds in
    all: without it, transformers and datasets retry for ~25 s before they give up on a
    machine without network.
    """
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):  # fmt: skip
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    answered: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname or "huggingface.co", port),
                                     timeout=timeout).close()  # fmt: skip
            answered.append(True)
        except OSError:
            answered.append(False)

    # the socket timeout does not bound the name lookup (getaddrinfo), which can hang for tens
    # of seconds where DNS is unreachable: wait for the attempt at most `timeout` seconds
    attempt = threading.Thread(target=connect, name="steerlab-hub-check", daemon=True)
    attempt.start()
    attempt.join(timeout)
    return bool(answered and answered[0])


def go_offline() -> None:
    """Make transformers and datasets use only their local caches (no retries).

    Sets ``HF_HUB_OFFLINE`` and ``HF_DATASETS_OFFLINE`` for libraries imported later, and the
    same switches of those already imported (they read the variables once, at import).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for module, switches in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                             ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):  # fmt: skip
        if module in sys.modules:
            for name in switches:
                setattr(sys.modules[module], name, True)


def _hub_model(name: str) -> bool:
    """``name`` resolves to a hub id (not an embedded model nor a local directory)."""
    return isinstance(resolve(name)[1], str)


def _missing_model(name: str) -> CliError:
    return CliError(
        f"model {name!r} is not an embedded name ({', '.join(sorted(EMBEDDED))}), not a local "
        "model directory, and not in the local Hugging Face cache; the hub is not reachable "
        "from this machine, so it cannot be downloaded"
    )


def open_model(name: str, device: str | None = None, **kwargs: Any) -> ModelHandle:
    """:func:`steerlab.models.load_model` (``kwargs``: dtype, device_map, ...), failing fast
    (one line) for a hub id offline."""
    hub = _hub_model(name)
    if hub and not hub_reachable():
        go_offline()
    try:
        return load_model(name, device=device, **kwargs)
    except OSError as e:
        if hub and not hub_reachable() and not isinstance(e, PermissionError):
            raise _missing_model(name) from e
        raise


def open_tokenizer(name: str) -> Any:
    """:func:`steerlab.models.load_tokenizer` (no weights), failing fast for a hub id offline."""
    hub = _hub_model(name)
    if hub and not hub_reachable():
        go_offline()
    try:
        return load_tokenizer(name)
    except OSError as e:
        if hub and not hub_reachable() and not isinstance(e, PermissionError):
            raise _missing_model(name) from e
        raise


# --------------------------------------------------------------------------- corpora


def corpus_texts(name: str) -> list[str]:
    """The documents of ``--corpus``; an unknown name is one line listing the named corpora.

    A name is a hub dataset id only in the form ``owner/name`` (a bare word is far more often
    a mistyped corpus name than one of the hub's few legacy unprefixed datasets); a hub id is
    tried only from the local cache when the hub is not reachable.
    """
    parts = name.split("+")
    if name in NAMED_CORPORA or all(p in NAMED_CORPORA for p in parts):
        return load_texts(name)
    if Path(name).expanduser().exists():
        return load_texts(name)
    known = ", ".join(NAMED_CORPORA)
    owner, slash, rest = name.partition("/")
    if not slash or not owner or not rest or "/" in rest or name.startswith((".", "~")):
        if "/" in name or "\\" in name or Path(name).suffix:
            raise CliError(f"--corpus {name!r}: no such file or directory")
        raise CliError(f"--corpus {name!r} is not a corpus: use one of {known} (or "
                       "prose+code), a local file or directory, or a datasets id owner/name")  # fmt: skip
    offline = not hub_reachable()
    if offline:
        go_offline()
    try:
        return load_texts(name)
    except (OSError, ValueError) as e:
        if not offline:
            raise
        raise CliError(f"--corpus {name!r} is read as a Hugging Face datasets id, but it is not "
                       f"in the local cache and the hub is not reachable; the named corpora are "
                       f"{known}") from e  # fmt: skip
