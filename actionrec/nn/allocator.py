"""Keep freed memory in the process for the next training step (glibc's malloc on Linux).

A training step allocates and frees the same large arrays (layer outputs, gradients, per-chunk
scratch) every step. By default glibc hands large freed blocks back to the kernel (``munmap``, or a
trim of the heap top), so the next step's arrays start on fresh pages and every page costs a fault
when first written: on the project's virtual machines a MNIST step at batch 128 took 2,900-3,900
faults and 9-17 ms of system time out of 48-64 ms. Raising malloc's trim threshold and its mmap
threshold (to glibc's maximum, 32 MiB) keeps those blocks for reuse: 60-160 faults, 40-43 ms
(``docs/benchmarks.md``). Arrays above 32 MiB still come from ``mmap``.

The cost is that the process keeps its peak heap after a step rather than returning it, which is what
a training loop wants. Elsewhere (not glibc, not Linux) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at HEAP_MAX_SIZE / 2: 32 MiB on 64-bit systems.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_done = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (once per process); True where it applied.

    Both thresholds are set together: setting either one turns off glibc's own adjustment of the
    other, and a trim threshold alone would leave the mmap threshold at 128 KiB (every large array
    mapped afresh: measured 40,000 faults per MNIST step).
    """
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                    TRIM_THRESHOLD))
    return _done
