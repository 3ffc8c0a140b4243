"""The banded (block-Toeplitz) 2D convolution against an independent einsum reference, and its
gradients against centred finite differences in float64."""

import numpy as np
import pytest

from actionrec.nn.banded import banded_conv2d, banded_conv2d_backward, choose_tile
from actionrec.nn.conv import Conv2D, Conv3D, SegmentConv3D
from actionrec.nn.gradcheck import check_layer_gradients, numerical_gradient, relative_error


def reference_conv2d(x, w):
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))  # M,C,Ho,Wo,kh,kw
    return np.einsum("mchwij,pcij->mphw", windows, w)


SHAPES = [  # (M, C, H, W, P, kh, kw, b)
    (2, 1, 9, 11, 6, 3, 4, None),
    (3, 2, 7, 8, 3, 2, 3, 1),
    (1, 1, 12, 17, 2, 7, 9, 8),
    (2, 3, 6, 6, 4, 3, 3, 5),   # tile wider than needed for the last tile: padding path
    (1, 2, 5, 9, 1, 5, 1, None),  # kw == 1
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(shape, dtype):
    m, c, h, wd, p, kh, kw, b = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((m, c, h, wd)).astype(dtype)
    w = rng.standard_normal((p, c, kh, kw)).astype(dtype)
    y = banded_conv2d(x, w, b)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    assert y.shape == (m, p, h - kh + 1, wd - kw + 1)
    np.testing.assert_allclose(y, reference_conv2d(x, w), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_finite_differences(shape):
    m, c, h, wd, p, kh, kw, b = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((m, c, h, wd))
    w = rng.standard_normal((p, c, kh, kw))
    dy = rng.standard_normal((m, p, h - kh + 1, wd - kw + 1))
    dw, dx = banded_conv2d_backward(x, w, dy, b)
    # The convolution is linear in w and in x, so centred differences have no truncation error and
    # only rounding (~1e-16 / eps) remains: a large step keeps the 1e-6 bar meaningful for small
    # entries (with eps 1e-6 a 1.4e-3 entry of dW missed it by rounding alone on one CPU).
    eps = 1e-3
    assert relative_error(dw, numerical_gradient(lambda: banded_conv2d(x, w, b), w, dy, eps)) < 1e-6
    assert relative_error(dx, numerical_gradient(lambda: banded_conv2d(x, w, b), x, dy, eps)) < 1e-6
    dw_only, none = banded_conv2d_backward(x, w, dy, b, need_dx=False)
    assert none is None
    np.testing.assert_allclose(dw_only, dw, rtol=1e-12)


def test_chunking_does_not_change_results(monkeypatch):
    import actionrec.nn.banded as banded

    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 1, 10, 12))
    w = rng.standard_normal((2, 1, 3, 3))
    dy = rng.standard_normal((5, 2, 8, 10))
    whole = banded_conv2d(x, w), *banded_conv2d_backward(x, w, dy)
    monkeypatch.setattr(banded, "_ROWS_PER_CHUNK", 1)  # one item per chunk
    parts = banded_conv2d(x, w), *banded_conv2d_backward(x, w, dy)
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_tile_choice_and_errors():
    assert choose_tile(6, 72, 9) == 8      # Ji first layer: 2 kernels x 3 temporal taps
    assert choose_tile(64, 30, 3) == 1     # many maps: plain im2col
    assert choose_tile(2, 3, 3) == 3       # never wider than the output
    with pytest.raises(ValueError, match="larger than the input"):
        banded_conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="channels"):
        banded_conv2d(np.zeros((1, 2, 5, 5)), np.zeros((1, 1, 3, 3)))


@pytest.mark.parametrize("make,x_shape", [
    (lambda: Conv2D(2, 50, 3, padding=1, rng=1, dtype="float64"), (2, 2, 5, 6)),
    (lambda: Conv2D(2, 50, 2, rng=1, dtype="float64"), (1, 2, 7, 7)),
    (lambda: Conv3D(2, 26, (2, 2, 3), padding=(1, 0, 2), rng=1, dtype="float64"), (1, 2, 3, 4, 5)),
    (lambda: Conv3D(2, 26, (1, 2, 2), padding=(0, 1, 0), rng=1, dtype="float64"), (1, 2, 2, 5, 7)),
    (lambda: SegmentConv3D((3, 2), 2, 26, (2, 2, 2), groups=2, rng=1, dtype="float64"), (1, 2, 5, 3, 4)),
], ids=["conv2d-fold", "conv2d-adjoint", "conv3d-fold", "conv3d-adjoint", "segment-groups"])
def test_im2col_geometry_gradients_match_finite_differences(make, x_shape):
    """Many output maps make b = 1: A stored columns-major, input gradient by the fold on small maps
    and through the flipped-kernel forward on maps large next to the kernel."""
    rng = np.random.default_rng(4)
    layer = make()
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    errors = check_layer_gradients(layer, rng.standard_normal(x_shape))
    assert set(errors) == {"x", "W", "b"} and max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("make,x_shape", [
    (lambda: SegmentConv3D((4, 4, 3), 2, 4, (3, 3, 4), groups=2, rng=0, dtype="float64"), (2, 2, 11, 6, 9)),
    (lambda: Conv3D(2, 3, (3, 2, 3), stride=(2, 1, 1), padding=1, rng=0, dtype="float64"), (2, 2, 7, 5, 6)),
    (lambda: Conv2D(3, 40, 3, padding=1, rng=0, dtype="float64"), (3, 3, 6, 7)),
], ids=["segments", "conv3d-time-stride", "conv2d-columns-major"])
def test_frame_by_frame_path_equals_block_path(monkeypatch, make, x_shape):
    """Large frames skip the temporal taps an edge frame does not feed (one GEMM per run of frames
    that feed the same taps); small frames take one GEMM per block. Forcing the first path, in blocks
    of several frames and of one, must not change any result."""
    import actionrec.nn.banded as banded

    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape)
    results = []
    for block_elements, one_gemm in ((banded._BLOCK_ELEMENTS, True), (banded._BLOCK_ELEMENTS, False), (1, False)):
        monkeypatch.setattr(banded, "_BLOCK_ELEMENTS", block_elements)
        if not one_gemm:
            monkeypatch.setattr(banded, "_one_gemm_per_block", lambda g: False)
        layer = make()
        layer.params["b"][...] = 0.5
        y = layer.forward(x)
        dx = layer.backward(np.cos(y))
        results.append((y, dx, layer.grads["W"], layer.grads["b"]))
    for forced in results[1:]:
        for whole, part in zip(results[0], forced):
            np.testing.assert_allclose(part, whole, rtol=1e-12, atol=1e-12)
