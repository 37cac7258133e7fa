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
gives None), ``tuple[X, ...]`` (several values, space-separated or by repeating the flag;
numbers also comma-separated) and fixed-length ``tuple[X, Y]``. Any other field type must be
skipped (and set by the caller).

Validation helpers for ``__post_init__`` raise :class:`ConfigError`, a ``ValueError`` naming the
class, the field and what was expected, so the CLI can map it back to the option.
"""

from steerlab.config.fields import (
    ConfigError,
    check_fraction,
    check_nonnegative,
    check_positive,
    check_types,
    field_docs,
    require,
)
from steerlab.config.options import ConfigOptions, PendingConfig, add_config, parse_configs

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
