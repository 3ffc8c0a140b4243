"""The batched im2col convolution core against the plain-loop reference, its gradients against
centred finite differences in float64, and Conv2D's routing to it."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.nn import batched_conv, reference
from actionrec.nn.batched_conv import batched_conv_backward, batched_conv_forward
from actionrec.nn.conv import Conv2D
from actionrec.nn.gradcheck import check_layer_gradients, numerical_gradient, relative_error

CASES = [  # x shape, W shape, stride, padding, groups
    ((2, 3, 7, 6), (4, 3, 3, 2), (1, 1), (0, 0), 1),
    ((1, 4, 9, 8), (6, 2, 3, 3), (2, 1), (1, 0), 2),  # batch 1, groups, stride on one axis
    ((3, 3, 8, 9), (3, 1, 3, 3), (1, 1), (1, 1), 3),  # depthwise, "same" padding: adjoint dx
    ((2, 2, 11, 7), (5, 2, 5, 3), (3, 2), (2, 1), 1),  # stride > 1 on both axes, odd sizes
    ((2, 2, 6, 5, 7), (4, 1, 2, 3, 2), (2, 1, 3), (1, 0, 1), 2),  # three spatial axes
    ((5, 2, 6, 6), (4, 2, 3, 3), (1, 1), (2, 2), 1),  # padding k - 1: full correlation
]


def _case(rng, case, dtype):
    x_shape, w_shape, stride, padding, groups = case
    x = rng.standard_normal(x_shape).astype(dtype)
    W = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, W, b, stride, padding, groups


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(rng, case, dtype):
    x, W, b, stride, padding, groups = _case(rng, case, dtype)
    y, _ = batched_conv_forward(x, W, b, stride, padding, groups)
    expected = reference.conv(x, W, b, stride, padding, groups)
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_loop_reference(rng, case, dtype):
    x, W, b, stride, padding, groups = _case(rng, case, dtype)
    y, cache = batched_conv_forward(x, W, b, stride, padding, groups)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dW, db = batched_conv_backward(dy, cache)
    expected = reference.conv_backward(x, W, dy, stride, padding, groups)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    for got, want in zip((dx, dW, db), expected):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol)
    none, dW_only, db_only = batched_conv_backward(dy, cache, need_dx=False)
    assert none is None  # (dW by another route when dx comes from the adjoint: equal up to rounding)
    np.testing.assert_allclose(dW_only, dW, **tol)
    np.testing.assert_allclose(db_only, db, **tol)


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_finite_differences(rng, case):
    x, W, b, stride, padding, groups = _case(rng, case, np.float64)
    y, cache = batched_conv_forward(x, W, b, stride, padding, groups)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = batched_conv_backward(dy, cache)

    def f():
        return batched_conv_forward(x, W, b, stride, padding, groups)[0]

    for got, wrt in ((dx, x), (dW, W), (db, b)):
        assert relative_error(got, numerical_gradient(f, wrt, dy)) < 1e-6


@pytest.mark.parametrize("case", [CASES[2], CASES[5]])
def test_adjoint_and_fold_input_gradients_agree(rng, monkeypatch, case):
    x, W, b, stride, padding, groups = _case(rng, case, np.float64)
    y, cache = batched_conv_forward(x, W, b, stride, padding, groups)
    dy = rng.standard_normal(y.shape)
    assert batched_conv._by_adjoint(x.shape, y.shape[2:], W.shape[2:], stride, padding)
    by_adjoint = batched_conv_backward(dy, cache)
    monkeypatch.setattr(batched_conv, "_by_adjoint", lambda *args: False)
    by_fold = batched_conv_backward(dy, cache)
    for a, f in zip(by_adjoint, by_fold):
        np.testing.assert_allclose(a, f, rtol=1e-12, atol=1e-12)


def test_chunking_does_not_change_results(rng, monkeypatch):
    x, W, b, stride, padding, groups = _case(rng, ((7, 4, 9, 8), (6, 2, 3, 3), (1, 2), (1, 1), 2), np.float64)
    y, cache = batched_conv_forward(x, W, b, stride, padding, groups)
    dy = rng.standard_normal(y.shape)
    grads = batched_conv_backward(dy, cache)
    monkeypatch.setattr(batched_conv, "_COLS_ELEMENTS", 1)  # one item per chunk
    assert len(batched_conv._item_chunks(np, 7, 10)) == 7
    y1, cache1 = batched_conv_forward(x, W, b, stride, padding, groups)
    np.testing.assert_allclose(y1, y, rtol=1e-13)
    for a, c in zip(batched_conv_backward(dy, cache1), grads):
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("out_channels,stride,batched", [(32, 1, True), (4, 1, False), (4, 2, True)])
def test_conv2d_uses_the_batched_core_for_wide_or_strided_layers(rng, out_channels, stride, batched):
    layer = Conv2D(3, out_channels, 3, stride=stride, padding=1, rng=0, dtype="float64")
    x = rng.standard_normal((2, 3, 8, 8))
    y = layer.forward(x)
    assert (layer._core == "batched") == batched
    np.testing.assert_allclose(y, reference.conv(x, layer.params["W"], layer.params["b"], stride, 1), rtol=1e-12,
                               atol=1e-12)
    # between the passes only the (padded) input is held, never the column matrix
    cached = [a for a in layer._cache if isinstance(a, np.ndarray) and a is not layer.params["W"]]
    assert sum(a.size for a in cached) <= 1.6 * x.size


def test_conv2d_batched_gradients_match_finite_differences(rng):
    layer = Conv2D(2, 26, (3, 2), stride=(1, 2), padding=(1, 0), rng=0, dtype="float64")
    layer.params["b"][...] = rng.standard_normal(26)
    x = rng.standard_normal((2, 2, 5, 6))
    errors = check_layer_gradients(layer, x)
    assert layer._core == "batched"
    assert set(errors) == {"x", "W", "b"} and max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("case", [CASES[0], CASES[3], ((3, 3, 8, 8), (32, 3, 3, 3), (1, 1), (1, 1), 1)])
def test_kept_columns_and_skipped_bias_gradient_change_nothing_else(rng, case):
    """A first layer in training keeps its column matrices for backward, which then reads them
    instead of unfolding x again (the same numbers bit for bit, for either layout of dY); without
    ``need_db`` backward skips db and returns None in its place."""
    x, W, b, stride, padding, groups = _case(rng, case, np.float32)
    y, cache = batched_conv_forward(x, W, b, stride, padding, groups)
    y_kept, cache_kept = batched_conv_forward(x, W, b, stride, padding, groups, keep_columns=True)
    np.testing.assert_array_equal(y_kept, y)
    assert cache[-1] is None and cache_kept[-1] is not None  # kept on the channels-last path
    in_c_order = rng.standard_normal(y.shape).astype(np.float32)
    laid_out_as_y = np.empty_like(y)  # channels-last
    laid_out_as_y[...] = in_c_order
    for dy in (in_c_order, laid_out_as_y):
        want = batched_conv_backward(dy, cache, need_dx=False)
        got = batched_conv_backward(dy, cache_kept, need_dx=False)
        assert got[0] is None
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
        no_db = batched_conv_backward(dy, cache_kept, need_dx=False, need_db=False)
        assert no_db[2] is None
        np.testing.assert_array_equal(no_db[1], want[1])
    # with dx, by the adjoint (stride 1, "same" padding) or by folding
    full, without_db = batched_conv_backward(dy, cache), batched_conv_backward(dy, cache, need_db=False)
    assert without_db[2] is None
    for got, want in zip(without_db[:2], full[:2]):
        np.testing.assert_array_equal(got, want)


def test_conv2d_keeps_columns_only_for_a_first_layer_in_training(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    first, later = (Conv2D(3, 32, 3, padding=1, bias=False, input_grad=grad, rng=0) for grad in (False, True))
    for layer in (first, later):
        layer.forward(x, training=True)
        assert layer._core == "batched"
    assert first._cache[-1] is not None and later._cache[-1] is None
    first.forward(x, training=False)
    assert first._cache[-1] is None
    dy = rng.standard_normal((2, 32, 8, 8)).astype(np.float32)
    first.forward(x, training=True)
    first.backward(dy)
    later.forward(x, training=True)
    later.backward(dy)
    assert "b" not in first.grads
    np.testing.assert_allclose(first.grads["W"], later.grads["W"], rtol=1e-4, atol=1e-4)
