"""Allocator tuning for training processes (called by the CLI and the benchmark, never on import).

A training step allocates and frees the same large temporaries (im2col matrices,
activations) every step. glibc serves blocks above its mmap threshold with fresh mmap
calls and returns them to the OS on free, so every step pays page faults on tens of
megabytes. Keeping freed memory in the heap instead makes the next step reuse it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4


def tune_malloc() -> bool:
    """Keep freed large blocks for reuse (glibc only); returns whether it applied.

    ``M_MMAP_MAX=0`` serves every block from the heap, ``M_TRIM_THRESHOLD=1 GiB`` stops
    free() from returning the top of the heap to the OS, ``M_TOP_PAD=256 MiB`` grows the
    heap in large steps. Elsewhere (macOS, musl, Windows) this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    ok &= mallopt(M_TOP_PAD, 256 << 20) == 1
    return bool(ok)
