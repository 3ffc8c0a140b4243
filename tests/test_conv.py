"""Conv2D, Conv3D, SegmentConv3D: plain-loop references, float64 gradient checks, shapes and errors."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.errors import ShapeError
from actionrec.nn import reference
from actionrec.nn.base import build_layer
from actionrec.nn.conv import Conv2D, Conv3D, SegmentConv3D, conv_backward, conv_forward
from actionrec.nn.gradcheck import check_layer_gradients
from actionrec.nn.im2col import col2im, im2col

TOL = 1e-6


def _with_random_bias(layer, rng):
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape).astype(layer.params["b"].dtype)
    return layer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 1), (2, 0)])
def test_conv2d_matches_reference(rng, dtype, groups, stride, padding):
    c, o = 2 * groups if groups > 1 else 1, 2 * groups
    layer = _with_random_bias(Conv2D(c, o, (3, 2), stride=stride, padding=padding, groups=groups, rng=1,
                                     dtype=dtype), rng)
    x = rng.standard_normal((2, c, 7, 6)).astype(dtype)
    y = layer.forward(x)
    expected = reference.conv(x, layer.params["W"], layer.params["b"], stride, padding, groups)
    assert y.dtype == np.dtype(dtype) and y.shape == expected.shape == layer.output_shape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-4 if dtype == "float32" else 1e-10, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((2, 1, 3), (1, 0, 1)), ((3, 2, 1), 0)])
def test_conv3d_matches_reference(rng, dtype, groups, stride, padding):
    c, o = 2 * groups if groups > 1 else 1, groups
    layer = _with_random_bias(Conv3D(c, o, (3, 2, 3), stride=stride, padding=padding, groups=groups, rng=1,
                                     dtype=dtype), rng)
    x = rng.standard_normal((1, c, 7, 5, 6)).astype(dtype)
    y = layer.forward(x)
    expected = reference.conv(x, layer.params["W"], layer.params["b"], stride, padding, groups)
    assert y.dtype == np.dtype(dtype) and y.shape == expected.shape == layer.output_shape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-4 if dtype == "float32" else 1e-10, atol=1e-5)


def test_full_3d_im2col_path_equals_framewise(rng):
    """The generic path (one frame, kt = 1, unfold all three axes) gives the frame-wise result."""
    x = rng.standard_normal((2, 2, 6, 5, 4))
    W = rng.standard_normal((4, 1, 3, 2, 2))
    b = rng.standard_normal(4)
    stride, padding = (2, 1, 1), (1, 1, 0)
    framewise, cache = conv_forward(x, W, b, stride, padding, 2)
    full, full_cache = conv_forward(x[:, :, None], W[:, :, None], b, (1,) + stride, (0,) + padding, 2)
    np.testing.assert_allclose(full[:, :, 0], framewise, rtol=1e-12)
    dy = rng.standard_normal(framewise.shape)
    dx, dW, db = conv_backward(dy, cache)
    dx_full, dW_full, db_full = conv_backward(dy[:, :, None], full_cache)
    np.testing.assert_allclose(dx_full[:, :, 0], dx, rtol=1e-10)
    np.testing.assert_allclose(dW_full[:, :, 0], dW, rtol=1e-10)
    np.testing.assert_allclose(db_full, db, rtol=1e-10)


def test_col2im_is_adjoint_of_im2col(rng):
    """<im2col(x), c> == <x, col2im(c)>: the defining property of the backward fold."""
    x = rng.standard_normal((2, 3, 4, 7, 6))
    kernel, stride, padding = (3, 2), (2, 1), (1, 1)
    cols = im2col(x, kernel, stride, padding)
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * col2im(c, x.shape, kernel, stride, padding)))


@pytest.mark.parametrize("layer,x_shape", [
    (Conv2D(3, 3, (2, 3), stride=2, padding=1, groups=3, rng=1, dtype="float64"), (2, 3, 4, 5)),
    (Conv2D(2, 4, 2, groups=2, rng=2, dtype="float64"), (1, 2, 3, 4)),
    (Conv3D(2, 4, (2, 2, 3), stride=(2, 1, 2), padding=(1, 0, 1), groups=2, rng=1, dtype="float64"),
     (1, 2, 4, 3, 5)),
    (Conv3D(1, 2, (3, 2, 2), rng=3, dtype="float64"), (2, 1, 4, 3, 3)),
    (SegmentConv3D((3, 2), 2, 2, (2, 2, 2), groups=2, rng=1, dtype="float64"), (1, 2, 5, 3, 3)),
    (SegmentConv3D((3, 2), 1, 2, (2, 2, 2), shared=True, rng=1, dtype="float64"), (1, 1, 5, 3, 3)),
], ids=["conv2d-groups-stride-pad", "conv2d", "conv3d-groups-stride-pad", "conv3d", "segment", "segment-shared"])
def test_gradients_match_finite_differences(rng, layer, x_shape):
    _with_random_bias(layer, rng)
    errors = check_layer_gradients(layer, rng.standard_normal(x_shape))
    assert set(errors) == {"x", "W", "b"}
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("cls,x_shape", [(Conv2D, (2, 2, 5, 5)), (Conv3D, (2, 2, 4, 5, 5))])
def test_input_grad_false_skips_dx_but_keeps_parameter_gradients(rng, cls, x_shape):
    full = cls(2, 3, 3, rng=0, dtype="float64")
    lean = cls(2, 3, 3, rng=0, dtype="float64", input_grad=False)
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal(full.forward(x).shape)
    lean.forward(x)
    assert full.backward(dy) is not None and lean.backward(dy) is None
    for key in ("W", "b"):
        np.testing.assert_allclose(lean.grads[key], full.grads[key])


def test_segment_conv_input_grad_false_skips_dx(rng):
    seg = SegmentConv3D((3, 3), 1, 2, 2, input_grad=False, rng=0, dtype="float64")
    y = seg.forward(rng.standard_normal((1, 1, 6, 4, 4)))
    assert seg.backward(np.ones_like(y)) is None
    assert seg.grads["W"].shape == seg.params["W"].shape and np.abs(seg.grads["W"]).sum() > 0


@pytest.mark.parametrize("layer,x_shape", [
    (Conv3D(2, 2, (3, 4, 5), rng=0), (2, 2, 6, 7, 8)),
    (SegmentConv3D((9, 9, 9, 8, 8), 1, 2, (3, 7, 9), input_grad=False, rng=0), (2, 1, 43, 20, 24)),
])
def test_backward_keeps_no_column_matrix(rng, layer, x_shape):
    """Between forward and backward a convolution holds its input (padded where needed) or, in the
    FFT core, the input's spectra, never the unfolded matrix, which is kh*kw times larger and is
    rebuilt in backward instead."""
    def arrays(obj):
        if isinstance(obj, np.ndarray):
            yield obj
        elif isinstance(obj, (tuple, list, dict)):
            for item in (obj.values() if isinstance(obj, dict) else obj):
                yield from arrays(item)

    x = rng.standard_normal(x_shape).astype(np.float32)
    layer.forward(x)
    cached = sum(a.nbytes for a in arrays(layer._cache))
    assert x.nbytes <= cached <= 1.5 * x.nbytes
def test_segment_conv_equals_separate_conv3d_per_segment(rng):
    segments = (4, 4, 3)
    seg = _with_random_bias(SegmentConv3D(segments, 2, 4, (2, 3, 2), groups=2, rng=0, dtype="float64"), rng)
    x = rng.standard_normal((2, 2, sum(segments), 6, 5))
    y = seg.forward(x)
    assert seg.output_segments == (3, 3, 2)
    assert y.shape == seg.output_shape(x.shape) == (2, 4, 8, 4, 4)
    starts, out_starts = np.cumsum((0,) + segments), np.cumsum((0,) + seg.output_segments)
    for s in range(len(segments)):
        conv = Conv3D(2, 4, (2, 3, 2), groups=2, dtype="float64")
        conv.params["W"][...] = seg.params["W"][s]
        conv.params["b"][...] = seg.params["b"][s]
        np.testing.assert_allclose(y[:, :, out_starts[s]:out_starts[s + 1]],
                                   conv.forward(x[:, :, starts[s]:starts[s + 1]]), rtol=1e-12)


def test_segment_conv_shared_uses_one_kernel_for_all_segments(rng):
    seg = SegmentConv3D((3, 3), 1, 2, 2, shared=True, rng=0, dtype="float64")
    assert seg.params["W"].shape == (2, 1, 2, 2, 2) and seg.params["b"].shape == (2,)
    x = rng.standard_normal((1, 1, 6, 4, 4))
    x[:, :, 3:] = x[:, :, :3]  # identical segments give identical outputs
    y = seg.forward(x)
    np.testing.assert_allclose(y[:, :, :2], y[:, :, 2:])


@pytest.mark.parametrize("segments,cin,cout,kernel,groups,count", [
    ((7, 7, 7, 6, 6), 1, 2, (3, 7, 7), 1, 1480),  # Ji TRECVID C2
    ((5, 5, 5, 4, 4), 2, 6, (3, 7, 6), 2, 3810),  # Ji TRECVID C4
])
def test_segment_conv_parameter_counts_match_ji(segments, cin, cout, kernel, groups, count):
    assert SegmentConv3D(segments, cin, cout, kernel, groups=groups).num_parameters() == count


@pytest.mark.parametrize("layer", [
    Conv2D(2, 4, (3, 2), stride=(2, 1), padding=1, groups=2, bias=False, init="he", rng=0, dtype="float64"),
    Conv3D(1, 2, (3, 7, 9), input_grad=False, rng=0),
    SegmentConv3D((3, 3), 1, 2, (2, 3, 3), shared=True, rng=0),
])
def test_config_rebuilds_the_same_layer(layer):
    rebuilt = build_layer(type(layer).__name__, layer.config())
    assert rebuilt.config() == layer.config()
    assert {k: v.shape for k, v in rebuilt.params.items()} == {k: v.shape for k, v in layer.params.items()}
    assert rebuilt.dtype == layer.dtype


@pytest.mark.parametrize("layer,x_shape,message", [
    (Conv2D(3, 2, 3, name="c1"), (2, 3, 5), r"c1: expected input of shape \(N, 3, H, W\), got \(2, 3, 5\)"),
    (Conv2D(3, 2, 3, name="c1"), (2, 1, 5, 5), r"c1: .*\(N, 3, H, W\), got \(2, 1, 5, 5\)"),
    (Conv3D(1, 2, 3, name="c3"), (2, 2, 5, 5, 5), r"c3: .*\(N, 1, T, H, W\), got \(2, 2, 5, 5, 5\)"),
    (Conv3D(1, 2, (3, 7, 7), name="c3"), (1, 1, 9, 6, 10), r"c3: kernel \(3, 7, 7\).*larger than the input"),
    (Conv2D(1, 2, 4, name="c2"), (1, 1, 3, 9), r"c2: kernel \(4, 4\).*larger"),
    (SegmentConv3D((3, 3), 1, 2, 2, name="s"), (1, 1, 7, 4, 4), r"s: expected 6 frames"),
])
def test_bad_input_shapes_raise_clear_shape_error(layer, x_shape, message):
    with pytest.raises(ShapeError, match=message):
        layer.output_shape(x_shape)
    with pytest.raises(ShapeError, match=message):
        layer.forward(np.zeros(x_shape, dtype=np.float32))


@pytest.mark.parametrize("make", [
    lambda: Conv2D(3, 4, 3, groups=2),
    lambda: Conv3D(4, 3, 3, groups=2),
    lambda: SegmentConv3D((3, 3), 2, 3, 2, groups=2),
    lambda: SegmentConv3D((3, 1), 1, 2, 2),
    lambda: Conv2D(1, 1, (3, 3, 3)),
])
def test_bad_constructor_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()
