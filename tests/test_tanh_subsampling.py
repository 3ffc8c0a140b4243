"""``TanhSubsampling`` (a Tanh then a trainable Subsampling, as one unit of backward) against the two
layers run one after the other: the same numbers for the output, dx and the subsampling's gradients,
finite differences in float64, the fallbacks, and Sequential's grouping in the Ji nets."""

import numpy as np
import pytest

import actionrec.models as models
from actionrec.nn.conv import SegmentConv3D
from actionrec.nn.gradcheck import numerical_gradient, relative_error
from actionrec.nn.layers import Flatten, ReLU, Tanh
from actionrec.nn.pool import Subsampling
from actionrec.nn.sequential import Sequential
from actionrec.nn.tanh_subsampling import TanhSubsampling
from unit_helpers import units_and_layers

CASES = [  # x shape, map_shape, kernel
    ((3, 2, 5, 8, 6), (2, 5), 2),  # Ji-like (N, maps, frames, H, W), 2x2 windows
    ((2, 2, 4, 9, 12), (2, 4), 3),  # 3x3 windows (Ji-KTH)
    ((4, 3, 6, 10), (3,), (2, 5)),  # 2D maps, rectangular windows
    ((1, 1, 3, 4), (1,), 1),  # a single item, 1x1 windows
]


def pair(map_shape, kernel, dtype, seed=0):
    sub = Subsampling(kernel, map_shape, init="lecun", rng=seed, dtype=dtype)
    sub.params["b"][...] = np.random.default_rng(seed + 1).standard_normal(map_shape)
    return Tanh(), sub


def through_layers(tanh, sub, x, dy):
    y = sub.forward(tanh.forward(x, training=True), training=True)
    dx = tanh.backward(sub.backward(dy))
    return y, dx, sub.grads["W"].copy(), sub.grads["b"].copy()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_two_layers_bit_for_bit(rng, case, dtype):
    x_shape, map_shape, kernel = case
    tanh, sub = pair(map_shape, kernel, dtype)
    x = rng.standard_normal(x_shape).astype(dtype)
    unit = TanhSubsampling(tanh, sub)
    y = unit.forward(x, training=True)
    assert sub.tiles_exactly()
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = unit.backward(dy)
    dW, db = sub.grads["W"].copy(), sub.grads["b"].copy()
    y_ref, dx_ref, dW_ref, db_ref = through_layers(tanh, sub, x, dy)
    assert dx.shape == x.shape and dx.dtype == dtype
    for got, want in ((y, y_ref), (dx, dx_ref), (dW, dW_ref), (db, db_ref)):
        np.testing.assert_array_equal(got, want)  # the same products element by element


def test_gradients_match_finite_differences(rng):
    tanh, sub = pair((2, 3), 2, np.float64)
    x = rng.standard_normal((2, 2, 3, 6, 4))
    unit = TanhSubsampling(tanh, sub)
    y = unit.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = unit.backward(dy)
    dW, db = sub.grads["W"].copy(), sub.grads["b"].copy()

    def f():
        return unit.forward(x, training=True)

    assert relative_error(dx, numerical_gradient(f, x, dy)) < 1e-7
    assert relative_error(dW, numerical_gradient(f, sub.params["W"], dy)) < 1e-7
    assert relative_error(db, numerical_gradient(f, sub.params["b"], dy)) < 1e-7


def test_windows_that_drop_rows_fall_back_to_the_layers(rng):
    """7 x 8 maps in 3 x 3 windows drop a row and two columns: their gradient is zero, as in the layers."""
    tanh, sub = pair((2,), 3, np.float64)
    x = rng.standard_normal((2, 2, 7, 8))
    unit = TanhSubsampling(tanh, sub)
    y = unit.forward(x, training=True)
    assert not sub.tiles_exactly()
    dy = rng.standard_normal(y.shape)
    dx = unit.backward(dy)
    _, dx_ref, _, _ = through_layers(tanh, sub, x, dy)
    np.testing.assert_array_equal(dx, dx_ref)
    assert not dx[:, :, 6:].any() and not dx[:, :, :, 6:].any()


def test_a_gradient_of_another_dtype_falls_back_to_the_layers(rng):
    tanh, sub = pair((2,), 2, np.float32)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    unit = TanhSubsampling(tanh, sub)
    y = unit.forward(x, training=True)
    dy = rng.standard_normal(y.shape)  # float64
    dx = unit.backward(dy)
    _, dx_ref, _, _ = through_layers(tanh, sub, x, dy)
    assert dx.dtype == dx_ref.dtype == np.float64
    np.testing.assert_array_equal(dx, dx_ref)


