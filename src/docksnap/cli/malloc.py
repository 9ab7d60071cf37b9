"""Process-wide allocator tuning for the ``docksnap`` command (never the library).

glibc gives every thread that allocates its own arena, up to 8 per core, and an
arena keeps the memory it freed. The store's io pool moves ~1 MiB pieces on
many threads, so each thread's arena settles at tens of MiB that RSS never
gives back: 1 GiB through ``docksnap serve`` peaked at 263 MiB with the default
and 178 MiB with one arena per core, at the same speed (``tests/http/test_memory.py``).
A library must not change its host process's allocator, so only the console
script calls this.
"""

from __future__ import annotations

import ctypes
import os

_M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas() -> None:
    """One arena per core; a no-op where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # musl and macOS have no mallopt
        return
    mallopt(_M_ARENA_MAX, max(2, os.cpu_count() or 1))
