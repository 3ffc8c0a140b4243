"""Dense, Flatten, activations, Dropout and BatchNorm: gradients, references, shapes, errors."""

import numpy as np
import pytest

from actionrec.errors import ShapeError
from actionrec.nn.base import build_layer
from actionrec.nn.gradcheck import check_layer_gradients
from actionrec.nn.layers import Dense, Dropout, Flatten, ReLU, Tanh
from actionrec.nn.normalization import BatchNorm

TOL = 1e-6


def assert_gradients_ok(layer, x, **kw):
    errors = check_layer_gradients(layer, x, **kw)
    assert max(errors.values()) < TOL, errors


# ---- Dense -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias_groups", [1, 3])
@pytest.mark.parametrize("shape", [(1, 4), (5, 7)])
def test_dense_gradients(bias_groups, shape, rng):
    layer = Dense(shape[1], 3, bias_groups=bias_groups, rng=1, dtype="float64")
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    assert_gradients_ok(layer, rng.standard_normal(shape))


# fewer rows than outputs: forward computes the transpose of W @ x.T (a column-major y)
@pytest.mark.parametrize("rows, outputs", [(5, 3), (2, 6)])
def test_dense_matches_loop_reference(rng, rows, outputs):
    layer = Dense(4, outputs, bias_groups=2, rng=0, dtype="float64")
    layer.params["b"][...] = rng.standard_normal((outputs, 2))
    x = rng.standard_normal((rows, 4))
    W, b = layer.params["W"], layer.params["b"]
    expected = np.zeros((rows, outputs))
    for n in range(rows):
        for o in range(outputs):
            expected[n, o] = sum(W[o, f] * x[n, f] for f in range(4)) + b[o, 0] + b[o, 1]
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12)
    dy = rng.standard_normal((rows, outputs))
    dx = layer.backward(dy)
    for n in range(rows):
        for f in range(4):
            assert dx[n, f] == pytest.approx(sum(dy[n, o] * W[o, f] for o in range(outputs)), rel=1e-12)
    for o in range(outputs):
        for f in range(4):
            assert layer.grads["W"][o, f] == pytest.approx(sum(dy[n, o] * x[n, f] for n in range(rows)), rel=1e-12)
    assert layer.grads["W"].flags.c_contiguous  # as the parameter: the optimizer's passes run in order
    # each bias column gets the whole batch-summed gradient
    np.testing.assert_allclose(layer.grads["b"], np.stack([dy.sum(0)] * 2, axis=1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_dtype_init_and_config(dtype):
    layer = Dense(10, 4, init="lecun", rng=0, dtype=dtype)
    assert layer.params["W"].dtype == dtype and layer.params["b"].dtype == dtype
    assert layer.forward(np.ones((2, 10), dtype=dtype)).dtype == dtype
    assert np.abs(layer.params["W"]).max() <= np.sqrt(3 / 10)  # fan_in = in_features
    assert np.all(layer.params["b"] == 0)
    rebuilt = build_layer("Dense", layer.config())
    assert rebuilt.config() == layer.config()
    assert rebuilt.params["W"].shape == (4, 10)
    assert Dense(10, 4, bias=False).params.keys() == {"W"}
    assert Dense(10, 4, bias_groups=5).params["b"].shape == (4, 5)


def test_dense_rejects_wrong_input():
    with pytest.raises(ShapeError, match=r"expects input \(N, 6\).*Flatten"):
        Dense(6, 2).forward(np.zeros((2, 3, 2), np.float32))


# ---- shape-only layers and activations ------------------------------------------------------------
def test_flatten_round_trip(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    f = Flatten()
    y = f.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(f.backward(y), x)
    assert f.output_shape((7, 3, 4, 5)) == (7, 60)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5)])
def test_tanh_gradients_and_values(shape, rng):
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(Tanh().forward(x), np.tanh(x))
    assert_gradients_ok(Tanh(), x)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 5)])
def test_relu_gradients_and_values(shape, rng):
    x = rng.standard_normal(shape)
    x[np.abs(x) < 0.05] = 0.5  # keep finite differences away from the kink
    np.testing.assert_array_equal(ReLU().forward(x), np.where(x > 0, x, 0))
    assert_gradients_ok(ReLU(), x)


