"""Argument checks shared by the public functions (STYLE.md rule 7: validate at the boundary).

Not a technique, so no paper: the small validators that let every public function check
its arguments once, at its top, in one line each. A value of the wrong type raises
``TypeError``, a value out of range ``ValueError``; both messages name the argument, show
the value and say what is allowed, e.g. ``bits must be an int in [1, 8], got 0``.

The checks only look: they return nothing and never convert a value, so a valid call
computes exactly what it computed without them. ``bool`` is not accepted as a number
(``True`` is an ``int`` to Python, never a width or a rate to a reader); numpy's integer,
float and bool scalars are accepted where Python's are.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["is_int", "is_real", "check_int", "check_float", "check_bool", "check_str", "check_instance",
           "check_module", "check_tensor", "check_array", "check_callable", "check_path",
           "check_file", "check_sequence", "check_ints", "check_mapping"]


def _show(value) -> str:
    """A short description of ``value`` for a message (a tensor by its shape, not its data)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, nn.Module):
        return f"a {type(value).__name__} module"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _got(value) -> str:
    return f"got {type(value).__name__}: {_show(value)}"


def _interval(low, high, low_open: bool = False, high_open: bool = False) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _in_range(value, low, high, low_open: bool = False, high_open: bool = False) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    if high is not None and (value >= high if high_open else value > high):
        return False
    return True


def is_int(value) -> bool:
    """An integer that is not a bool (Python's or numpy's)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A real number that is not a bool (int or float, Python's or numpy's)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value, low: int | None = None, high: int | None = None, *,
              none: bool = False) -> None:
    """``value`` is an int in ``[low, high]`` (either bound may be None), or None if ``none``."""
    if none and value is None:
        return
    what = f"an int{_interval(low, high)}" + (" or None" if none else "")
    if not is_int(value):
        raise TypeError(f"{name} must be {what}, {_got(value)}")
    if not _in_range(value, low, high):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_float(name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, none: bool = False,
                finite: bool = True) -> None:
    """``value`` is a real number (an int is fine) in the interval, not NaN and, unless
    ``finite=False``, not infinite; or None if ``none``."""
    if none and value is None:
        return
    what = (f"a {'finite ' if finite else ''}number{_interval(low, high, low_open, high_open)}"
            + (" or None" if none else ""))
    if not is_real(value):
        raise TypeError(f"{name} must be {what}, {_got(value)}")
    if math.isnan(value) or (finite and math.isinf(value)) \
            or not _in_range(value, low, high, low_open, high_open):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_bool(name: str, value, *, none: bool = False) -> None:
    """``value`` is True or False (or numpy's bool), or None if ``none``."""
    if none and value is None:
        return
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False{' or None' if none else ''}, "
                        f"{_got(value)}")


def check_str(name: str, value, choices=None, *, none: bool = False,
              empty: bool = False) -> None:
    """``value`` is a str, one of ``choices`` when given, non-empty unless ``empty``; or
    None if ``none``."""
    if none and value is None:
        return
    if not isinstance(value, str):
        what = f"one of {sorted(choices)}" if choices is not None else "a str"
        raise TypeError(f"{name} must be {what}{' or None' if none else ''}, {_got(value)}")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    if not empty and not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")


def check_instance(name: str, value, types, what: str | None = None, *,
                   none: bool = False) -> None:
    """``value`` is an instance of ``types`` (described as ``what``), or None if ``none``."""
    if none and value is None:
        return
    if not isinstance(value, types):
        if what is None:
            names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
            what = "a " + " or ".join(names)
        raise TypeError(f"{name} must be {what}{' or None' if none else ''}, {_got(value)}")


def check_module(name: str, value, types=nn.Module, *, none: bool = False) -> None:
    """``value`` is an ``nn.Module`` (or one of the module classes ``types``)."""
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    what = " or ".join(f"an nn.{n}" if hasattr(nn, n) else f"a {n}" for n in names)
    check_instance(name, value, types, what, none=none)


def check_tensor(name: str, value, ndim=None, *, none: bool = False,
                 floating: bool = False, integer: bool = False,
                 nonempty: bool = False) -> None:
    """``value`` is a ``torch.Tensor``; with ``ndim`` (an int or a tuple of ints) of that
    many dimensions; floating-point if ``floating``, of an integer dtype if ``integer``;
    with at least one element if ``nonempty``. None passes if ``none``."""
    if none and value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{' or None' if none else ''}, "
                        f"{_got(value)}")
    _check_shape_dtype(name, value, ndim, floating, integer, nonempty, "tensor")


