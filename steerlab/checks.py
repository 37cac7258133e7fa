"""Input validation at the boundary of the public library API.

Every check raises :class:`ValueError` with a message that names the argument and the problem
(shape, NaN/inf, number of classes, a count below 1), so a user sees *what* is wrong before any
linear algebra runs and before any file is created. Tensors: features are ``[..., d]`` floating
tensors, labels are class indices ``[n]`` (integer or bool) or per-sample target columns
``[n, k]``. Numbers: :func:`check_int` for counts (batch sizes, steps, token counts, widths,
``k``) and :func:`check_real` for reals (strengths, learning rates, tolerances), one line at
the top of each public entry point. (Config dataclasses check their fields with
:func:`steerlab.config.check_types` and friends; files read from disk are checked by
:mod:`steerlab.validation`.)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeGuard

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "check_features",
    "check_finite",
    "check_int",
    "check_labels",
    "check_real",
    "check_targets",
    "check_width",
]


def _got(value: Any) -> str:
    return f"{value!r} (a bool)" if isinstance(value, bool) else repr(value)


def check_int(value: Any, name: str, *, low: int = 1, optional: bool = False) -> Any:
    """Raise unless ``value`` is an integer ``>= low`` (None too if ``optional``).

    Floats (``8.0`` included: a count is never fractional), strings, bools and NaN are refused.

    Returns:
        ``value`` itself.
    """
    if value is None and optional:
        return value
    # int(): exact for any Integral (numpy integers too), and typed to compare with low
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low
    if not ok:
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer >= {low}{none}, got {_got(value)}")
    return value


# check_real's tests, as functions of their own: narrowed to numbers.Real, the value would lack
# ``>`` for type checkers (the abstract class declares only < and <=), so a finite real number
# is passed on as a float, which every numbers.Real compares like
def _finite_real(value: Any) -> TypeGuard[float]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _within(value: float, low: float | None, high: float | None, low_open: bool) -> bool:
    if low is not None and not (value > low if low_open else value >= low):
        return False
    return high is None or value <= high


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> Any:
    """Raise unless ``value`` is a finite real number within the bounds given.

    Args:
        value: the argument.
        name: its name, for the message.
        low: lowest value allowed (None: no bound).
        high: highest value allowed (None: no bound).
        low_open: ``low`` itself is refused (``> low`` instead of ``>= low``).
        optional: None is allowed.

    NaN, infinities, strings and bools are refused (no steerlab setting means "not a number").

    Returns:
        ``value`` itself.
    """
    if value is None and optional:
        return value
    ok = _finite_real(value) and _within(value, low, high, low_open)
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        where = f" {' and '.join(bounds)}" if bounds else ""
        none = " or None" if optional else ""
        raise ValueError(f"{name} must be a finite number{where}{none}, got {_got(value)}")
    return value


def check_finite(t: Tensor, name: str, *, floating: bool = False) -> Tensor:
    """Raise unless ``t`` is a tensor without NaN or inf (the message counts the bad entries).

    The one finite-values check of steerlab: interventions, probes and erasers call it on every
    tensor a user hands them.

    Args:
        t: the tensor.
        name: what it is, for the message ("steering vector", "y", ...).
        floating: also require a floating-point dtype.

    Returns:
        ``t`` itself, so a check can wrap an expression.
    """
    if not isinstance(t, Tensor):
        want = "a floating-point tensor" if floating else "a torch.Tensor"
        raise ValueError(f"{name} must be {want}, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    bad = ~torch.isfinite(t)
    if bad.any():
        raise ValueError(f"{name} contains NaN or inf ({int(bad.sum())} of {t.numel()} entries)")
    return t


def check_width(x: Tensor, d: int, name: str = "x", *, what: str = "expected") -> None:
    """Raise unless the last dimension of ``x`` is ``d``.

    Args:
        x: any tensor with at least one dimension.
        d: required width.
        name: argument name used in the message.
        what: who expects the width, e.g. ``"the eraser was fitted with"``.
    """
    if x.ndim == 0 or x.shape[-1] != d:
        raise ValueError(
            f"width mismatch: {name} has shape {tuple(x.shape)}, last dim must be d={d} "
            f"({what} d={d})"
        )


def check_features(
    x: Tensor,
    name: str = "x",
    *,
    d: int | None = None,
    min_samples: int = 1,
) -> Float[Tensor, "n d"]:
    """Validate a batch of feature vectors and flatten it to ``[n, d]``.

    Args:
        x: floating tensor ``[..., d]`` with at least 2 dims (leading dims are flattened).
        name: argument name used in messages.
        d: required width, if known.
        min_samples: minimum number of rows after flattening.

    Returns:
        ``x`` reshaped to ``[n, d]`` (a view when possible; same dtype and device).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must be [n, d] (or [..., d]), got shape {tuple(x.shape)}")
    if d is not None:
        check_width(x, d, name)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] < min_samples:
        raise ValueError(f"{name} has {x2.shape[0]} samples; at least {min_samples} needed")
    check_finite(x2, name)
    return x2


