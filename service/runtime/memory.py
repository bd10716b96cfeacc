"""Give memory back to the system after a large call.

A call of 256 long texts allocates hundreds of MB (token ids, encodings, feeds) in many
small blocks; glibc keeps freed blocks in its heaps, so the process RSS stays near the peak
long after the call. `trim()` asks glibc to return free memory (malloc_trim); elsewhere (or
without glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def trim() -> bool:
    """Return freed heap memory to the system; whether anything was released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
