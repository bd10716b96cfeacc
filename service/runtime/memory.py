"""Give memory back to the system after a large call.

A call of 256 long texts allocates hundreds of MB (token ids, encodings, feeds) in many
small blocks; glibc keeps freed blocks in its heaps, so the process RSS stays near the peak
long after the call. `trim()` asks glibc to return free memory (malloc_trim), after a
garbage collection if asked; elsewhere (or without glibc) the trim does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
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


def trim(collect: bool = False) -> bool:
    """Return freed heap memory to the system (`collect`: after a garbage collection, so
    that objects only cycles kept are freed first); whether anything was released."""
    if collect:
        gc.collect()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