def test_backward_scaled_writes_into_the_factor_and_needs_exact_windows(rng):
    sub = Subsampling(2, (1,), init="lecun", rng=0, dtype="float64")
    x = rng.standard_normal((2, 1, 4, 6))
    y = sub.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    factor = rng.standard_normal(x.shape)
    expected = sub.backward(dy) * factor
    out = sub.backward_scaled(dy, factor)
    assert out is factor
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="C-order factor"):  # its product would be lost in a copy
        sub.backward_scaled(dy, np.asfortranarray(factor))
    sub.forward(rng.standard_normal((2, 1, 5, 6)), training=True)  # a row dropped
    with pytest.raises(ValueError, match="tile it exactly"):
        sub.backward_scaled(dy, rng.standard_normal((2, 1, 5, 6)))


@pytest.mark.parametrize("core", ["fft", "banded"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_convolution_applies_the_activation_as_it_writes(rng, core, dtype):
    """The same numbers as tanh over the plain output, on both cores (5x5 taps go to the FFT core,
    2x3 to the banded one); backward is the convolution's, unchanged."""
    kernel = (2, 5, 5) if core == "fft" else (2, 2, 3)
    conv = SegmentConv3D((4, 3), 1, 2, kernel, rng=0, dtype=dtype)
    conv.params["b"][...] = rng.standard_normal(conv.params["b"].shape)
    x = rng.standard_normal((3, 1, 7, 9, 8)).astype(dtype)
    plain = conv.forward(x, training=True)
    activated = conv.forward(x, training=True, activation=np.tanh)
    np.testing.assert_array_equal(activated, np.tanh(plain))
    dy = rng.standard_normal(plain.shape).astype(dtype)
    conv.backward(dy)
    dW = conv.grads["W"].copy()
    conv.forward(x, training=True)
    conv.backward(dy)
    np.testing.assert_array_equal(dW, conv.grads["W"])


@pytest.mark.parametrize("exact", [True, False])
def test_with_its_convolution_matches_the_three_layers(rng, exact):
    conv = SegmentConv3D((4, 3), 1, 2, (2, 5, 5), rng=0, dtype="float64")  # dx too: the unit returns it
    tanh, sub = pair((2, 5), 2 if exact else 3, np.float64)
    x = rng.standard_normal((2, 1, 7, 10, 10 if exact else 11))  # maps 6 x 6, or 6 x 7 in 3 x 3 windows
    unit = TanhSubsampling(tanh, sub, conv=conv)
    y = unit.forward(x, training=True)
    assert sub.tiles_exactly() == exact
    dy = rng.standard_normal(y.shape)
    dx = unit.backward(dy)
    got = [y, dx, conv.grads["W"].copy(), conv.grads["b"].copy(), sub.grads["W"].copy()]
    y_ref = sub.forward(tanh.forward(conv.forward(x, training=True), training=True), training=True)
    dx_ref = conv.backward(tanh.backward(sub.backward(dy)))
    want = [y_ref, dx_ref, conv.grads["W"], conv.grads["b"], sub.grads["W"]]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_sequential_groups_tanh_and_subsampling_in_the_ji_nets(rng):
    """ji-small: each segment convolution, its tanh and its subsampling form one unit; S3 tiles its
    maps exactly (fused backward), S5 drops columns (fallback); logits and every gradient as with the
    layers one by one."""
    fused = models.build_model("ji-small", 6, dtype="float64")
    plain = models.build_model("ji-small", 6, dtype="float64")
    units = fused._units()
    names = [type(u).__name__ for u in units]
    assert names[:4] == ["TanhSubsampling", "Tanh", "TanhSubsampling", "Tanh"]
    assert units[0].conv is fused.layers[0] and units[2].conv is fused.layers[4]
    outs = units_and_layers(fused, plain, rng.standard_normal((2,) + tuple(models.MODELS["ji-small"].input_shape)))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_sequential_leaves_other_pairs_alone():
    model = Sequential([Tanh(), Flatten(), ReLU()])
    assert [type(u).__name__ for u in model._units()] == ["Tanh", "Flatten", "ReLU"]
    model = Sequential([SegmentConv3D((4,), 1, 2, (2, 5, 5)), Tanh(), Flatten()])  # no subsampling
    assert [type(u).__name__ for u in model._units()] == ["SegmentConv3D", "Tanh", "Flatten"]
    model = Sequential([Subsampling(2, (1,)), Tanh()])  # the other order: not a unit
    assert [type(u).__name__ for u in model._units()] == ["Subsampling", "Tanh"]
