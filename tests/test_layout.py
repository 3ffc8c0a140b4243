"""Channels-last arrays flow through the 2D layers: same values as C order, layout kept, gradients right.

The Winograd core writes channels-last outputs; BatchNorm, ReLU, max pooling and Flatten take either
layout, give the values they give for C order, and keep the layout of their input in their outputs
and input gradients (mixed layouts are correct but slow, so a layer that dropped the layout would
slow every layer around it).
"""

import numpy as np
import pytest

from actionrec.nn.conv import Conv2D
from actionrec.nn.gradcheck import check_layer_gradients, numerical_gradient
from actionrec.nn.layers import Flatten, ReLU
from actionrec.nn.layout import channels_last, empty_in_layout, empty_like_layout, lies_channels_last
from actionrec.nn.normalization import BatchNorm
from actionrec.nn.pool import MaxPool2D
from actionrec.nn.winograd import winograd_conv_backward, winograd_conv_forward


def as_channels_last(a):
    """The same values as ``a`` (N, C, H, W), laid out (N, H, W, C) in memory."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


def test_layout_helpers():
    a = np.zeros((2, 3, 4, 5))
    b = as_channels_last(a)
    assert not channels_last(a) and channels_last(b)
    assert lies_channels_last(b) and not lies_channels_last(a)
    one = np.zeros((2, 1, 4, 5))  # one channel: both layouts at once, kept as C order
    assert channels_last(one) and not lies_channels_last(one)
    made = empty_in_layout(np, (2, 3, 4, 5), np.float32, last=True, zero=True)
    assert made.shape == (2, 3, 4, 5) and lies_channels_last(made) and not made.any()
    assert empty_like_layout((2, 6, 1, 1), a).flags.c_contiguous
    assert lies_channels_last(empty_like_layout((2, 6, 7, 8), b, np.float32))


@pytest.mark.parametrize("r", [3, 5])
@pytest.mark.parametrize("x_last, dy_last", [(False, False), (True, True), (True, False), (False, True)])
def test_winograd_any_layout_same_values(r, x_last, dy_last, rng):
    x = rng.standard_normal((3, 16, 9, 7))
    W = rng.standard_normal((16, 16, r, r))
    b = rng.standard_normal(16)
    pad = (r // 2, r // 2)
    y_ref, cache = winograd_conv_forward(x, W, b, pad)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = winograd_conv_backward(dy, cache)
    xin = as_channels_last(x) if x_last else x
    y, cache = winograd_conv_forward(xin, W, b, pad)
    assert lies_channels_last(y)  # the output is written channels-last whatever the input
    dx, dw, db = winograd_conv_backward(as_channels_last(dy) if dy_last else dy, cache)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, db_ref, rtol=1e-12, atol=1e-12)
    assert lies_channels_last(dx) == x_last  # the input gradient is laid out as the input


def test_conv2d_gradients_with_channels_last_input(rng):
    layer = Conv2D(16, 16, 3, padding=1, dtype="float64", rng=0)
    errors = check_layer_gradients(layer, as_channels_last(rng.standard_normal((2, 16, 5, 6))), eps=1e-3)
    assert layer._core == "winograd"
    assert max(errors.values()) < 1e-6, errors


def _same_on_both_layouts(make_layer, x, rng, training=True):
    """Forward and backward of two fresh layers, on x in C order and channels-last: equal values,
    outputs and input gradients in the input's layout."""
    dy = None
    results = []
    for data in (x, as_channels_last(x)):
        layer = make_layer()
        y = layer.forward(data, training=training)
        if dy is None:
            dy = rng.standard_normal(y.shape)
        d_in = as_channels_last(dy) if lies_channels_last(data) and dy.ndim == 4 else dy
        dx = layer.backward(d_in)
        results.append((y, dx, {k: np.array(v) for k, v in layer.grads.items()}))
        if y.ndim == 4:
            assert lies_channels_last(y) == lies_channels_last(data)
        assert lies_channels_last(dx) == lies_channels_last(data)
    (y0, dx0, g0), (y1, dx1, g1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-12)
    for name in g0:
        np.testing.assert_allclose(g1[name], g0[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_keeps_the_layout(training, rng):
    def make():
        layer = BatchNorm(16, dtype="float64")
        layer.params["W"][...] = np.linspace(0.5, 1.5, 16)
        layer.buffers["running_var"][...] = np.linspace(0.5, 2, 16)
        return layer

    _same_on_both_layouts(make, rng.standard_normal((4, 16, 7, 5)) * 3 + 1, rng, training)


def test_relu_and_maxpool_keep_the_layout(rng):
    x = rng.standard_normal((4, 16, 6, 7))
    _same_on_both_layouts(ReLU, x, rng)
    _same_on_both_layouts(lambda: MaxPool2D(2), x, rng)  # odd width: a dropped remainder column


def test_flatten_returns_the_gradient_in_the_input_layout(rng):
    _same_on_both_layouts(Flatten, rng.standard_normal((3, 16, 4, 5)), rng)


@pytest.mark.parametrize("make", [lambda: BatchNorm(16, dtype="float64"), lambda: MaxPool2D(2)])
def test_gradients_with_channels_last_input(make, rng):
    x = as_channels_last(rng.standard_normal((3, 16, 4, 5)) * 2 + 1)
    # seed 1: the check's dy with seed 0 would repeat the fixture's first draw, dy = (x - 1) / 2, for
    # which BatchNorm's input gradient is zero up to rounding
    errors = check_layer_gradients(make(), x, seed=1)
    assert max(errors.values()) < 1e-6, errors


def test_numerical_gradient_perturbs_a_channels_last_array():
    """A flat reshape of a channels-last array is a copy: the check must perturb x itself."""
    x = as_channels_last(np.arange(24, dtype=np.float64).reshape(1, 4, 2, 3))
    grad = numerical_gradient(lambda: x * x, x, np.ones(x.shape))
    np.testing.assert_allclose(grad, 2 * x, rtol=1e-6)


@pytest.mark.parametrize("stride, padding, input_grad", [(1, 1, False), (1, 1, True), (2, 0, True), (1, 2, True)])
def test_batched_core_writes_channels_last_and_reads_either_layout(stride, padding, input_grad, rng):
    """The im2col core (CIFAR's first layer, strided layers) writes y channels-last; its backward takes
    dY in either layout with the same results."""
    x = rng.standard_normal((3, 3, 8, 9))
    layer = Conv2D(3, 32, 3, stride=stride, padding=padding, dtype="float64", rng=0, input_grad=input_grad)
    y = layer.forward(x, training=True)
    assert layer._core == "batched" and lies_channels_last(y)
    dy = rng.standard_normal(y.shape)
    grads = []
    for d in (dy, as_channels_last(dy)):
        layer.forward(x, training=True)
        dx = layer.backward(d)
        grads.append((dx, layer.grads["W"].copy(), layer.grads["b"].copy()))
    for a, b in zip(*grads):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # the convolution is linear: a large step has no truncation error and less rounding
    errors = check_layer_gradients(layer, x, check_input=input_grad, eps=1e-3)
    assert max(errors.values()) < 1e-6, errors
