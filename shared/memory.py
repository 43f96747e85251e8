"""Keeps a long copy's memory bounded in every entry point (`sync`, `send`, the functions).

A copy holds a few blocks of BLOCK_SIZE at a time, but glibc raises its mmap threshold each time a large buffer is
freed (up to 32 MiB), after which 8 MiB blocks come from the heap of each thread's arena and stay there: a sync
that copies on its pool threads (one arena each) ended at 172 MiB for a 300 MiB export instead of ~125 MiB. A
fixed threshold sends every buffer of 1 MiB or more straight to mmap, so a freed block goes back to the system at
once. Elsewhere (no glibc: macOS, Windows, musl) this does nothing.

The same call caps glibc's malloc arenas at MALLOC_ARENAS. glibc gives each new thread that allocates an arena of its
own, up to 8 per core, and each keeps what its threads freed, so a sync's pool spread its memory over 16 of them.
The GIL lets one thread run Python at a time, so two arenas are contended little. (A sync's peak memory follows the
widest width its pace reached, about 0.3 MiB per small delivery in flight, which no allocator setting changed:
issue 30, bench/README.md.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h); a fixed value also turns the dynamic one off
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h): the most arenas threads may spread over
LARGE_BUFFER_BYTES = 1024 * 1024
MALLOC_ARENAS = 2

_done = False
_lock = threading.Lock()


def bound_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Make buffers of `threshold` bytes or more mmap'd (freed at once) for this process; True when glibc took it.
    Idempotent and cheap: the runtime calls it once per process."""
    global _done
    with _lock:
        if _done:
            return True
        name = ctypes.util.find_library("c")
        if not name:
            return False
        try:
            mallopt = ctypes.CDLL(name).mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _done = mallopt(M_MMAP_THRESHOLD, threshold) == 1
        if _done:
            mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        return _done
