"""Config fields: what their annotations mean, their attribute docstrings, and the checks a
config's ``__post_init__`` runs (each raises :class:`ConfigError` naming the field)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import numbers
import re
import textwrap
import types
import typing
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal, NamedTuple

__all__ = [
    "ConfigError",
    "FieldType",
    "check_fraction",
    "check_nonnegative",
    "check_positive",
    "check_types",
    "field_docs",
    "field_types",
    "require",
]


class ConfigError(ValueError):
    """A config field holds a value of the wrong type or out of its range.

    Attributes:
        config: the config class name.
        field: the field name.
    """

    def __init__(self, config: str, field: str, message: str) -> None:
        self.config, self.field = config, field
        super().__init__(f"{config}.{field}: {message}")


# --------------------------------------------------------------------------- field types


class FieldType(NamedTuple):
    """What a field's annotation means for checking and parsing."""

    base: Any
    """``int``, ``float``, ``str``, ``bool``, ``tuple`` or None (not understood)."""
    optional: bool
    """The annotation allows None."""
    choices: tuple[Any, ...] | None
    """The values of a ``Literal``."""
    items: tuple[Any, ...] = ()
    """Element types of a tuple; ``(X, Ellipsis)`` for ``tuple[X, ...]``."""
    others: tuple[type, ...] = ()
    """Further classes a union accepts (``str | Positions``: given as text on a command
    line, a :class:`~steerlab.positions.Positions` object in code)."""


def _field_type(tp: Any) -> FieldType:
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        simple = [a for a in args if a in (int, float, str, bool)]
        if len(args) > 1 and len(simple) == 1:  # e.g. str | Positions: text, or an object
            others = tuple(a for a in args if isinstance(a, type) and a is not simple[0])
            return FieldType(simple[0], optional, None, (), others)
        if len(args) != 1:
            return FieldType(None, optional, None)
        tp = args[0]
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return FieldType(type(choices[0]), optional, choices)
    if typing.get_origin(tp) is tuple:
        return FieldType(tuple, optional, None, typing.get_args(tp))
    if tp in (int, float, str, bool):
        return FieldType(tp, optional, None)
    return FieldType(None, optional, None)


@cache
def field_types(cls: type) -> dict[str, FieldType]:
    hints = typing.get_type_hints(cls)
    return {f.name: _field_type(hints[f.name]) for f in dataclasses.fields(cls)}


def _is(value: Any, base: Any) -> bool:
    """``value`` is a ``base`` (numpy scalars count; bools are not numbers here)."""
    if isinstance(value, bool):
        return base is bool
    if base is int:
        return isinstance(value, numbers.Integral)
    if base is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, base)


def _matches(value: Any, ft: FieldType) -> bool:
    """``value`` fits the field type (None aside)."""
    if ft.base is tuple:  # a list is accepted where a tuple is declared
        if not isinstance(value, tuple | list):
            return False
        kinds = [ft.items[0]] * len(value) if ft.items[-1:] == (Ellipsis,) else list(ft.items)
        return len(kinds) == len(value) and all(
            _is(v, k) and (k is not float or math.isfinite(v)) for v, k in zip(value, kinds)
        )
    if ft.others and isinstance(value, ft.others):
        return True
    if not _is(value, ft.base):
        return False
    if ft.choices is not None:
        return value in ft.choices
    return ft.base is not float or math.isfinite(value)


def _type_name(ft: FieldType) -> str:
    if ft.choices is not None:
        name = "one of " + ", ".join(map(repr, ft.choices))
    elif ft.base is tuple and ft.items[-1:] == (Ellipsis,):
        name = f"a list of {ft.items[0].__name__}"
    elif ft.base is tuple:
        name = f"{len(ft.items)} values ({', '.join(t.__name__ for t in ft.items)})"
    else:
        name = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}[
            ft.base
        ]
    name += "".join(f", a {t.__name__}" for t in ft.others)
    return name + (" or None" if ft.optional else "")


def check_types(cfg: Any) -> None:
    """Check every field of a dataclass instance against its annotation.

    Integers must be integers (not bools or floats); numbers must be real and finite (NaN and
    infinity are refused everywhere: no setting of steerlab means "not a number"); strings
    strings; ``Literal`` fields one of their values; tuples (or lists) hold elements of the
    declared type. Fields of other types are not checked.

    Raises:
        ConfigError: naming the field, what it expects and what it got.
    """
    name = type(cfg).__name__
    for field, ft in field_types(type(cfg)).items():
        value = getattr(cfg, field)
        if ft.base is None or (value is None and ft.optional):
            continue
        ok = _matches(value, ft)
        if not ok and ft.choices is not None and isinstance(value, type(ft.choices[0])):
            raise ConfigError(name, field, f"unknown {field} {value!r}; expected {_type_name(ft)}")
        if not ok:
            raise ConfigError(name, field, f"expected {_type_name(ft)}, got {value!r}")


def require(cfg: Any, field: str, ok: bool, expected: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``ok``; ``expected`` says what is."""
    if not ok:
        raise ConfigError(
            type(cfg).__name__, field, f"expected {expected}, got {getattr(cfg, field)!r}"
        )


def _numbers(cfg: Any, fields: Sequence[str]) -> list[tuple[str, float]]:
    out = []
    for f in fields:
        v = getattr(cfg, f)
        if v is None:  # an optional field left unset
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ConfigError(type(cfg).__name__, f, f"expected a finite number, got {v!r}")
        out.append((f, v))
    return out


def check_positive(cfg: Any, *fields: str) -> None:
    """Each field (unless None) is > 0: ``>= 1`` for integers."""
    for f, v in _numbers(cfg, fields):
        require(cfg, f, v > 0, ">= 1" if isinstance(v, numbers.Integral) else "a number > 0")


def check_nonnegative(cfg: Any, *fields: str) -> None:
    """Each field (unless None) is >= 0."""
    for f, v in _numbers(cfg, fields):
        require(cfg, f, v >= 0, "a number >= 0")


def check_fraction(cfg: Any, field: str, *, low: bool = False, high: bool = False) -> None:
    """The field lies in ``(0, 1)``; ``low`` / ``high`` close the interval at 0 / 1."""
    for f, v in _numbers(cfg, [field]):
        ok = (v >= 0 if low else v > 0) and (v <= 1 if high else v < 1)
        require(cfg, f, ok, f"a number in {'[' if low else '('}0, 1{']' if high else ')'}")


# --------------------------------------------------------------------------- docstrings

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _plain(text: str) -> str:
    """One paragraph of plain text from reStructuredText (for ``--help``)."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0) else m.group(1),
                     text)  # fmt: skip
    return " ".join(text.replace("``", "").split())


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring of each field of a dataclass (and of its dataclass bases),
    read from the source with :mod:`ast` and flattened to one paragraph of plain text.

    Fields without a docstring are missing from the result.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined in an interactive session
            continue
        node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
        for a, b in zip(node.body, node.body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
                    and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                    and isinstance(b.value.value, str)):  # fmt: skip
                docs[a.target.id] = _plain(b.value.value)
    return docs