def check_array(name: str, value, ndim=None, *, none: bool = False,
                integer: bool = False, nonempty: bool = False) -> None:
    """``value`` is a numpy array or a ``torch.Tensor`` (see :func:`check_tensor`)."""
    if none and value is None:
        return
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a numpy array or a torch.Tensor"
                        f"{' or None' if none else ''}, {_got(value)}")
    _check_shape_dtype(name, value, ndim, False, integer, nonempty, "array")


def _check_shape_dtype(name, value, ndim, floating, integer, nonempty, kind) -> None:
    if ndim is not None:
        allowed = ndim if isinstance(ndim, tuple) else (ndim,)
        if value.ndim not in allowed:
            dims = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name} must be a {dims}-D {kind}, got shape "
                             f"{tuple(value.shape)}")
    if floating and not torch.is_floating_point(value):
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if integer:
        dtype = value.dtype
        ok = (not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
              if isinstance(value, torch.Tensor) else np.issubdtype(dtype, np.integer))
        if not ok:
            raise TypeError(f"{name} must hold integers, got {dtype}")
    if nonempty and (value.size if isinstance(value, np.ndarray) else value.numel()) == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")


def check_callable(name: str, value, *, none: bool = False) -> None:
    """``value`` can be called (a function, a class, a module), or None if ``none``."""
    if none and value is None:
        return
    if not callable(value):
        raise TypeError(f"{name} must be callable{' or None' if none else ''}, "
                        f"{_got(value)}")


def check_path(name: str, value, *, none: bool = False) -> None:
    """``value`` is a non-empty str or an ``os.PathLike`` (a ``pathlib.Path``)."""
    if none and value is None:
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or pathlib.Path)"
                        f"{' or None' if none else ''}, {_got(value)}")
    if isinstance(value, str) and not value:
        raise ValueError(f"{name} must be a non-empty path, got ''")


def check_file(name: str, value, mode: str) -> None:
    """``value`` is a path (see :func:`check_path`) or a binary file object open for
    ``mode`` (``"read"`` or ``"write"``)."""
    if isinstance(value, (str, os.PathLike)):
        check_path(name, value)
    elif not callable(getattr(value, mode, None)):
        raise TypeError(f"{name} must be a path or a binary file open for {mode}ing, "
                        f"{_got(value)}")


def check_sequence(name: str, value, item=None, *, none: bool = False,
                   nonempty: bool = False, what: str | None = None) -> None:
    """``value`` is a list or tuple (not a str), of items of the types ``item`` when
    given; with at least one item if ``nonempty``."""
    if none and value is None:
        return
    what = what or ("a list or tuple" if item is None else
                    f"a list or tuple of {item.__name__ if isinstance(item, type) else item}")
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be {what}{' or None' if none else ''}, {_got(value)}")
    if nonempty and not value:
        raise ValueError(f"{name} must be a non-empty list or tuple, got {value!r}")
    if item is not None:
        for v in value:
            if not isinstance(v, item) or (item in (int, float) and isinstance(v, bool)):
                raise TypeError(f"{name} must be {what}, got an item {_show(v)}")


def check_ints(name: str, value, low: int | None = None, high: int | None = None, *,
               length: int | None = None, none: bool = False,
               nonempty: bool = True) -> None:
    """``value`` is a list or tuple of ints in ``[low, high]``, of ``length`` items when
    given (else at least one unless ``nonempty=False``); e.g. a shape or a list of widths."""
    if none and value is None:
        return
    count = f"{length} " if length is not None else ""
    what = f"a list or tuple of {count}ints{_interval(low, high)}"
    if not isinstance(value, (list, tuple, torch.Size)):
        raise TypeError(f"{name} must be {what}{' or None' if none else ''}, {_got(value)}")
    if not all(is_int(v) for v in value):
        raise TypeError(f"{name} must be {what}, got {_show(value)}")
    if (length is not None and len(value) != length) or (length is None and nonempty
                                                          and not value) \
            or not all(_in_range(v, low, high) for v in value):
        raise ValueError(f"{name} must be {what}, got {_show(value)}")


def check_mapping(name: str, value, *, none: bool = False, nonempty: bool = False,
                  what: str = "a dict") -> None:
    """``value`` is a mapping (a dict), non-empty if ``nonempty``; or None if ``none``."""
    if none and value is None:
        return
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be {what}{' or None' if none else ''}, {_got(value)}")
    if nonempty and not value:
        raise ValueError(f"{name} must be a non-empty {what.removeprefix('a ')}, got {{}}")
