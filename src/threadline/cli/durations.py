"""Durations and counts as people type them: ``30s``, ``15m``, ``2h``, ``7d``, ``1w``,
``1h30m``; ``none`` (or ``never``) for "no limit". Bad text is a usage error (exit 2)."""

from __future__ import annotations

import re
from datetime import timedelta

import typer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_NONE = frozenset({"none", "never", "off"})

#: Parsed "none": distinct from an option that was not given (None).
NEVER = "never"


def parse_duration(text: str) -> timedelta | str:
    """``7d`` -> timedelta(days=7); ``none``/``never`` -> :data:`NEVER`. Raises typer.BadParameter."""
    value = text.strip().lower()
    if value in _NONE:
        return NEVER
    if value.startswith("-"):
        raise typer.BadParameter(f"{text!r}: a duration cannot be negative")
    if not value or _PART.sub("", value):
        raise typer.BadParameter(
            f"{text!r} is not a duration; use a number and a unit (s, m, h, d, w): 30s, 15m, 2h, 7d, 1h30m, "
            "or 'none' for never"
        )
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    return timedelta(seconds=seconds)


def parse_count(text: str) -> int | str:
    """A positive whole number, or ``none`` (:data:`NEVER`: no limit). Raises typer.BadParameter."""
    value = text.strip().lower()
    if value in _NONE:
        return NEVER
    try:
        number = int(value)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number (or 'none' for no limit)") from None
    if number < 1:
        raise typer.BadParameter(f"{text!r}: the count must be at least 1 (or 'none' for no limit)")
    return number


def format_duration(delta: timedelta | None) -> str:
    """``timedelta(days=1, hours=2)`` -> ``1d2h``; None -> ``never``."""
    if delta is None:
        return "never"
    total = delta.total_seconds()
    if total == 0:
        return "0s"
    whole = int(total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    fraction = total - int(total)
    if whole or fraction:
        parts.append(f"{whole + fraction:g}s")
    return "".join(parts)
