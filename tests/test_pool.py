"""Max/average pooling and trainable subsampling: references, gradient checks, shapes and errors."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.errors import ShapeError
from actionrec.nn import reference
from actionrec.nn.base import build_layer
from actionrec.nn.gradcheck import check_layer_gradients
from actionrec.nn.pool import AvgPool2D, AvgPool3D, MaxPool2D, MaxPool3D, Subsampling

TOL = 1e-6
POOLS = [(MaxPool2D, "max", 2), (AvgPool2D, "mean", 2), (MaxPool3D, "max", 3), (AvgPool3D, "mean", 3)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), ((2, 3), (1, 2)), (2, 1)])
@pytest.mark.parametrize("cls,mode,ndim", POOLS, ids=lambda v: getattr(v, "__name__", None))
def test_pool_matches_reference(rng, cls, mode, ndim, kernel, stride, dtype):
    if isinstance(kernel, tuple):
        kernel, stride = (kernel + (2,))[:ndim], (stride + (1,))[:ndim]
    layer = cls(kernel, stride)
    x = rng.standard_normal((2, 3) + (7, 6, 5)[:ndim]).astype(dtype)
    y = layer.forward(x)
    expected = reference.pool(x, layer.kernel_size, layer.stride, mode)
    assert y.dtype == np.dtype(dtype) and y.shape == expected.shape == layer.output_shape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (2, 1)])
@pytest.mark.parametrize("cls,mode,ndim", POOLS, ids=lambda v: getattr(v, "__name__", None))
def test_pool_gradients_match_finite_differences(rng, cls, mode, ndim, kernel, stride):
    shape = (2, 1, 5, 4, 5) if ndim == 3 else (2, 2, 4, 5)
    # distinct values in [0, 1), at least 1/200 apart: the max never ties within the finite difference
    x = rng.permutation(np.prod(shape)).astype(np.float64).reshape(shape) / np.prod(shape)
    errors = check_layer_gradients(cls(kernel, stride), x)
    assert errors["x"] < TOL, errors


def test_max_pool_tie_sends_gradient_to_one_element():
    layer = MaxPool2D(2)
    x = np.ones((1, 1, 2, 2))
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 1, 1)))
    assert dx.sum() == 1.0 and dx.max() == 1.0


def test_pool_remainder_gets_zero_gradient(rng):
    layer = AvgPool2D(2)
    x = rng.standard_normal((1, 1, 5, 5))
    dx = layer.backward(np.ones(layer.forward(x).shape))
    assert np.all(dx[..., 4, :] == 0) and np.all(dx[..., :, 4] == 0) and np.all(dx[..., :4, :4] == 0.25)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("map_shape,x_shape,kernel", [
    ((3,), (2, 3, 7, 9), 2), ((2, 4), (1, 2, 4, 6, 7), (3, 2)), ((1,), (1, 1, 4, 4), 1)])
def test_subsampling_matches_reference(rng, map_shape, x_shape, kernel, dtype):
    layer = Subsampling(kernel, map_shape, init="lecun", rng=0, dtype=dtype)
    layer.params["b"][...] = rng.standard_normal(map_shape)
    x = rng.standard_normal(x_shape).astype(dtype)
    y = layer.forward(x)
    expected = reference.subsampling(x, layer.params["W"], layer.params["b"], layer.kernel_size)
    assert y.dtype == np.dtype(dtype) and y.shape == expected.shape == layer.output_shape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("map_shape,x_shape,kernel", [((2,), (2, 2, 5, 4), 2), ((2, 3), (1, 2, 3, 4, 5), (2, 3)),
                                                     ((2,), (3, 2, 4, 6), 2), ((2, 3), (2, 2, 3, 6, 6), (3, 2))])
def test_subsampling_gradients_match_finite_differences(rng, map_shape, x_shape, kernel):
    layer = Subsampling(kernel, map_shape, init="lecun", rng=0, dtype="float64")
    layer.params["b"][...] = rng.standard_normal(map_shape)
    errors = check_layer_gradients(layer, rng.standard_normal(x_shape))
    assert set(errors) == {"x", "W", "b"} and max(errors.values()) < TOL, errors


@pytest.mark.parametrize("x_shape", [(4, 2, 10, 48, 72), (4, 2, 10, 49, 73)])  # exact and remainder
def test_subsampling_on_both_cores_matches_the_reference(rng, x_shape):
    # Large enough (> 2**18 elements) for the batch to be split over threads.
    layer = Subsampling(3, (2, 10), init="lecun", rng=0, dtype="float32")
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = layer.forward(x)
    expected = reference.subsampling(x, layer.params["W"], layer.params["b"], layer.kernel_size)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    # every input of a window gets W * dy of its window; the remainder rows/columns get nothing
    spread = np.repeat(np.repeat(dy * layer.params["W"][None, :, :, None, None], 3, axis=-2), 3, axis=-1)
    expected_dx = np.zeros_like(x)
    expected_dx[..., :spread.shape[-2], :spread.shape[-1]] = spread
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-6, atol=1e-6)


def test_subsampling_starts_as_window_average_and_counts_ji_parameters(rng):
    layer = Subsampling(2, (2, 23))  # Ji TRECVID S3
    assert layer.num_parameters() == 92
    x = rng.standard_normal((1, 2, 23, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), AvgPool3D((1, 2, 2)).forward(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [MaxPool3D((1, 2, 2)), AvgPool2D(3, 2), Subsampling((2, 3), (2, 5), dtype="float64")])
def test_config_rebuilds_the_same_layer(layer):
    rebuilt = build_layer(type(layer).__name__, layer.config())
    assert rebuilt.config() == layer.config()


@pytest.mark.parametrize("layer,x_shape,message", [
    (MaxPool2D(2, name="p"), (1, 2, 4, 4, 4), r"p: expected input of shape \(N, C, H, W\), got \(1, 2, 4, 4, 4\)"),
    (AvgPool3D(3, name="p"), (1, 1, 2, 5, 5), r"p: kernel \(3, 3, 3\) is larger than the input"),
    (Subsampling(2, (2,), name="s"), (1, 3, 4, 4), r"s: expected input of shape \(N, 2, H, W\), got \(1, 3, 4, 4\)"),
    (Subsampling(3, (1,), name="s"), (1, 1, 2, 6), r"s: kernel \(3, 3\) is larger"),
])
def test_bad_input_shapes_raise_clear_shape_error(layer, x_shape, message):
    with pytest.raises(ShapeError, match=message):
        layer.output_shape(x_shape)
    with pytest.raises(ShapeError, match=message):
        layer.forward(np.zeros(x_shape))


@pytest.mark.parametrize("cls,x_shape,kernel", [
    (MaxPool2D, (2, 3, 9, 8), 2), (MaxPool2D, (1, 2, 7, 9), (3, 2)), (MaxPool3D, (2, 2, 5, 6, 7), (2, 3, 2)),
    (MaxPool3D, (1, 2, 4, 6, 6), (1, 2, 2))])
def test_max_pool_axis_by_axis_equals_tap_by_tap_with_ties(rng, cls, x_shape, kernel):
    """Non-overlapping windows reduce one axis at a time; the result, including which of several tied
    maxima gets the gradient (the first in row-major order), equals the tap-by-tap path."""
    x = rng.integers(0, 3, x_shape).astype(np.float64)  # many ties
    separable, taps = cls(kernel), cls(kernel)
    taps._separable = lambda: False
    y = separable.forward(x)
    np.testing.assert_array_equal(y, taps.forward(x))
    assert separable._cache[0] == "separable" and taps._cache[0] == "taps"
    dy = rng.standard_normal(y.shape)
    dx = separable.backward(dy)
    np.testing.assert_array_equal(dx, taps.backward(dy))
    assert np.count_nonzero(dx) == dy.size


def test_max_pool_tie_goes_to_the_first_maximum_in_row_major_order():
    layer = MaxPool2D(2)
    layer.forward(np.array([[[[1.0, 5.0], [5.0, 0.0]]]]))
    dx = layer.backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])
