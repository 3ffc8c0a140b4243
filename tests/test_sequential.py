"""Sequential: chaining, unique names, end-to-end gradients, parameters, summary, predict, casts."""

import numpy as np
import pytest

from actionrec.errors import ShapeError
from actionrec.nn.gradcheck import numerical_gradient, relative_error
from actionrec.nn.layers import Dense, Flatten, ReLU, Tanh
from actionrec.nn.normalization import BatchNorm
from actionrec.nn.sequential import Sequential


def mlp(dtype="float32", seed=0):
    return Sequential([Flatten(), Dense(6, 5, rng=seed, dtype=dtype), Tanh(),
                       Dense(5, 3, bias_groups=2, rng=seed + 1, dtype=dtype)])


def test_unique_names_and_named_parameters():
    model = Sequential([Dense(2, 2), Tanh(), Dense(2, 2), Tanh(), Dense(2, 2, name="head"), Dense(2, 2, name="head")])
    assert [layer.name for layer in model.layers] == ["dense", "tanh", "dense_1", "tanh_1", "head", "head_1"]
    names = [name for name, _, _ in model.named_parameters()]
    assert names == ["dense.W", "dense.b", "dense_1.W", "dense_1.b", "head.W", "head.b", "head_1.W", "head_1.b"]
    assert model.num_parameters() == 4 * (2 * 2 + 2)
    assert all(grad is None for _, _, grad in model.named_parameters())
    model.zero_grads()
    assert all(np.all(grad == 0) for _, _, grad in model.named_parameters())


def test_whole_model_gradients(rng):
    """Dense-Tanh-Dense end to end: every parameter and the input against finite differences."""
    model = mlp("float64")
    for _, p, _ in model.named_parameters():
        p[...] = rng.standard_normal(p.shape) * 0.5
    x = rng.standard_normal((4, 2, 3))
    y = model.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy)

    def f():
        return model.forward(x, training=True)

    assert relative_error(dx, numerical_gradient(f, x, dy)) < 1e-6
    analytic = {name: grad.copy() for name, _, grad in model.named_parameters()}
    for name, param, _ in model.named_parameters():
        assert relative_error(analytic[name], numerical_gradient(f, param, dy)) < 1e-6, name


class StopGradient(Tanh):
    """Stands in for a first convolution with input_grad=False."""

    def backward(self, dy):
        super().backward(dy)
        return None


def test_backward_stops_at_layer_returning_none(rng):
    first = Dense(3, 3, rng=0)
    model = Sequential([first, StopGradient(), Dense(3, 2, rng=1)])
    model.forward(rng.standard_normal((2, 3)).astype(np.float32), training=True)
    assert model.backward(np.ones((2, 2), np.float32)) is None
    assert first.grads == {}  # never reached


def test_summary_table():
    model = Sequential([Flatten(), Dense(12, 4, rng=0), BatchNorm(4), ReLU(), Dense(4, 2, rng=1)])
    text = model.summary((3, 4))
    lines = text.splitlines()
    assert lines[0].split() == ["#", "layer", "type", "output", "shape", "params"]
    assert "(12,)" in lines[3] and "flatten" in lines[3]
    assert "dense_1" in lines[7] and "(2,)" in lines[7] and lines[7].endswith("10")
    assert "BatchNorm" in text and lines[-1] == "total parameters: 70"
    with pytest.raises(ShapeError, match=r"summary for input shape \(3, 5\)"):
        model.summary((3, 5))


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_predict_in_batches_matches_forward(batch_size, rng):
    model = Sequential([Dense(4, 6, rng=0), BatchNorm(6), Tanh(), Dense(6, 3, rng=1)])
    model.forward(rng.standard_normal((8, 4)).astype(np.float32), training=True)  # move running stats
    x = rng.standard_normal((7, 4))  # float64 input is cast to the model's dtype
    out = model.predict(x, batch_size=batch_size)
    assert out.shape == (7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, model.forward(x.astype(np.float32)), rtol=1e-5, atol=1e-6)


def test_astype_and_to_numpy(rng):
    model = mlp().astype(np.float64).to(np)
    assert model.dtype == np.float64 and model.xp is np
    assert model.forward(rng.standard_normal((2, 6))).dtype == np.float64
    assert all(layer.config().get("dtype", "float64") == "float64" for layer in model.layers)


def test_empty_model_rejected():
    with pytest.raises(ValueError):
        Sequential([])


