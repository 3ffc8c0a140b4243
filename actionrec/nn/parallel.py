"""Using both (all) CPU cores from numpy: independent chunks on one Python thread per core.

numpy releases the GIL in copies, ufuncs and BLAS calls, so chunks of a layer's work (items of a batch)
run truly in parallel on threads. Meanwhile BLAS is held to one thread: OpenBLAS's own threads spin and
stall badly when the cores are shared with other processes (a 0.2 ms product measured at 50-200 ms on
a loaded 2-core machine), and one thread per core is all the machine has anyway. CuPy arrays run
serially: the GPU parallelises each call itself.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

WORKERS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_pool = None
_blas = None


def _controller():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 (only the CPU path needs it)

        _blas = ThreadpoolController()
    return _blas


@contextlib.contextmanager
def one_blas_thread(xp=np):
    """BLAS limited to one thread inside the block (no-op for CuPy). Costs a few microseconds."""
    if xp is not np:
        yield
        return
    with _controller().limit(limits=1, user_api="blas"):
        yield


def map_chunks(xp, work, chunks):
    """[work(*chunk) for chunk in chunks], spread over WORKERS threads on the CPU, in order."""
    global _pool
    chunks = list(chunks)
    if xp is not np or WORKERS == 1 or len(chunks) == 1:
        return [work(*c) for c in chunks]
    if _pool is None:
        _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="actionrec")
    with one_blas_thread(xp):
        return list(_pool.map(lambda c: work(*c), chunks))


# Element-wise work below this many elements runs on one thread: the hand-off costs more than it saves.
_PARALLEL_ELEMENTS = 1 << 20


def elementwise(xp, fn, out, *arrays):
    """fn(*pieces, out=out_piece) over WORKERS slices of the batch axis (one call for small or CuPy arrays).

    ``out`` and every array share the batch axis 0 and shape; fn is a ufunc-like callable with ``out``.
    """
    n = out.shape[0]
    if xp is not np or WORKERS == 1 or out.size < _PARALLEL_ELEMENTS or n < 2:
        fn(*arrays, out=out)
        return out
    step = -(-n // WORKERS)

    def work(s, e):
        fn(*(a[s:e] for a in arrays), out=out[s:e])

    map_chunks(xp, work, [(s, min(n, s + step)) for s in range(0, n, step)])
    return out
