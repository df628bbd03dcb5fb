"""Checks of scalar parameters, with one wording for every error: "``name`` must be ...; got ...".

Every public function and configuration object checks its options through these, so that a wrong value fails
at once, with the parameter's name and the value given, instead of deep inside a computation. ``bool`` is
refused wherever a number is meant: ``True`` is an ``int`` to Python, but ``bins=True`` is always a mistake.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["check_int", "check_float", "check_bool", "check_choice"]


def _fail(name: str, what: str, value: Any, error: Callable[[str], Exception] = ValueError) -> Exception:
    return error(f"{name} must be {what}; got {value!r}")


def check_int(value: Any, name: str, *, minimum: Optional[int] = None, maximum: Optional[int] = None,
              what: Optional[str] = None, error: Callable[[str], Exception] = ValueError) -> int:
    """An integer (Python or numpy, not ``bool``) within ``[minimum, maximum]``, returned as ``int``.

    Parameters
    ----------
    value : Any
        The value to check.
    name : str
        The parameter's name, for the message.
    minimum, maximum : int, optional
        Inclusive bounds.
    what : str, optional
        Replaces the generated description in the message (e.g. ``"a positive integer (the number of bins)"``).
    error : exception class or callable, default ValueError
        Makes what is raised from the message (``TypeError``, or a caller's own error class where callers expect
        one; a function where that error takes more than the message).

    Returns
    -------
    int

    Raises
    ------
    ValueError
        ``"name must be an integer >= minimum; got value"``.
    """
    if what is None:
        bounds = [f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else ""]
        what = " ".join(["an integer", " and ".join(b for b in bounds if b)]).strip()
    if isinstance(value, (bool, np.bool_)):
        raise _fail(name, what, value, error)
    try:
        # operator.index accepts exactly the integer types (numpy and torch integer scalars included).
        v = operator.index(value)
    except TypeError:
        raise _fail(name, what, value, error) from None
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise _fail(name, what, value, error)
    return v


def check_float(value: Any, name: str, *, positive: bool = False, minimum: Optional[float] = None,
                finite: bool = True, what: Optional[str] = None, error: Callable[[str], Exception] = ValueError) -> float:
    """A real number (not ``bool``), returned as ``float``.

    Parameters
    ----------
    value : Any
        The value to check: an ``int``, ``float``, numpy scalar or 0-d array.
    name : str
        The parameter's name, for the message.
    positive : bool, default False
        Require ``value > 0``.
    minimum : float, optional
        Require ``value >= minimum``.
    finite : bool, default True
        Refuse NaN and infinities (with False, NaN still fails ``positive`` and ``minimum``).
    what : str, optional
        Replaces the generated description in the message.
    error : exception class, default ValueError
        What to raise.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        ``"name must be a positive finite number; got value"``.
    """
    if what is None:
        what = " ".join(w for w in ("a", "positive" if positive else "", "finite" if finite else "", "number") if w)
        if minimum is not None:
            what += f" >= {minimum}"
    if isinstance(value, (bool, np.bool_)):
        raise _fail(name, what, value, error)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d numpy arrays and torch tensors
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, what, value, error)
    v = float(value)
    if (finite and not math.isfinite(v)) or (positive and not v > 0) or (
            minimum is not None and not v >= minimum):
        raise _fail(name, what, value, error)
    return v


def check_bool(value: Any, name: str) -> bool:
    """``True`` or ``False`` (a numpy bool too), returned as ``bool``; ``0``, ``1`` and strings are refused.

    Raises
    ------
    ValueError
        ``"name must be True or False; got value"``.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, "True or False", value)
    return bool(value)


def check_choice(value: Any, name: str, choices: Sequence) -> Any:
    """One of ``choices`` (compared with ``==``), returned unchanged.

    Raises
    ------
    ValueError
        ``"name must be one of ['a', 'b']; got value"``.
    """
    choices = list(choices)
    if isinstance(value, (bool, np.bool_)) and not any(isinstance(c, bool) for c in choices):
        raise _fail(name, f"one of {choices}", value)
    try:
        ok = any(value is c or (isinstance(value, type(c)) and bool(value == c)) for c in choices)
    except (TypeError, ValueError, RuntimeError):  # an unhashable or uncomparable value is not a choice
        ok = False
    if not ok:
        raise _fail(name, f"one of {choices}", value)
    return value
