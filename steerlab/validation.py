"""One validation layer for everything steerlab reads from disk.

Artifacts (:mod:`steerlab.artifacts`) and activation stores (:mod:`steerlab.capture.store`) read
their files only through these functions, so every way a file can be damaged or wrong ends in
one error type, :class:`~steerlab.errors.FormatError`, whose message names the file, the field
and what was expected:

- :func:`read_json` — a missing file, bytes that are not UTF-8, text that is not JSON;
- :func:`check_fields` / :func:`require` — a schema: required keys, their JSON types, ranges;
- :func:`json_view` — the parsed JSON, where reading a key that is not there raises a
  :class:`FormatError` naming the (dotted) field instead of a bare ``KeyError``;
- :func:`read_safetensors_header` — the structure of a ``.safetensors`` file checked in full
  before any tensor is read: the 8-byte header length against the file size (a truncated file
  is named as such, not ``SafetensorError: invalid header length``), the header's JSON, each
  tensor's dtype, shape and byte range, and that the ranges tile the data exactly (what
  safetensors itself requires);
- :func:`load_tensors` / :func:`open_tensors` — tensors read after that check; a missing tensor
  is a :class:`FormatError` naming it;
- :func:`reading` — the backstop around building an object from checked files: whatever a
  constructor still refuses (a shape the config contradicts, a value out of range) becomes a
  :class:`FormatError` naming the file, with the constructor's message.

Reading never writes: none of these functions creates, changes or removes a file.
"""

from __future__ import annotations

import collections.abc
import json
import math
import os
import pickle
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from steerlab.errors import FormatError, MissingFileError

__all__ = [
    "DTYPE_SIZES",
    "FormatError",
    "JsonObject",
    "MissingFileError",
    "TensorDict",
    "TensorInfo",
    "Types",
    "check_fields",
    "check_tensor",
    "check_type",
    "json_matches",
    "json_view",
    "load_tensors",
    "open_tensors",
    "read_json",
    "read_safetensors_header",
    "reading",
    "require",
    "show",
]

Types = tuple[type | None, ...]
"""The JSON types a field may hold; ``None`` stands for null. ``float`` accepts integers (JSON
writes ``1.0`` as ``1`` in some tools); ``int`` never accepts ``true``/``false``."""

DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
    "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1,
    "F8_E5M2FNUZ": 1, "C64": 8,
}  # fmt: skip
"""Bytes per element of every safetensors dtype torch reads."""

MAX_HEADER_BYTES = 100_000_000
"""safetensors refuses headers larger than this (100 MB)."""

# What a constructor raises when the values it gets from a file make no sense (the backstop of
# :func:`reading`); programming errors of other kinds (NameError, ImportError) are not caught.
_VALUE_PROBLEMS = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    RuntimeError,
    ArithmeticError,
    SafetensorError,
)


