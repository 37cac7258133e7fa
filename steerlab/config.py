"""One config mechanism for the library, the ``steerlab`` command and the recipes.

After EleutherAI/sparsify (which uses simple_parsing): a config is a ``@dataclass`` with an
attribute docstring right under every field, ``Literal[...]`` for choices, and validation in
``__post_init__``. The same class then becomes command-line options, so a recipe's or a
command's defaults *are* the library's::

    @dataclass
    class PLSConfig:
        n_components: int | None = None
        \"\"\"Number of PLS components; None chooses it by cross-validation.\"\"\"

        def __post_init__(self) -> None:
            check_types(self)
            check_positive(self, "n_components")

    parser = argparse.ArgumentParser()
    pls = add_config(parser, PLSConfig)          # --n-components, help = the docstring
    args = parser.parse_args()
    cfg = pls.build(args, parser=parser)         # a bad value is a parse error naming the flag

Field types understood on the command line: ``int``, ``float``, ``str``, ``bool`` (``--flag`` /
``--no-flag``), ``Literal[...]`` (choices; ``-`` may stand for ``_``), ``X | None`` (``none``
gives None), ``tuple[X, ...]`` (several values, space- or comma-separated) and fixed-length
``tuple[X, Y]``. Any other field type must be skipped (and set by the caller).

Validation helpers for ``__post_init__`` raise :class:`ConfigError`, a ``ValueError`` naming the
class, the field and what was expected, so the CLI can map it back to the option.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import numbers
import re
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, Literal, NamedTuple

__all__ = [
    "ConfigError",
    "ConfigOptions",
    "PendingConfig",
    "add_config",
    "check_fraction",
    "check_nonnegative",
    "check_positive",
    "check_types",
    "field_docs",
    "parse_configs",
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


def _field_type(tp: Any) -> FieldType:
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
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
def _hints(cls: type) -> dict[str, FieldType]:
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
    for field, ft in _hints(type(cfg)).items():
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


# --------------------------------------------------------------------------- argparse


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(_show(v) for v in value)
    return "None" if value is None else str(value)


def _converter(base: Any, choices: tuple[Any, ...] | None, optional: bool) -> Callable:
    """The ``type=`` of an option: parses one token (argparse names it in its errors)."""

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        if choices is not None:
            for c in choices:
                if text == str(c) or text.replace("-", "_") == str(c):
                    return c
            return text  # argparse then names the valid choices
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return text

    convert.__name__ = "choice" if choices is not None else getattr(base, "__name__", "value")
    return convert


_METAVAR = {int: "N", float: "NUM", str: "TEXT"}


class _SplitList(argparse.Action):
    """Several values: ``--x 1 2``, ``--x 1,2`` (numbers only: text may hold commas) or the
    flag repeated (``--prompt a --prompt b``); the values are collected into a tuple."""

    def __init__(self, *args: Any, item: Callable, **kwargs: Any) -> None:
        self.item = item
        super().__init__(*args, **kwargs)

    def __call__(self, _parser: Any, namespace: Any, values: Any, _option: Any = None) -> None:
        split = self.item.__name__ in ("int", "float")
        out = []
        for token in values:
            for part in filter(None, token.split(",")) if split else [token]:
                try:
                    out.append(self.item(part.strip() if split else part))
                except ValueError:
                    raise argparse.ArgumentError(
                        self, f"invalid {self.item.__name__} value: {part!r}"
                    ) from None
        if not out:
            raise argparse.ArgumentError(self, "expected at least one value")
        before = getattr(namespace, self.dest, None)
        # the first use replaces the default, a repeated flag adds to it
        keep = () if before is self.default or before is None else tuple(before)
        setattr(namespace, self.dest, keep + tuple(out))


@dataclasses.dataclass(frozen=True)
class ConfigOptions:
    """How one config class appears on a command line, and how it is built back.

    Create it with :func:`add_config`. Each field ``name`` becomes ``--{prefix-}name`` (``_``
    -> ``-``) unless skipped or renamed; its help is the field's docstring plus its default.
    """

    cls: type
    """The config dataclass."""
    prefix: str = ""
    """Put before every flag and destination (``"rlace"`` -> ``--rlace-max-iter``)."""
    skip: tuple[str, ...] = ()
    """Fields that are not options: the caller passes them to :meth:`build`."""
    rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Field -> option name, e.g. ``{"max_tokens": "tokens"}`` for ``--tokens``."""
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Defaults for fields that the library leaves without one (overriding a library default
    is refused: a command's defaults are the library's)."""
    positional: tuple[str, ...] = ()
    """Fields given as positional arguments (``steerlab sae eval DIR``), in field order."""

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.cls)}
        given = set(self.skip) | set(self.rename) | set(self.defaults) | set(self.positional)
        unknown = given - names
        if unknown:
            raise ValueError(f"{self.cls.__name__} has no fields {sorted(unknown)}")
        for f in dataclasses.fields(self.cls):
            has_default = f.default is not dataclasses.MISSING or (
                f.default_factory is not dataclasses.MISSING
            )
            if f.name in self.defaults and has_default:
                raise ValueError(
                    f"{self.cls.__name__}.{f.name} has a library default; a command may not "
                    "override it"
                )

    def fields(self) -> list[dataclasses.Field]:
        """The fields that are options."""
        return [f for f in dataclasses.fields(self.cls) if f.name not in self.skip]

    def option(self, name: str) -> str:
        """The option name of field ``name`` without dashes (``max_iter`` -> ``max_iter``)."""
        name = self.rename.get(name, name)
        return f"{self.prefix}_{name}" if self.prefix else name

    def flag(self, name: str) -> str:
        """The command-line flag of field ``name``."""
        return "--" + self.option(name).replace("_", "-")

    def add_to(self, parser: argparse.ArgumentParser | Any, title: str | None = None) -> None:
        """Add one option per field to ``parser`` (in an argument group if ``title``)."""
        docs = field_docs(self.cls)
        hints = _hints(self.cls)
        target = parser.add_argument_group(title) if title else parser
        for f in self.fields():
            ft = hints[f.name]
            if ft.base is None:
                raise TypeError(
                    f"{self.cls.__name__}.{f.name}: its type cannot be given on a command line; "
                    "skip it and set it in the caller"
                )
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = self.defaults.get(f.name, dataclasses.MISSING)
            required = default is dataclasses.MISSING
            doc = docs.get(f.name, "").replace("%", "%%")
            # a docstring that explains its default (typically None's meaning) keeps its words
            said = re.search(r"\bdefault\b", doc, re.IGNORECASE) is not None
            shown = "" if required or said else f" (default: {_show(default)})".replace("%", "%%")
            kw: dict[str, Any] = {"dest": self.option(f.name), "help": doc + shown}
            if required:
                kw["required"] = True
            else:
                kw["default"] = default
            if ft.base is bool and ft.choices is None:
                kw["action"] = argparse.BooleanOptionalAction
            elif ft.base is tuple:
                var = ft.items[-1:] == (Ellipsis,)
                item = ft.items[0] if ft.items else str
                if not var and len(set(ft.items)) != 1:
                    raise TypeError(f"{self.cls.__name__}.{f.name}: mixed tuples not supported")
                kw["action"] = _SplitList
                kw["item"] = _converter(item, None, False)
                kw["nargs"] = "+"
                kw["metavar"] = _METAVAR.get(item, "TEXT")
            else:
                kw["type"] = _converter(ft.base, ft.choices, ft.optional)
                if ft.choices is not None:
                    kw["choices"] = ft.choices
                    kw["metavar"] = "{" + ",".join(map(str, ft.choices)) + "}"
                elif ft.base is not str:
                    kw["metavar"] = _METAVAR[ft.base]
            if f.name in self.positional:
                del kw["dest"]  # a positional argument's name is its destination
                kw.pop("required", None)
                kw["metavar"] = self.option(f.name).upper()
                if not required:
                    kw["nargs"] = "?"
                action = target.add_argument(self.option(f.name), **kw)
            else:
                action = target.add_argument(self.flag(f.name), **kw)
            # BooleanOptionalAction appends "(default: ...)" itself on some Python versions
            if action.help and action.help.count("(default:") > 1:
                action.help = doc + " (default: %(default)s)"

    def to_argv(self, cfg: Any) -> list[str]:
        """The command-line arguments that :meth:`build` turns back into ``cfg`` (its skipped
        fields aside): every option, in field order."""
        if not isinstance(cfg, self.cls):
            raise TypeError(f"expected a {self.cls.__name__}, got {type(cfg).__name__}")
        # "--flag=value": a value that starts with "-" (-1e-3) is not taken for an option
        argv: list[str] = []
        for f in self.fields():
            value, flag = getattr(cfg, f.name), self.flag(f.name)
            if f.name in self.positional:
                argv.append(_show(value))
            elif isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, tuple | list) and all(isinstance(v, int | float) for v in value):
                argv += [f"{flag}={_show(value)}"] if value else []
            elif isinstance(value, tuple | list):
                argv += [f"{flag}={v}" for v in value]  # the repeated flag collects them
            else:
                argv.append(f"{flag}={_show(value)}")
        return argv

    def build(self, args: argparse.Namespace, *, parser: Any = None, **fixed: Any) -> Any:
        """The config instance from parsed ``args`` plus the ``fixed`` (skipped) fields.

        Args:
            args: the parsed namespace.
            parser: if given, an invalid value is reported as ``parser.error`` naming the flag
                (usage and exit status 2, before the command has done anything).
            fixed: values of the skipped fields.

        Raises:
            ConfigError: (without ``parser``) naming the flag.
        """
        values = {f.name: getattr(args, self.option(f.name)) for f in self.fields()}
        values.update(fixed)
        try:
            return self.cls(**values)
        except ConfigError as e:
            where = self.flag(e.field) if e.field not in self.skip else e.field
            message = str(e).split(": ", 1)[1]
            if parser is not None:
                parser.error(f"argument {where}: {message}")
            raise ConfigError(e.config, e.field, f"{where}: {message}") from None
        except ValueError as e:  # a check across fields (e.g. k < d_sae): no single flag
            if parser is not None:
                parser.error(str(e))
            raise


class PendingConfig(NamedTuple):
    """Parsed options of a config with fields known only later (e.g. ``d_in``, the width of a
    store that is opened after parsing): :meth:`build` makes the instance then."""

    options: ConfigOptions
    """How the config's fields map to options."""
    args: argparse.Namespace
    """The parsed command line."""
    parser: Any = None
    """Reports a bad value as a usage error naming the flag (see :meth:`ConfigOptions.build`)."""

    def build(self, **fixed: Any) -> Any:
        """The config instance, with the late ``fixed`` fields."""
        return self.options.build(self.args, parser=self.parser, **fixed)


