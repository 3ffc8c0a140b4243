"""The Winograd core (F(2x2) and F(4x4) tiles for 3x3 and 5x5 kernels) against the plain-loop reference (forward and gradients), its
gradients against centred finite differences in float64, its pieces against their definitions, and
Conv2D's routing to it."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.nn import reference, winograd
from actionrec.nn.conv import Conv2D
from actionrec.nn.gradcheck import check_layer_gradients, numerical_gradient, relative_error
from actionrec.nn.winograd import winograd_conv_backward, winograd_conv_forward

CASES = [  # x shape (N, C, H, W), output maps, kernel size, padding
    ((2, 3, 8, 8), 4, 3, (1, 1)),  # "same" padding, even output: whole tiles
    ((1, 2, 7, 6), 3, 3, (1, 1)),  # batch 1, odd output height: one more tile row, cropped
    ((3, 4, 9, 11), 2, 3, (0, 0)),  # valid, odd output sizes on both axes
    ((2, 3, 5, 4), 5, 3, (2, 1)),  # padding k - 1 on one axis (full correlation), 1 on the other
    ((2, 5, 3, 3), 2, 3, (0, 1)),  # one output row (a single, cropped tile row)
    ((2, 3, 12, 12), 4, 5, (0, 0)),  # 5x5 valid, as MNIST's second layer (12 -> 8)
    ((1, 2, 8, 7), 3, 5, (2, 1)),  # 5x5 "same" on one axis, odd output width
    ((2, 2, 5, 6), 2, 5, (0, 4)),  # 5x5: one output row; padding k - 1 on the other axis
]


@pytest.fixture(params=[2, 4], ids=["F2x2", "F4x4"])
def tile(request, monkeypatch):
    """Run every case with both output tiles, for 3x3 and 5x5 kernels alike (by default 3x3 kernels
    take 4 x 4 tiles and 5x5 kernels the cheaper of the two for their output size)."""
    monkeypatch.setitem(winograd.OUTPUT_TILES, 3, (request.param,))
    monkeypatch.setitem(winograd.OUTPUT_TILES, 5, (request.param,))
    return request.param


def _case(rng, case, dtype, bias=True):
    x_shape, out_maps, k, padding = case
    x = rng.standard_normal(x_shape).astype(dtype)
    W = rng.standard_normal((out_maps, x_shape[1], k, k)).astype(dtype)
    b = rng.standard_normal(out_maps).astype(dtype) if bias else None
    return x, W, b, padding


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(rng, tile, case, dtype):
    x, W, b, padding = _case(rng, case, dtype)
    y, _ = winograd_conv_forward(x, W, b, padding)
    expected = reference.conv(x, W, b, 1, padding)
    assert y.dtype == dtype and y.shape == expected.shape
    if dtype == np.float32 and tile == 4 and case[2] == 5:
        # F(4x4, 5x5) in float32 is held to the documented bar of the F(4x4) tiles (2e-5 of the largest
        # value; see test_float32_error_on_a_realistic_layer), not to an element-wise 1e-5 on these
        # unscaled outputs (|y| up to 30): that one depends on the draw, not the method - F(2x2, 5x5)
        # itself misses it on 35% of random draws of case 5 (and passes at this seed), F(4x4, 5x5) on 90%.
        assert np.abs(y - expected).max() < 2e-5 * np.abs(expected).max()
    else:
        np.testing.assert_allclose(y, expected, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_loop_reference(rng, tile, case, dtype):
    x, W, b, padding = _case(rng, case, dtype)
    y, cache = winograd_conv_forward(x, W, b, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = winograd_conv_backward(dy, cache)
    expected = reference.conv_backward(x, W, dy, 1, padding)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    for got, want in zip(grads, expected):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol)
    none, dW_only, db_only = winograd_conv_backward(dy, cache, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(dW_only, grads[1])
    np.testing.assert_array_equal(db_only, grads[2])


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_finite_differences(rng, tile, case):
    x, W, b, padding = _case(rng, case, np.float64)
    y, cache = winograd_conv_forward(x, W, b, padding)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = winograd_conv_backward(dy, cache)

    def f():
        return winograd_conv_forward(x, W, b, padding)[0]

    # The convolution is linear in x, W and b, so a centred difference is exact whatever the step but
    # for rounding: a 1e-3 step keeps that rounding far below the bar (with 1e-6, entries near zero of
    # sums over many taps miss it by rounding alone, as in test_banded).
    for got, wrt in ((dx, x), (dW, W), (db, b)):
        assert relative_error(got, numerical_gradient(f, wrt, dy, eps=1e-3)) < 1e-6


@pytest.mark.parametrize("layer", ["3x3: 64 -> 64 maps, 16 x 16", "5x5: 32 -> 64 maps, 12 x 12 (MNIST)"])
def test_float32_error_on_a_realistic_layer(rng, layer):
    """F(4x4, 3x3) and F(4x4, 5x5) in float32: within 2e-5 of the float64 result relative to its
    largest entry (measured 4-8e-6 for 3x3, 5-6e-6 for 5x5; im2col about 7e-7), for the output and both
    gradients."""
    c, o, k, size, padding = (64, 64, 3, 16, (1, 1)) if layer.startswith("3x3") else (32, 64, 5, 12, (0, 0))
    x = rng.standard_normal((2, c, size, size))
    W = rng.standard_normal((o, c, k, k)) / np.sqrt(k * k * c)
    y64, cache64 = winograd_conv_forward(x, W, None, padding)
    assert cache64[4][3] == 4  # the 4 x 4 tile
    dy = rng.standard_normal(y64.shape)
    y32, cache32 = winograd_conv_forward(x.astype(np.float32), W.astype(np.float32), None, padding)
    exact = (y64,) + winograd_conv_backward(dy, cache64)[:2]
    single = (y32,) + winograd_conv_backward(dy.astype(np.float32), cache32)[:2]
    for got, want in zip(single, exact):
        assert got.dtype == np.float32
        assert np.abs(got - want).max() < 2e-5 * np.abs(want).max()


def test_no_bias(rng):
    x, W, _, padding = _case(rng, CASES[0], np.float64, bias=False)
    y, cache = winograd_conv_forward(x, W, None, padding)
    np.testing.assert_allclose(y, reference.conv(x, W, None, 1, padding), rtol=1e-12, atol=1e-12)
    assert winograd_conv_backward(np.ones_like(y), cache)[2].shape == (W.shape[0],)


def test_chunking_does_not_change_results(rng, monkeypatch):
    x, W, b, padding = _case(rng, ((7, 3, 6, 5), 4, 3, (1, 1)), np.float64)
    y, cache = winograd_conv_forward(x, W, b, padding)
    dy = rng.standard_normal(y.shape)
    grads = winograd_conv_backward(dy, cache)
    monkeypatch.setattr(winograd, "_CHUNK_ELEMENTS", 1)  # one item per chunk
    assert len(winograd._chunks(np, 7, 10)) == 7
    y1, cache1 = winograd_conv_forward(x, W, b, padding)
    np.testing.assert_allclose(y1, y, rtol=1e-13, atol=1e-13)
    for a, c in zip(winograd_conv_backward(dy, cache1), grads):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("m,r", sorted(winograd._MATRICES))
def test_matrices_compute_the_correlation(rng, m, r):
    """A^T [(G g) * (B^T d)] = (sum_k d[i + k] g[k]) for i < m: the 1-D identity the 2-D tiles nest."""
    at, g_mat, bt = winograd._MATRICES[(m, r)]
    for _ in range(5):
        d, g = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        expected = [d[i:i + r] @ g for i in range(m)]
        np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m,r", sorted(winograd._MATRICES))
def test_kernel_transform_is_g_g_gt_and_its_gradient_the_adjoint(rng, m, r):
    W = rng.standard_normal((3, 2, r, r))
    G = winograd._MATRICES[(m, r)][1]
    n = m + r - 1
    u = winograd.kernel_transform(W, m)  # (n^2, O, C)
    np.testing.assert_array_equal(winograd.kernel_transform(W, m, transposed=True), u.transpose(0, 2, 1))
    for o in range(3):
        for c in range(2):
            np.testing.assert_allclose(u[:, o, c].reshape(n, n), G @ W[o, c] @ G.T, rtol=1e-14, atol=1e-14)
    du_t = rng.standard_normal((n * n, 2, 3))  # (n^2, C, O)
    # <dU, U(W)> = <dW, W> for the adjoint
    lhs = np.sum(du_t.transpose(0, 2, 1) * u)
    np.testing.assert_allclose(lhs, np.sum(winograd.kernel_gradient(du_t, m, r) * W), rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (40, 7), (7, 3000), (1030, 9)])
def test_transpose_into(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    out = np.empty(shape[::-1], dtype=np.float32)
    winograd.transpose_into(out, x)
    np.testing.assert_array_equal(out, x.T)


@pytest.mark.parametrize("in_channels,out_channels,kernel,stride,groups,core", [
    (16, 16, 3, 1, 1, "winograd"),
    (32, 64, 3, 1, 1, "winograd"),
    (3, 32, 3, 1, 1, "batched"),  # too few input maps for the 16 thin GEMMs
    (16, 16, 3, 2, 1, "batched"),  # stride 2
    (16, 16, 3, 1, 2, "framewise"),  # groups
    (16, 32, 5, 1, 1, "winograd"),  # 5x5
    (6, 16, 5, 1, 1, "framewise"),  # 5x5 with few input maps (LeNet's second layer)
    (16, 16, 7, 1, 1, "framewise"),  # 7x7: no F(2x2, 7x7) here
])
def test_conv2d_routes_3x3_and_5x5_stride1_many_channel_layers_to_winograd(rng, in_channels, out_channels, kernel,
                                                                   stride, groups, core):
    layer = Conv2D(in_channels, out_channels, kernel, stride=stride, padding=1, groups=groups, rng=0,
                   dtype="float64")
    layer.params["b"][...] = rng.standard_normal(out_channels)
    x = rng.standard_normal((2, in_channels, 6, 7))
    y = layer.forward(x, training=True)
    assert layer._core == core
    np.testing.assert_allclose(y, reference.conv(x, layer.params["W"], layer.params["b"], stride, 1, groups),
                               rtol=1e-11, atol=1e-11)


def test_conv2d_winograd_gradients_match_finite_differences(rng):
    layer = Conv2D(16, 16, 3, padding=1, rng=0, dtype="float64")
    layer.params["b"][...] = rng.standard_normal(16)
    x = rng.standard_normal((1, 16, 3, 4))
    errors = check_layer_gradients(layer, x, eps=1e-3)  # linear layer: see above
    assert layer._core == "winograd"
    assert set(errors) == {"x", "W", "b"} and max(errors.values()) < 1e-6, errors
    # between the passes of training: the transformed input of every chunk and the transformed
    # kernels, not the input itself
    x_kept, transformed, u_t, w_kept, _ = layer._cache
    assert x_kept is None and w_kept is layer.params["W"]
    assert [v.shape for v in transformed] == [(6, 6, 1, 1, 16)] and u_t.shape == (36, 16, 16)


def test_backward_after_an_evaluation_forward_transforms_the_input_again(rng):
    """An evaluation forward keeps x, not V; a backward after it gives the training gradients exactly."""
    layer = Conv2D(16, 24, 3, padding=1, rng=0)
    x = rng.standard_normal((5, 16, 7, 6)).astype(np.float32)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    np.testing.assert_array_equal(layer.forward(x, training=False), y)
    x_kept, transformed = layer._cache[:2]
    assert x_kept is x and transformed is None
    np.testing.assert_array_equal(layer.backward(dy), dx)
    for key, grad in grads.items():
        np.testing.assert_array_equal(layer.grads[key], grad, err_msg=key)


def test_conv2d_winograd_without_input_gradient(rng):
    layer = Conv2D(16, 16, 3, padding=1, rng=0, dtype="float64", input_grad=False)
    x = rng.standard_normal((2, 16, 4, 4))
    y = layer.forward(x, training=True)
    assert layer.backward(np.ones_like(y)) is None
    _, dW, db = reference.conv_backward(x, layer.params["W"], np.ones_like(y), 1, 1)
    np.testing.assert_allclose(layer.grads["W"], dW, rtol=1e-11)
    np.testing.assert_allclose(layer.grads["b"], db, rtol=1e-11)


def test_output_tile_takes_the_fewest_transformed_elements():
    assert winograd.output_tile(3, (32, 32)) == 4
    assert winograd.output_tile(5, (8, 8)) == 4  # 64 x 4 against 36 x 16
    assert winograd.output_tile(5, (10, 10)) == 4  # 64 x 9 against 36 x 25
    assert winograd.output_tile(5, (2, 2)) == 2  # one tile either way: 36 against 64
    assert winograd.output_tile(5, (1, 9)) == 2  # 36 x 5 against 64 x 3


def test_backward_without_the_bias_gradient(rng):
    """need_db=False skips db (None in its place) and changes nothing else, kept V or not."""
    x, W, b, padding = _case(rng, CASES[0], np.float64)
    for keep in (True, False):
        y, cache = winograd_conv_forward(x, W, b, padding, keep_transformed=keep)
        dy = rng.standard_normal(y.shape)
        full, without = winograd_conv_backward(dy, cache), winograd_conv_backward(dy, cache, need_db=False)
        assert full[2].shape == (W.shape[0],) and without[2] is None
        for got, want in zip(without[:2], full[:2]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(3, 5, 7, 4), (2, 130, 64, 129), (2, 64, 70, 64)])
def test_stacked_products_equal_one_matmul(rng, shape):
    """Blocked into 64 x 64 outputs where the products are large (the second and third), one matmul
    otherwise: the same products to rounding (float32, as in training)."""
    s, rows, inner, cols = shape
    a = rng.standard_normal((s, rows, inner)).astype(np.float32)
    b = rng.standard_normal((s, inner, cols)).astype(np.float32)
    got = winograd.stacked_products(a, b)
    assert got.shape == (s, rows, cols) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.matmul(a.astype(np.float64), b.astype(np.float64)), rtol=1e-4, atol=1e-3)
    # a transposed view, as the weight-gradient product passes it
    at = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    np.testing.assert_allclose(winograd.stacked_products(at, b), got, rtol=1e-5, atol=1e-4)