def show(value: Any, limit: int = 80) -> str:
    """``value`` as JSON (as it appears in the file), shortened to ``limit`` characters."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- JSON


def read_json(file: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file.

    Args:
        file: the file.
        what: what it should be (``"an artifact config"``), for the messages.

    Raises:
        MissingFileError: the file does not exist.
        FormatError: a directory, bytes that are not UTF-8, or text that is not JSON.
    """
    file = Path(file)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(file, f"no such file (expected {what})") from None
    except IsADirectoryError:
        raise FormatError(file, f"is a directory, expected {what}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(file, f"not UTF-8 text (byte {e.start}); expected {what}") from None
    except json.JSONDecodeError as e:
        raise FormatError(file, f"not valid JSON ({e.msg} at line {e.lineno} column "
                                f"{e.colno}); expected {what}") from None  # fmt: skip
    except RecursionError:
        raise FormatError(file, f"JSON nested too deeply to be {what}") from None


def _is(value: Any, t: type | None) -> bool:
    if t is None:
        return value is None
    if isinstance(value, bool):  # JSON true/false are Python ints too; never a number here
        return t is bool
    if t is float:
        return isinstance(value, int | float)
    return isinstance(value, t)


def _names(types: Types) -> str:
    return " or ".join("null" if t is None else t.__name__ for t in types)


def check_type(
    value: Any, types: Types, file: str | os.PathLike, field: str, *, label: str = "field"
) -> None:
    """Raise a :class:`FormatError` unless ``value`` has one of ``types`` (see :data:`Types`)."""
    if not any(_is(value, t) for t in types):
        raise FormatError(file, f"{label} {field!r} must be {_names(types)}, got {show(value)}",
                          field=field)  # fmt: skip


def check_fields(
    obj: Any,
    schema: Mapping[str, Types],
    file: str | os.PathLike,
    *,
    label: str = "field",
    prefix: str = "",
) -> None:
    """Check that ``obj`` is a JSON object holding every key of ``schema`` with its types.

    Keys that ``schema`` does not name are allowed (newer writers may add fields).

    Args:
        obj: the parsed JSON.
        schema: key -> the JSON types it may hold.
        file: the file, named in the error.
        label: how the message calls a key (``"header field"``, ``"field"``).
        prefix: the dotted path of ``obj`` inside the file (``"shards.3."``), if nested.

    Raises:
        FormatError: ``obj`` is not an object, a key is missing, or a value has another type.
    """
    where = prefix.rstrip(".")
    if not isinstance(obj, dict):
        what = f"{label} {where!r} must be a JSON object" if where else "must hold a JSON object"
        raise FormatError(file, f"{what}, got {type(obj).__name__}", field=where or None)
    for name, allowed in schema.items():
        field = f"{prefix}{name}"
        if name not in obj:
            raise FormatError(file, f"missing {label} {field!r}", field=field)
        check_type(obj[name], allowed, file, field, label=label)


def require(
    ok: bool, file: str | os.PathLike, field: str, expected: str, got: Any, *, label: str = "field"
) -> None:
    """Raise ``FormatError("<file>: <label> '<field>' must be <expected>, got <got>")`` unless
    ``ok``."""
    if not ok:
        raise FormatError(file, f"{label} {field!r} must be {expected}, got {show(got)}",
                          field=field)  # fmt: skip


_OBJECTS = (dict, Mapping, collections.abc.Mapping)
_ARRAYS = (list, tuple, collections.abc.Sequence)


def json_matches(value: Any, annotation: Any) -> bool | None:
    """Whether a parsed JSON ``value`` fits a field's type ``annotation``.

    Understood: ``int``, ``float``, ``str``, ``bool``, ``None``, ``Literal[...]``, unions
    (``X | None``), ``dict``/``Mapping`` (a JSON object), ``list``/``tuple``/``Sequence`` (a
    JSON array); their contents are not looked into.

    Returns:
        True or False; None where the annotation is not one of those (nothing to check).
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        results = [json_matches(value, a) for a in typing.get_args(annotation)]
        return True if True in results else None if None in results else False
    if annotation is None or annotation is type(None):
        return value is None
    if origin is Literal:
        return any(_is(value, type(c)) and value == c for c in typing.get_args(annotation))
    base = origin or annotation
    if base in _OBJECTS:
        return isinstance(value, dict)
    if base in _ARRAYS:
        return isinstance(value, list)
    if base in (int, float, str, bool):
        return _is(value, base)
    return None


class JsonObject(dict):
    """A JSON object read from a file: reading a key it lacks raises a :class:`FormatError`
    naming the file and the dotted field (``positions.tokens``), not a bare ``KeyError``.

    Otherwise a plain ``dict`` (``get``, ``in``, equality and ``json.dumps`` as usual).
    """

    file: str = "<json>"
    prefix: str = ""

    def __missing__(self, key: Any) -> Any:
        field = f"{self.prefix}{key}"
        raise FormatError(self.file, f"missing field {field!r}", field=field)


def json_view(value: Any, file: str | os.PathLike, prefix: str = "") -> Any:
    """``value`` with every JSON object inside turned into a :class:`JsonObject` of ``file``."""
    if isinstance(value, dict):
        out = JsonObject((k, json_view(v, file, f"{prefix}{k}.")) for k, v in value.items())
        out.file, out.prefix = str(file), prefix
        return out
    if isinstance(value, list):
        return [json_view(v, file, f"{prefix}{i}.") for i, v in enumerate(value)]
    return value


# --------------------------------------------------------------------------- safetensors


class TensorInfo(NamedTuple):
    """One entry of a safetensors header."""

    dtype: str
    """safetensors' dtype name, e.g. ``"F32"``, ``"I64"``, ``"BOOL"``."""
    shape: tuple[int, ...]
    """The tensor's shape."""


def read_safetensors_header(file: str | os.PathLike) -> dict[str, TensorInfo]:
    """Read and check the header of a ``.safetensors`` file without reading its tensors.

    The format is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON mapping each
    tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional
    ``__metadata__`` of strings), then the data, which the tensors' byte ranges must tile
    exactly. A file that passes this check is one safetensors can read.

    Returns:
        tensor name -> :class:`TensorInfo`.

    Raises:
        MissingFileError: no such file.
        FormatError: truncated, extended, or a header that is not what the format says.
    """
    file = Path(file)
    try:
        f = open(file, "rb")  # noqa: SIM115 (closed below; the error needs the name first)
    except FileNotFoundError:
        raise MissingFileError(file, "no such file (expected a safetensors file)") from None
    except IsADirectoryError:
        raise FormatError(file, "is a directory, expected a safetensors file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(file, f"truncated: {size} bytes, but a safetensors file starts "
                                    "with an 8-byte header length")  # fmt: skip
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise FormatError(file, f"truncated or not a safetensors file: the header length "
                                    f"says {n} bytes, {size - 8} follow it")  # fmt: skip
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(file, f"damaged safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise FormatError(file, f"damaged safetensors header: a {type(header).__name__}, "
                                "expected a JSON object")  # fmt: skip
    data_size = size - 8 - n
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            ok = entry is None or (
                isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())
            )
            require(ok, file, name, "an object of strings", entry, label="safetensors header")
            continue
        label = "tensor"
        if not isinstance(entry, dict):
            raise FormatError(file, f"damaged safetensors header: the entry of tensor {name!r} "
                                    f"is a {type(entry).__name__}, not an object", field=name)  # fmt: skip
        for key, t in (("dtype", str), ("shape", list), ("data_offsets", list)):
            require(isinstance(entry.get(key), t), file, f"{name}.{key}", f"a {t.__name__}",
                    entry.get(key), label="safetensors header field")  # fmt: skip
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        require(dtype in DTYPE_SIZES, file, name, f"of a known dtype ({', '.join(DTYPE_SIZES)})",
                dtype, label=label)  # fmt: skip
        ok = all(_is(s, int) and s >= 0 for s in shape)
        require(ok, file, name, "of a shape of integers >= 0", shape, label=label)
        ok = len(offsets) == 2 and all(_is(o, int) for o in offsets)
        ok = ok and 0 <= offsets[0] <= offsets[1]
        require(ok, file, name, "at data offsets [begin, end], 0 <= begin <= end", offsets,
                label=label)  # fmt: skip
        if offsets[1] > data_size:
            raise FormatError(file, f"truncated: tensor {name!r} needs data bytes {offsets[0]}.."
                                    f"{offsets[1]}, the file holds {data_size}", field=name)  # fmt: skip
        need = math.prod(shape) * DTYPE_SIZES[dtype]
        require(offsets[1] - offsets[0] == need, file, name,
                f"{need} bytes long ({dtype} {shape})", offsets, label=label)  # fmt: skip
        spans.append((offsets[0], offsets[1], name))
        infos[name] = TensorInfo(dtype, tuple(shape))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise FormatError(file, f"damaged safetensors header: tensor {name!r} starts at data "
                                    f"byte {begin}, expected {end}", field=name)  # fmt: skip
        end = stop
    if end != data_size:
        raise FormatError(file, f"truncated or extended: the tensors cover {end} data bytes, "
                                f"the file holds {data_size}")  # fmt: skip
    return infos