def check_labels(
    z: Tensor,
    n: int | None = None,
    name: str = "z",
    *,
    n_classes: int | None = None,
    min_classes: int = 2,
    whole_dataset: bool = True,
) -> tuple[Int[Tensor, " n"], int]:
    """Validate class-index labels.

    Args:
        z: ``[n]`` (or ``[..., ]`` matching the flattened features) integer or bool labels;
            a float tensor is accepted only if every value is a whole number.
        n: required number of labels (the number of feature rows), if known.
        name: argument name used in messages.
        n_classes: number of classes; labels must lie in ``[0, n_classes)``. Default
            ``max(z) + 1``.
        min_classes: minimum number of *distinct* classes present (2: a single class carries
            no concept to erase or probe).
        whole_dataset: also reject more classes than samples and fewer than ``min_classes``
            distinct classes. Pass False for one batch of a streaming fit.

    Returns:
        ``(labels, n_classes)`` with ``labels`` a flat int64 tensor on ``z``'s device.
    """
    if not isinstance(z, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    zf = z.reshape(-1)
    if n is not None and zf.shape[0] != n:
        raise ValueError(f"{name} has {zf.shape[0]} labels but x has {n} samples")
    if zf.numel() == 0:
        raise ValueError(f"{name} is empty")
    if zf.is_floating_point():
        check_finite(zf, name)
        if not torch.equal(zf, zf.round()):
            raise ValueError(f"{name} must hold class indices (whole numbers), got fractions")
    elif zf.is_complex():
        raise ValueError(f"{name} must hold class indices, got {z.dtype}")
    labels = zf.long()
    if int(labels.min()) < 0:
        raise ValueError(f"{name} has negative class index {int(labels.min())}")
    top = int(labels.max())
    if n_classes is None:
        n_classes = top + 1
    elif top >= n_classes:
        raise ValueError(f"{name} has class index {top} >= n_classes={n_classes}")
    if not whole_dataset:
        return labels, n_classes
    if n_classes > labels.shape[0]:
        raise ValueError(
            f"more classes than samples: {name} implies {n_classes} classes for "
            f"{labels.shape[0]} samples"
        )
    present = int(torch.unique(labels).numel())
    if present < min_classes:
        which = "a single class" if present == 1 else f"{present} classes"
        raise ValueError(
            f"{name} has {which} (class {int(labels[0])}); at least {min_classes} distinct "
            "classes are needed"
        )
    return labels, n_classes


def check_targets(
    z: Tensor, n: int, name: str = "z", *, k: int | None = None, whole_dataset: bool = True
) -> Float[Tensor, "n k"]:
    """Validate real-valued targets (e.g. one-hot rows) and reshape them to ``[n, k]``.

    ``z`` needs ``n * k`` entries; ``k`` defaults to 1 for a 1-D ``z``, else ``z.shape[-1]``.

    Args:
        z: targets, ``[n]`` or ``[..., k]``.
        n: number of samples (feature rows).
        name: argument name used in messages.
        k: number of target columns, if known.
        whole_dataset: also reject what only makes sense for a full data set: targets that are
            constant over all samples ("a single class") and more columns than samples. Pass
            False for one batch of a streaming fit.
    """
    if not isinstance(z, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if k is None:
        k = 1 if z.ndim <= 1 else z.shape[-1]
    if z.numel() != n * k or n == 0:
        raise ValueError(
            f"{name} has shape {tuple(z.shape)}; need {n * max(k, 1)} entries ({n} samples "
            f"x k={k} columns)"
        )
    if whole_dataset and k > n:
        raise ValueError(f"more classes than samples: k={k} target columns for {n} samples")
    z2 = z.reshape(n, k)
    check_finite(z2, name)
    if whole_dataset and bool((z2 == z2[:1]).all()):
        raise ValueError(f"{name} is constant over all samples (a single class): nothing to fit")
    return z2
