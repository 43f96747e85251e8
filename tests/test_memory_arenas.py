"""Issue 30: a sync's peak memory does not grow with the width its pace reaches.

glibc gives each new thread that allocates its own malloc arena (up to 8 per core), and each arena keeps what its
threads freed; the runtime caps them (`shared.memory.bound_large_buffers`, called by every Runtime). Counted in a
fresh interpreter through glibc's own `malloc_info` report: one `<heap nr=...>` per arena.
"""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest

from shared.memory import MALLOC_ARENAS

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and ctypes.util.find_library("c")),
                                reason="glibc's malloc arenas (Linux)")

PROBE = r"""
import ctypes, ctypes.util, re, threading
from shared.memory import bound_large_buffers

libc = ctypes.CDLL(ctypes.util.find_library("c"))
if not hasattr(libc, "malloc_info"):
    print("no-glibc")
    raise SystemExit(0)
print("bound" if bound_large_buffers() else "not-bound")
ready = threading.Barrier(16)

def work():
    ready.wait()
    for _ in range(200):
        held = [bytearray(4096) for _ in range(20)]  # above pymalloc's 512 bytes: glibc's malloc, on this thread
        del held

threads = [threading.Thread(target=work) for _ in range(16)]  # a sync's pool at width 16
for t in threads:
    t.start()
for t in threads:
    t.join()
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
libc.open_memstream.restype = ctypes.c_void_p
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info(0, stream)
libc.fclose(stream)
print("arenas", len(re.findall(r"<heap nr=", ctypes.string_at(buf, size.value).decode())))
"""


def test_sixteen_pool_threads_share_the_capped_arenas():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = done.stdout.split()
    if lines[0] == "no-glibc":
        pytest.skip("not glibc")
    assert lines[0] == "bound", done.stdout
    arenas = int(lines[-1])
    assert 1 <= arenas <= MALLOC_ARENAS, done.stdout  # before the cap: 16, one per thread (2 cores x 8)
