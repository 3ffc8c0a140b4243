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
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from actionrec.backend import get_array_module

WORKERS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_pool = None
_blas = None


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded in the process (numpy's OpenBLAS)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415 (only the CPU path needs it)
        _blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    return _blas


_held = 0  # depth of the one_blas_thread blocks open now (inner ones change nothing)


@contextlib.contextmanager
def one_blas_thread(xp=np):
    """BLAS limited to one thread inside the block (no-op for CuPy). Costs about 3 us: the library's
    own get/set calls, where ``ThreadpoolController.limit`` took 9 us; inside another such block
    (``Trainer`` holds one around each training step, which enters about a hundred) nothing at all."""
    global _held
    if xp is not np or _held:
        yield
        return
    libraries = _blas_libraries()
    before = [lib.get_num_threads() for lib in libraries]
    for lib in libraries:
        lib.set_num_threads(1)
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        for lib, threads in zip(libraries, before):
            lib.set_num_threads(threads)


def map_chunks(xp, work, chunks):
    """[work(*chunk) for chunk in chunks], spread over WORKERS threads on the CPU, in order.

    The calling thread works too, taking chunks from the same queue as WORKERS - 1 pool threads, and
    does not wait for a helper that never got to start (the caller took every chunk): a hand-off
    costs tens of microseconds and a training step makes dozens.
    """
    global _pool
    chunks = list(chunks)
    if xp is not np or WORKERS == 1 or len(chunks) == 1:
        return [work(*c) for c in chunks]
    if _pool is None:
        _pool = ThreadPoolExecutor(WORKERS - 1, thread_name_prefix="actionrec")
    results = [None] * len(chunks)
    order = iter(range(len(chunks)))
    lock = threading.Lock()

    def drain():
        while True:
            with lock:
                index = next(order, None)
            if index is None:
                return
            results[index] = work(*chunks[index])

    with one_blas_thread(xp):
        helpers = [_pool.submit(drain) for _ in range(min(WORKERS, len(chunks)) - 1)]
        try:
            drain()
        finally:
            for helper in helpers:  # one that has not started finds nothing left: cancel, do not wait
                if not helper.cancel():
                    helper.result()  # waits, and re-raises a helper's error
    return results


def sum_parts(parts):
    """Totals of per-chunk partial results: parts [(a, b, ...)] from ``map_chunks`` -> (sum of the a,
    sum of the b, ...), added in place into the first chunk's arrays (a weight and a bias gradient
    summed over the chunks of a batch)."""
    totals = tuple(parts[0])
    for part in parts[1:]:
        for total, value in zip(totals, part):
            total += value
    return totals


# Element-wise work below this many elements runs on one thread: the hand-off costs more than it
# saves. On the project's virtual machines waking the second thread takes 40-70 us (its vCPU halts
# when idle), while one thread passes over 1M float32 values in about 100 us: from 256K to 1M values
# two threads ran 1.1-2.4x slower (BatchNorm + ReLU on CIFAR's 128 maps of 8 x 8 at batch 32: 0.54
# ms on one thread, 1.27 ms on two; AMD EPYC family 26). CIFAR step at batch 32: 1.03x against 1 << 18.
_PARALLEL_ELEMENTS = 1 << 20


def item_chunks(xp, n: int, per_item: int, budget: int):
    """[(n0, n1)] chunks of a batch of ``n`` items: whole items, at most about ``budget`` elements of
    per-item work each, of nearly equal sizes, and as many as a multiple of WORKERS when there are
    enough items (32 items in chunks of at most 10: four of 8, not 10, 10, 10, 2, which leaves a core
    idle). CuPy: one chunk, the device parallelises each call itself."""
    if xp is not np:
        return [(0, n)]
    most = max(1, budget // max(per_item, 1))
    count = min(n, WORKERS * -(-n // (WORKERS * most)))
    bounds = [i * n // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def item_blocks(start: int, end: int, a, elements: int, buffer: bool = True):
    """[(a0, a1, scratch)] blocks of whole items of ``a`` covering start..end, about ``elements``
    elements each (at least one item), so that passes after the first over a block find it in the
    cache; each comes with a scratch array of the block's shape and memory layout (one buffer,
    reused; None when ``buffer`` is False)."""
    xp = get_array_module(a)
    per_item = max(1, a[:1].size)
    step = max(1, min(end - start, elements // per_item))
    scratch = xp.empty_like(a[:step]) if buffer else None
    for s in range(start, end, step):
        e = min(end, s + step)
        yield s, e, None if scratch is None else scratch[:e - s]


def over_batch(xp, work, n: int, size: int):
    """[work(start, end)] over WORKERS slices of a batch of ``n`` items (one call, work(0, n), for
    small work of ``size`` elements in all, a batch of one, or CuPy). Slices are whole items."""
    if xp is not np or WORKERS == 1 or size < _PARALLEL_ELEMENTS or n < 2:
        with one_blas_thread(xp):  # as in the chunks: a product in ``work`` never wakes BLAS's threads
            return [work(0, n)]
    step = -(-n // WORKERS)
    return map_chunks(xp, work, [(s, min(n, s + step)) for s in range(0, n, step)])


def elementwise(xp, fn, out, *arrays):
    """fn(*pieces, out=out_piece) over WORKERS slices of the batch axis (one call for small or CuPy arrays).

    ``out`` and every array share the batch axis 0 and shape; fn is a ufunc-like callable with ``out``.
    """
    def work(s, e):
        fn(*(a[s:e] for a in arrays), out=out[s:e])

    over_batch(xp, work, out.shape[0], out.size)
    return out


# Products below this many multiply-adds run as one call: splitting them gains less than the hand-off.
# MNIST's dense layer at batch 32 (32 x 1024 x 128, 4M): forward + backward 0.64 ms split, 0.36 ms in
# one call; at 16M equal, at 26M (3136 x 256) splitting wins, 1.60 against 2.10 ms (Intel Xeon VM).
_PARALLEL_MACS = 1 << 24


def matmul(xp, a, b):
    """a (M, K) @ b (K, P) -> (M, P), rows of ``a`` (or, when P > M, columns of ``b``) split over
    WORKERS threads with one BLAS thread each (small products: one call on one BLAS thread; CuPy:
    one call).

    Keeps OpenBLAS's own threads out of the way: they stall for tens of milliseconds when the cores are
    busy with other work (a 1024 x 256 dense layer measured at 38 ms instead of 1 ms).
    """
    if xp is not np:
        return a @ b
    m = a.shape[0]
    out = np.empty((m, b.shape[1]), dtype=np.result_type(a, b))
    if WORKERS == 1 or m < 2 or m * a.shape[1] * b.shape[1] < _PARALLEL_MACS:
        with one_blas_thread(xp):
            np.matmul(a, b, out=out)
        return out
    p = b.shape[1]
    if m >= p:
        step = -(-m // WORKERS)

        def work(s, e):
            np.matmul(a[s:e], b, out=out[s:e])

        map_chunks(xp, work, [(s, min(m, s + step)) for s in range(0, m, step)])
        return out
    # few rows (a dense layer at batch 32): split the columns of b instead, so each core reads its own
    # part of the weights (a 3136 x 256 layer: 0.61 against 0.79 ms forward on this machine)
    step = -(-p // WORKERS)

    def work_columns(s, e):
        np.matmul(a, b[:, s:e], out=out[:, s:e])

    map_chunks(xp, work_columns, [(s, min(p, s + step)) for s in range(0, p, step)])
    return out