class TensorDict(dict):
    """Tensors read from a file: reading a name it lacks raises a :class:`FormatError` naming
    the file and the tensor. Otherwise a plain ``dict``."""

    file: str = "<safetensors>"

    def __missing__(self, key: Any) -> Any:
        raise FormatError(self.file, f"missing tensor {key!r} (has {sorted(self)})", field=key)


def load_tensors(file: str | os.PathLike, device: str = "cpu") -> TensorDict:
    """Every tensor of a ``.safetensors`` file, after :func:`read_safetensors_header`.

    Raises:
        MissingFileError: no such file.
        FormatError: a damaged file.
    """
    read_safetensors_header(file)
    try:
        tensors = load_file(str(file), device=device)
    except SafetensorError as e:  # a header this module accepts and safetensors does not
        raise FormatError(file, f"not a readable safetensors file ({e})") from None
    out = TensorDict(tensors)
    out.file = str(file)
    return out


@contextmanager
def open_tensors(file: str | os.PathLike, device: str = "cpu") -> Iterator[Any]:
    """``safetensors.safe_open`` of a checked file (reads only the tensors asked for).

    Yields:
        ``(handle, infos)``: the open file and its :class:`TensorInfo` by name.

    Raises:
        MissingFileError, FormatError: as :func:`load_tensors`; also for a tensor asked for
            that the file does not hold.
    """
    infos = read_safetensors_header(file)
    try:
        handle = safe_open(str(file), framework="pt", device=device)
    except SafetensorError as e:
        raise FormatError(file, f"not a readable safetensors file ({e})") from None
    try:
        with handle as f:
            yield f, infos
    except SafetensorError as e:
        raise FormatError(file, f"cannot read a tensor ({e}); it holds {sorted(infos)}") from None


