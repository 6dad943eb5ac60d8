"""Checking the numbers a user gives (options, list items, file entries) before any work.

Python's ``float`` accepts ``nan``, ``inf`` and ``1e999`` (infinite), and ``int(inf)`` raises ``OverflowError``
far from the option that caused it; every number read from the user goes through :func:`check_number` or
:func:`parse_number`, which refuse those (and values out of range) with one line naming the option.
"""

from __future__ import annotations

import math

from dcnn.errors import InputError

__all__ = ["check_number", "parse_number"]


def _bounds(kind: str, minimum: float | None, above: float | None, maximum: float | None) -> str:
    """The accepted range in words, e.g. ``"a finite number at least 1"`` or ``"an integer at least 0"``."""
    def number(bound: float) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"  # an integer bound in full, not 2.14748e+09

    parts = []
    if minimum is not None:
        parts.append(f"at least {number(minimum)}")
    if above is not None:
        parts.append(f"above {number(above)}")
    if maximum is not None:
        parts.append(f"at most {number(maximum)}")
    return " ".join([kind, " and ".join(parts)]) if parts else kind


def check_number(value: float, name: str, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None) -> float:
    """``value`` if it is finite and within the bounds, else an :class:`InputError` naming ``name``.

    Parameters
    ----------
    value : float or int
        The number given.
    name : str
        The option (``"--jitter"``) or file entry the number comes from, for the message.
    minimum, above, maximum : float, optional
        Inclusive lower bound, exclusive lower bound and inclusive upper bound.

    Raises
    ------
    InputError
        If ``value`` is NaN, infinite or out of bounds.
    """
    if not math.isfinite(value) or (minimum is not None and value < minimum) or \
            (above is not None and value <= above) or (maximum is not None and value > maximum):
        kind = "an integer" if isinstance(value, int) else "a finite number"
        raise InputError(f"{name} must be {_bounds(kind, minimum, above, maximum)}, got {value!r}")
    return value


def parse_number(text: str, name: str, *, integer: bool = False, minimum: float | None = None,
                 above: float | None = None, maximum: float | None = None) -> float | int:
    """``text`` as a checked number (an ``int`` when ``integer``); see :func:`check_number` for the bounds.

    Raises
    ------
    InputError
        If ``text`` is not a number (an integer when ``integer``), or the number is refused by :func:`check_number`.
    """
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise InputError(f"{name} takes {kind}, got {text!r}") from None
    return check_number(value, name, minimum=minimum, above=above, maximum=maximum)
