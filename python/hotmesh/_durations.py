"""Durations as users write them: seconds, timedelta, or text like "2 seconds", "5m", "1.5h"."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from hotmesh.errors import InvalidArgument, shown

Duration = float | int | str | timedelta

_UNITS = {
    "ms": 0.001,
    "msec": 0.001,
    "millisecond": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
}
_TEXT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-z]*?)s?\s*$")


def seconds(value: Duration, what: str = "duration") -> float:
    """The duration in seconds; InvalidArgument for negative, non-finite or unparsable input."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number of seconds, text or timedelta, not bool")
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:  # an int beyond any float (and maybe too long to print)
            raise InvalidArgument(f"{what} is too large to be a number of seconds") from None
    elif isinstance(value, str):
        match = _TEXT.match(value.lower())
        unit = match.group(2) if match else None
        if match is None or (unit not in _UNITS and unit != ""):
            raise InvalidArgument(
                f'{what} "{value}" is not a duration: use seconds, or text like "2 seconds", '
                '"5m", "1.5h", "7d"'
            )
        result = float(match.group(1)) * (_UNITS[unit] if unit else 1.0)
    else:
        raise InvalidArgument(
            f"{what} must be a number of seconds, text or timedelta, not {type(value).__name__}"
        )
    if not math.isfinite(result) or result < 0:
        raise InvalidArgument(f"{what} must be a finite number of seconds >= 0, not {shown(value)}")
    return result