@pytest.mark.gpu
def test_cupy_path_matches_numpy(rng):
    """The same model on CuPy gives the numpy results (skipped without a CUDA device)."""
    from actionrec.backend import gpu_available, to_numpy
    from actionrec.nn.layers import Dropout
    from actionrec.nn.losses import SoftmaxCrossEntropy
    from actionrec.nn.optim import Adam

    ok, why = gpu_available()
    if not ok:
        pytest.skip(why)
    import cupy

    def build():
        return Sequential([Flatten(), Dense(6, 8, rng=0, dtype="float64"), BatchNorm(8, dtype="float64"),
                           Tanh(), Dropout(0.0), Dense(8, 3, bias_groups=2, rng=1, dtype="float64")])

    x, y = rng.standard_normal((5, 2, 3)), np.array([0, 1, 2, 1, 0])
    results = []
    for xp, model in ((np, build()), (cupy, build().to(cupy))):
        crit, opt = SoftmaxCrossEntropy([1.0, 2.0, 0.5]), Adam(lr=0.01)
        for _ in range(2):
            loss = crit.forward(model.forward(xp.asarray(x), training=True), y)
            model.backward(crit.backward())
            opt.step(model)
        assert model.xp is xp
        results.append((loss, to_numpy(model.predict(x)), [to_numpy(p) for _, p, _ in model.named_parameters()]))
    (loss_np, pred_np, params_np), (loss_cp, pred_cp, params_cp) = results
    assert loss_cp == pytest.approx(loss_np, rel=1e-10)
    np.testing.assert_allclose(pred_cp, pred_np, rtol=1e-9, atol=1e-12)
    for a, b in zip(params_cp, params_np):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _in_listed_order(model, x, dy):
    """Forward and backward through model.layers one by one, as listed (no reordering)."""
    for layer in model.layers:
        x = layer.forward(x, training=True)
    y = x
    for layer in reversed(model.layers):
        dy = layer.backward(dy)
    return y, dy, {name: grad.copy() for name, _, grad in model.named_parameters()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pool", ["2d", "3d", "3x3 stride 2"])
def test_relu_before_max_pooling_runs_after_it_with_the_same_numbers(rng, dtype, pool):
    """A ReLU followed by max pooling runs after the pooling: outputs, input gradient and parameter
    gradients equal, bit for bit, those of the layers run as listed, windows of ties included."""
    from actionrec.nn.conv import Conv2D, Conv3D
    from actionrec.nn.pool import MaxPool2D, MaxPool3D

    if pool == "3d":
        conv, pooling, x_shape = Conv3D(2, 3, 2, rng=1, dtype=dtype), MaxPool3D(2), (3, 2, 5, 6, 7)
    else:
        pooling = MaxPool2D(2) if pool == "2d" else MaxPool2D(3, stride=2)
        conv, x_shape = Conv2D(2, 3, 3, padding=1, rng=1, dtype=dtype), (3, 2, 9, 8)
    features = int(np.prod(pooling.output_shape(conv.output_shape(x_shape))[1:]))
    relu = ReLU()
    model = Sequential([conv, relu, pooling, Flatten(), Dense(features, 4, rng=2, dtype=dtype)])
    assert model.run_order()[:3] == [conv, pooling, relu]
    x = rng.standard_normal(x_shape).astype(dtype)
    x[0] = 0  # the first item: every window of the convolution's output ties at its bias (0)
    x[1, :, ::2] = -np.abs(x[1, :, ::2])  # some negative and some tied windows
    dy = rng.standard_normal((x_shape[0], 4)).astype(dtype)

    expected_y, expected_dx, expected_grads = _in_listed_order(model, x, dy)
    y = model.forward(x, training=True)
    dx = model.backward(dy)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(dx, expected_dx)
    for name, _, grad in model.named_parameters():
        np.testing.assert_array_equal(grad, expected_grads[name], err_msg=name)
    assert np.any(expected_dx != 0)


def test_run_order_swaps_only_relu_then_max_pooling():
    from actionrec.nn.pool import AvgPool2D, MaxPool2D

    relu, pool, avg, tanh, relu2, pool2 = ReLU(), MaxPool2D(2), AvgPool2D(2), Tanh(), ReLU(), MaxPool2D(2)
    model = Sequential([relu, avg, tanh, pool, relu2, pool2, Flatten()])
    assert model.run_order() == [relu, avg, tanh, pool, pool2, relu2, model.layers[-1]]
    assert model.layers == [relu, avg, tanh, pool, relu2, pool2, model.layers[-1]]  # the list is untouched
    lone = Sequential([ReLU(), MaxPool2D(2)])
    assert [type(layer).__name__ for layer in lone.run_order()] == ["MaxPool2D", "ReLU"]
