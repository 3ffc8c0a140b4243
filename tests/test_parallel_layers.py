"""Layers that split the batch over threads (and BatchNorm's blocks of items) give the one-piece results."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.nn import normalization, parallel
from actionrec.nn.layers import ReLU
from actionrec.nn.normalization import BatchNorm
from actionrec.nn.pool import MaxPool2D, MaxPool3D


def _run(make, x, dy, training):
    layer = make()
    y = layer.forward(x, training=training)
    dx = layer.backward(dy)
    return y, dx, {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("make,x_shape,training", [
    (ReLU, (5, 3, 4, 6), True),
    (lambda: BatchNorm(3, dtype="float64"), (5, 3, 4, 6), True),
    (lambda: BatchNorm(3, dtype="float64"), (5, 3, 7), False),
    (lambda: BatchNorm(4, dtype="float64"), (7, 4), True),
    (lambda: MaxPool2D(2), (5, 3, 7, 6), True),
    (lambda: MaxPool3D((1, 2, 3)), (3, 2, 4, 5, 7), True),
])
def test_chunked_layers_equal_one_piece(monkeypatch, make, x_shape, training):
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, x_shape).astype(np.float64)  # ties: the pools' first-maximum rule matters
    dy_shape = make().forward(x, training=training).shape
    dy = rng.standard_normal(dy_shape)
    whole = _run(make, x, dy, training)
    monkeypatch.setattr(parallel, "WORKERS", 2)
    monkeypatch.setattr(parallel, "_PARALLEL_ELEMENTS", 1)
    monkeypatch.setattr(normalization, "_BLOCK_ELEMENTS", 1)  # one item per block
    chunked = _run(make, x, dy, training)
    for a, b in zip(whole[:2], chunked[:2]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    for key in whole[2]:
        np.testing.assert_allclose(chunked[2][key], whole[2][key], rtol=1e-12, atol=1e-13)


def test_over_batch_splits_whole_items_only_when_large(monkeypatch):
    monkeypatch.setattr(parallel, "WORKERS", 2)
    assert parallel.over_batch(np, lambda s, e: (s, e), 5, 10) == [(0, 5)]
    assert parallel.over_batch(np, lambda s, e: (s, e), 5, parallel._PARALLEL_ELEMENTS) == [(0, 3), (3, 5)]
    assert parallel.over_batch(np, lambda s, e: (s, e), 1, parallel._PARALLEL_ELEMENTS) == [(0, 1)]