# ---- Dropout -----------------------------------------------------------------------------------
def test_dropout_gradients_with_frozen_mask(rng):
    layer = Dropout(0.4, seed=3)
    layer.freeze_mask = True
    assert_gradients_ok(layer, rng.standard_normal((6, 5)))


def test_dropout_statistics_and_identity():
    layer = Dropout(0.25, seed=0)
    x = np.ones((200, 100), np.float32)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # inverted dropout keeps the mean
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)
    assert layer.forward(x, training=False) is x
    np.testing.assert_array_equal(layer.backward(x), x)


def test_dropout_reseed_restarts_the_mask_sequence():
    x = np.ones((4, 50))
    layer = Dropout(0.5, seed=7)
    first = layer.forward(x, training=True)
    layer.forward(x, training=True)
    layer.reseed(7)
    np.testing.assert_array_equal(layer.forward(x, training=True), first)
    layer.reseed(8)
    assert layer.config()["seed"] == 8
    np.testing.assert_array_equal(layer.forward(x, training=True), Dropout(0.5, seed=8).forward(x, training=True))


def test_dropout_seeded_and_fresh_masks():
    x = np.ones((4, 50))
    a, b = Dropout(0.5, seed=7), Dropout(0.5, seed=7)
    first = a.forward(x, training=True)
    np.testing.assert_array_equal(first, b.forward(x, training=True))
    assert not np.array_equal(first, a.forward(x, training=True))  # new mask each step
    assert Dropout(0.5, rng=np.random.default_rng(1)).config()["seed"] == \
        Dropout(0.5, rng=np.random.default_rng(1)).config()["seed"]
    with pytest.raises(ValueError):
        Dropout(1.0)


# ---- BatchNorm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 3, 4), (2, 2, 3, 2, 3)])
def test_batchnorm_training_gradients(shape, rng):
    layer = BatchNorm(shape[1], dtype="float64")
    layer.params["W"][...] = rng.uniform(0.5, 1.5, shape[1])
    layer.params["b"][...] = rng.standard_normal(shape[1])
    assert_gradients_ok(layer, rng.standard_normal(shape) * 2 + 1)


def test_batchnorm_eval_gradients(rng):
    layer = BatchNorm(3, dtype="float64")
    layer.buffers["running_mean"][...] = [0.5, -1, 2]
    layer.buffers["running_var"][...] = [2, 0.5, 1]
    assert_gradients_ok(layer, rng.standard_normal((4, 3, 2)), training=False)


def test_batchnorm_matches_loop_reference(rng):
    x = rng.standard_normal((4, 2, 3)) * 3 + 1
    layer = BatchNorm(2, momentum=0.2, eps=1e-3, dtype="float64")
    y = layer.forward(x, training=True)
    for c in range(2):
        values = x[:, c].ravel()
        mean, var = values.mean(), values.var()
        np.testing.assert_allclose(y[:, c], (x[:, c] - mean) / np.sqrt(var + 1e-3), rtol=1e-10)
        np.testing.assert_allclose(layer.buffers["running_mean"][c], 0.2 * mean)
        np.testing.assert_allclose(layer.buffers["running_var"][c], 0.8 + 0.2 * values.var(ddof=1))
    # evaluation uses the running statistics
    rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
    y_eval = layer.forward(x, training=False)
    np.testing.assert_allclose(y_eval, (x - rm[None, :, None]) / np.sqrt(rv[None, :, None] + 1e-3))


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_batchnorm_float32_statistics_survive_a_large_mean(offset, rng):
    """One-pass moments in float32: a mean 1000 times the spread must not cancel the variance away."""
    x = (rng.standard_normal((16, 3, 8, 8)) + offset).astype(np.float32)
    layer = BatchNorm(3, momentum=1.0)
    y = layer.forward(x, training=True)
    exact = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(layer.buffers["running_mean"], exact.mean(axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.buffers["running_var"], exact.var(axis=1, ddof=1), rtol=1e-4)
    reference = (x - exact.mean(axis=1)[None, :, None, None]) / np.sqrt(exact.var(axis=1)[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, reference, atol=1e-3)


def test_batchnorm_errors():
    with pytest.raises(ShapeError, match=r"\(N, 3, \.\.\.\)"):
        BatchNorm(3).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ShapeError, match="batch size > 1"):
        BatchNorm(3).forward(np.zeros((1, 3), np.float32), training=True)
