"""Keep a long-running server's memory flat: glibc's malloc arenas, and returning freed memory.

glibc gives threads their own malloc arenas, up to 8 per core; memory freed in one arena is not
reused by allocations from another thread, and freed pages in the middle of an arena stay in
the RSS. A server whose model threads (onnxruntime, CTranslate2, the executors) allocate and free
large buffers from many threads then grows in steps over hours and never gives the memory back
(a 30-minute soak grew 834 → 1425 MiB: docs/operations.md, "Soak"). Two arenas and a trim after
each call keep it at its working size. Both are no-ops where glibc is not the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def bound_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Call before threads start (arenas already made stay). True if glibc took it."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_ARENA_MAX, arenas))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX) refused")
    return ok


def trim() -> bool:
    """Give freed heap memory back to the OS (malloc_trim(0): the top and whole free pages
    inside each arena). A few ms on a large heap: run it off the event loop."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False
