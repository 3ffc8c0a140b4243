"""actionrec.nn.parallel: chunks and element-wise work spread over threads give the serial results."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.nn import parallel


def test_map_chunks_keeps_order_and_runs_every_chunk():
    chunks = [(s, s + 3) for s in range(0, 30, 3)]
    assert parallel.map_chunks(np, lambda a, b: (a, b, b - a), chunks) == [(a, b, 3) for a, b in chunks]


@pytest.mark.parametrize("chunks", [1, 2, 5])
def test_sum_parts_totals_each_position(chunks):
    rng = np.random.default_rng(chunks)
    parts = [(rng.standard_normal((3, 4)), rng.standard_normal(4)) for _ in range(chunks)]
    expected = [sum(p[i] for p in parts) for i in range(2)]
    totals = parallel.sum_parts(parts)
    assert len(totals) == 2
    for total, want in zip(totals, expected):
        np.testing.assert_allclose(total, want, rtol=1e-12)


@pytest.mark.parametrize("shape", [(2, 600, 1000), (5, 3), (1, 2_000_000)])
def test_elementwise_equals_one_call(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    out = parallel.elementwise(np, np.tanh, np.empty_like(x), x)
    np.testing.assert_array_equal(out, np.tanh(x))  # same ufunc on the same elements: bit for bit


def test_one_blas_thread_restores_the_limit():
    """numpy's own BLAS (the one our products use) runs on one thread inside the block, as before after."""
    from threadpoolctl import threadpool_info

    def numpy_blas_threads():
        return [i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas" and "numpy" in i["filepath"]]

    before = numpy_blas_threads()
    assert before
    with parallel.one_blas_thread(np):
        assert numpy_blas_threads() == [1] * len(before)
        with parallel.one_blas_thread(np):  # an inner block changes nothing, on entry or exit
            assert numpy_blas_threads() == [1] * len(before)
        assert numpy_blas_threads() == [1] * len(before)
    assert numpy_blas_threads() == before
    assert parallel._held == 0


# the last two are split: by rows of a (M >= P) and by columns of b (a dense layer at batch 32)
@pytest.mark.parametrize("shape", [(1, 5, 3), (7, 4, 6), (301, 400, 200), (33, 1000, 513)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_equals_one_product(shape, transposed):
    m, k, p = shape
    rng = np.random.default_rng(1)
    a = rng.standard_normal((k, m)).T if transposed else rng.standard_normal((m, k))
    b = rng.standard_normal((k, p))
    split = m * k * p >= parallel._PARALLEL_MACS
    assert split == (shape[0] > 30)
    out = parallel.matmul(np, a, b)
    assert out.shape == (m, p) and out.dtype == np.float64
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)