def check_tensor(
    t: Tensor | TensorInfo, file: str | os.PathLike, name: str, shape: tuple[int | None, ...]
) -> None:
    """Raise a :class:`FormatError` unless tensor ``name`` has ``shape`` (None: any size)."""
    got = tuple(t.shape)
    ok = len(got) == len(shape) and all(w is None or g == w for g, w in zip(got, shape))
    want = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
    require(ok, file, name, f"of shape {want}", list(got), label="tensor")


# --------------------------------------------------------------------------- the backstop


@contextmanager
def reading(file: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn what building ``what`` from ``file``'s checked contents still raises (a
    constructor's ``ValueError``, a ``TypeError`` from a value of the wrong type, torch's
    ``RuntimeError`` for a shape mismatch, ...) into a :class:`FormatError` naming the file.

    A :class:`FormatError` passes through unchanged; the original error is chained.
    """
    try:
        yield
    except FormatError:
        raise
    except _VALUE_PROBLEMS as e:
        reason = f"missing key {e}" if isinstance(e, KeyError) else str(e) or type(e).__name__
        raise FormatError(
            file, f"not a valid {what}: {reason}", field=getattr(e, "field", None)
        ) from e


def safe_torch_load(path: Path) -> dict[str, Tensor]:
    """``torch.load(path, weights_only=True)`` of a flat ``{name: tensor}`` dict, or a clear error.

    Raises:
        ValueError: the pickle holds anything ``weights_only`` refuses (arbitrary objects are
            never unpickled), or is not a dict of tensors.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refused this file ({first}); steerlab reads "
            "only pickles of plain tensors and never unpickles arbitrary objects. Re-save it "
            "as torch.save(module.state_dict()) from a trusted environment"
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)
