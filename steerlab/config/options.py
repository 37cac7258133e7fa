"""Config dataclasses as command-line options: :func:`add_config` turns a config class into
argparse options (help = the field docstrings and defaults) and :meth:`ConfigOptions.build`
turns the parsed arguments back into a validated instance."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from steerlab.config.fields import ConfigError, field_docs, field_types

__all__ = ["ConfigOptions", "PendingConfig", "add_config", "parse_configs"]


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
        hints = field_types(self.cls)
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