def add_config(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    skip: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    positional: Sequence[str] = (),
    title: str | None = None,
) -> ConfigOptions:
    """Add the fields of config class ``cls`` to ``parser`` as options.

    Args:
        parser: an argparse parser (or subparser).
        cls: the config dataclass.
        prefix: prepended to every flag (``--{prefix}-{field}``), to tell apart two configs
            with a field of the same name.
        skip: fields that are not options (pass them to :meth:`ConfigOptions.build`).
        rename: field -> option name.
        defaults: defaults for fields without a library default.
        positional: fields given as positional arguments (in field order).
        title: put the options into an argument group with this title in ``--help``.

    Returns:
        The :class:`ConfigOptions`, whose :meth:`~ConfigOptions.build` makes the instance.
    """
    spec = ConfigOptions(
        cls, prefix, tuple(skip), dict(rename or {}), dict(defaults or {}), tuple(positional)
    )
    spec.add_to(parser, title)
    return spec


def parse_configs(
    *specs: type | ConfigOptions,
    argv: Sequence[str] | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> tuple[Any, ...]:
    """Parse a command line into one instance per config class (the recipes' entry point).

    Args:
        specs: config classes, or :class:`ConfigOptions` made with ``ConfigOptions(cls, ...)``
            for prefixes, renames or skipped fields (skipped fields keep their defaults).
        argv: the arguments (default ``sys.argv[1:]``).
        description: the ``--help`` description.
        epilog: text after the options (examples).

    Returns:
        The config instances, in the order of ``specs``. A bad value exits with a usage error
        naming the flag, before the caller has done anything.
    """
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options = [s if isinstance(s, ConfigOptions) else ConfigOptions(s) for s in specs]
    seen: dict[str, str] = {}
    for o in options:
        for f in o.fields():
            flag = o.flag(f.name)
            if flag in seen:
                raise ValueError(
                    f"{flag} comes from both {seen[flag]} and {o.cls.__name__}: give one a "
                    "prefix, a rename or skip the field"
                )
            seen[flag] = o.cls.__name__
        o.add_to(parser, title=o.cls.__name__)
    args = parser.parse_args(argv)
    return tuple(o.build(args, parser=parser) for o in options)
