"""Every option of the public API, checked in one place with one error type.

The service validates options here, at its boundary, before anything is read,
created or stored; a bad value raises :class:`~docksnap.errors.InvalidArgumentError`
naming the option and the value. Stores below trust what they receive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from docksnap.errors import InvalidArgumentError


def _whole(value: object, rule: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an integer within the bounds; else the error, stating ``rule``."""
    # bool is an int to Python; a size of True is a caller's bug, not 1 byte.
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise InvalidArgumentError(f"{rule}, got {value!r}")
    return value


def _non_negative(value: object, rule: str) -> float:
    """``value`` as a float if it is a finite number >= 0; else the error, stating ``rule``."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidArgumentError(f"{rule}, got {value!r}")
    return float(value)


def size_limit(value: object) -> int:
    """A snapshot's maximum tar stream length in bytes: a positive integer."""
    return _whole(value, "size_limit must be a positive integer", minimum=1)


def spool_limit(value: object) -> int:
    """The most bytes a snapshot may spool while its store catches up: an integer >= 0."""
    return _whole(value, "spool_limit must be an integer >= 0", minimum=0)


def ttl(value: object) -> float | None:
    """Seconds of disuse after which a snapshot expires: ``None`` or a number >= 0.

    0 means "expired from the start": the next ``expire()`` (``docksnap gc``)
    deletes it. A negative or non-finite TTL is a mistake, not "expired".
    """
    if value is None:
        return None
    return _non_negative(value, "ttl must be a number of seconds >= 0")


def grace(value: object) -> float:
    """How young unreferenced data gc keeps, in seconds: a number >= 0."""
    return _non_negative(value, "grace must be >= 0 seconds")


def keep_last(value: object) -> int:
    """How many snapshots prune keeps: a non-negative integer."""
    return _whole(value, "keep_last must be a non-negative integer", minimum=0)


def snapshot_name(value: object) -> str | None:
    """A snapshot's label: ``None`` or a string."""
    if value is not None and not isinstance(value, str):
        raise InvalidArgumentError(f"snapshot name must be a string, got {value!r}")
    return value


def signal_number(value: object) -> int:
    """A signal to send to a container: an integer from 1 to 64."""
    return _whole(value, "signal must be an integer from 1 to 64", minimum=1, maximum=64)


def labels(value: object, reserved_prefix: str) -> dict[str, str]:
    """Extra labels for everything a client creates: strings, none under docksnap's prefix."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgumentError(f"labels must map strings to strings, got {value!r}")
    reserved = [key for key in value if key.startswith(reserved_prefix)]
    if reserved:
        raise InvalidArgumentError(
            f"labels under {reserved_prefix} are reserved for docksnap: {reserved}"
        )
    return dict(value)


def helper_image(value: object) -> str | None:
    """The image helper containers are made from: ``None`` or a non-empty string."""
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidArgumentError(f"helper_image must be a non-empty image name, got {value!r}")
    return value


RESTORE_CACHE_MODES = ("auto", "off")
_SIZE_TEXT = re.compile(r"(?i)\s*(\d+)\s*(b|k|kib|m|mib|g|gib|t|tib)?\s*")
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def restore_cache(value: object) -> str:
    """Whether restores go through the host's restore cache: ``"auto"`` or ``"off"``."""
    if value not in RESTORE_CACHE_MODES:
        raise InvalidArgumentError(
            f"restore_cache must be one of {', '.join(RESTORE_CACHE_MODES)}, got {value!r}"
        )
    return str(value)


def cache_size(value: object, *, source: str = "cache_size") -> int:
    """The restore cache's size limit in bytes: a positive integer, or a text such as
    ``10GiB`` / ``512M`` (binary units, as ``DOCKSNAP_CACHE_SIZE`` is written)."""
    if isinstance(value, str):
        match = _SIZE_TEXT.fullmatch(value)
        if match:
            value = int(match[1]) * _SIZE_FACTORS[(match[2] or "").lower()[:1]]
    return _whole(value, f"{source} must be a positive size in bytes (or like 10GiB)", 1)
