"""keep_freed_memory: freed large arrays are reused, not re-faulted (Linux with glibc).

The allocator setting is process-wide, so each measurement runs in a fresh interpreter.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt thresholds are glibc's (Linux)")

# A step-like pattern: six arrays of 2-30 MiB (72 MiB) written page by page, then all freed; the
# minor page faults per cycle after two warm-up cycles are printed.
_CYCLES = """
import resource, sys
import numpy as np
from actionrec.nn.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() is True and keep_freed_memory() is True
def cycle():
    arrays = []
    for mib in (9, 2, 17, 5, 9, 30):
        a = np.empty((mib << 20) // 4, dtype=np.float32)
        a[::1024] = 1.0  # one write per 4 KiB page
        arrays.append(a)
    del arrays
for _ in range(2):
    cycle()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5)
"""


def _faults_per_cycle(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CYCLES, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_freed_arrays_are_reused_without_page_faults():
    default = _faults_per_cycle("default")
    if default < 1000:
        pytest.skip(f"this malloc already reuses the memory ({default:.0f} faults per cycle)")
    assert _faults_per_cycle("keep") < 100 < default  # default glibc: ~3,000 (the heap is trimmed)
