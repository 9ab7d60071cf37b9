"""Click parameter conversions shared by several commands."""

from __future__ import annotations

import re

import click

_SIZE = re.compile(r"(?i)\s*(\d+)\s*(b|k|kib|m|mib|g|gib|t|tib)?\s*")
_FACTORS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

SECONDS = click.FloatRange(min=0)

_DURATION = re.compile(r"(?i)\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|h|d)?\s*")
_DURATION_FACTORS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
TTL_FORMATS = "seconds, or a number with s, m, h or d (90m, 12h, 7d); 0 expires at the next gc"


def ttl_seconds(_ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``3600``, ``90m``, ``12h``, ``7d``, ``0``: a duration in seconds, as the library takes it."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration: {TTL_FORMATS}", param=param)
    return float(match[1]) * _DURATION_FACTORS[(match[2] or "").lower()]


def byte_size(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``1048576``, ``512M``, ``2GiB``: binary units, as the human output shows them.

    A callback rather than a ``click.ParamType``, whose generic signature differs
    between the click versions pyproject allows.
    """
    if value is None:
        return None
    match = _SIZE.fullmatch(value)
    if not match or int(match[1]) <= 0:
        raise click.BadParameter(
            f"{value!r} is not a positive size like 1048576, 512M or 2GiB", param=param
        )
    return int(match[1]) * _FACTORS[(match[2] or "").lower()[:1]]
