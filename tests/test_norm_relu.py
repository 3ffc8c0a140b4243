"""``NormReLU`` (BatchNorm then ReLU as one unit of a Sequential) against the two layers run one
after the other: the same numbers bit for bit (outputs, input gradients, parameter gradients,
running statistics), in both layouts, in training and evaluation, on one thread and on two; its
gradients against finite differences in float64; Sequential's grouping."""

import numpy as np
import pytest

import actionrec.models as models
from actionrec.nn import parallel
from actionrec.nn.gradcheck import numerical_gradient, relative_error
from actionrec.nn.layers import ReLU
from actionrec.nn.layout import lies_channels_last
from actionrec.nn.normalization import BatchNorm, NormReLU
from actionrec.nn.sequential import Sequential
from unit_helpers import units_and_layers


def channels_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose((0, a.ndim - 1) + tuple(range(1, a.ndim - 1)))


CASES = [  # shape, channels-last
    ((6, 5), False),  # (N, C): a dense layer's output
    ((3, 4, 5, 7), False),  # maps, C order
    ((3, 4, 5, 7), True),
    ((2, 3, 3, 4, 5), False),  # 3D maps
    ((2, 3, 3, 4, 5), True),
]
THREADED = ((5, 4, 6, 7), True)  # run with every pass split over two threads


def pair(c, dtype, rng):
    norm = BatchNorm(c, dtype=dtype)
    norm.params["W"][...] = rng.uniform(-1.5, 1.5, c)  # negative gammas too: the ReLU then clips the other side
    norm.params["b"][...] = rng.standard_normal(c)
    norm.buffers["running_mean"][...] = rng.standard_normal(c)
    norm.buffers["running_var"][...] = rng.uniform(0.5, 2, c)
    return norm, ReLU()


@pytest.mark.parametrize("case,dtype", [(case, dtype) for case in CASES for dtype in (np.float32, np.float64)]
                         + [(THREADED, np.float32), (THREADED, np.float64)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_the_two_layers_bit_for_bit(rng, monkeypatch, case, dtype, training):
    shape, last = case
    if case is THREADED:
        monkeypatch.setattr(parallel, "_PARALLEL_ELEMENTS", 1)
    norm, relu = pair(shape[1], dtype, rng)
    running = {k: v.copy() for k, v in norm.buffers.items()}
    x = rng.standard_normal(shape).astype(dtype) * 2 + 0.5
    x = channels_last(x) if last else x
    dy = rng.standard_normal(shape).astype(dtype)
    dy = channels_last(dy) if last else dy
    unit = NormReLU(norm, relu)
    y = unit.forward(x, training=training)
    assert unit._cache is not None and y.dtype == dtype and lies_channels_last(y) == last
    assert (y == 0).any() and (y > 0).any()
    dx = unit.backward(dy)
    got = [a.copy() for a in (y, dx, norm.grads["W"], norm.grads["b"], *norm.buffers.values())]
    for k, v in running.items():
        norm.buffers[k][...] = v
    y_ref = relu.forward(norm.forward(x, training=training), training=training)
    dx_ref = norm.backward(relu.backward(dy))
    want = [y_ref, dx_ref, norm.grads["W"], norm.grads["b"], *norm.buffers.values()]
    for name, a, b in zip(["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"], got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(rng, training):
    norm, relu = pair(3, np.float64, rng)
    unit = NormReLU(norm, relu)
    x = rng.standard_normal((4, 3, 3, 5))
    dy = rng.standard_normal(x.shape)
    saved = {k: v.copy() for k, v in norm.buffers.items()}

    def f():  # every evaluation from the same running statistics
        for k, v in saved.items():
            norm.buffers[k][...] = v
        return unit.forward(x, training=training)

    f()
    dx = unit.backward(dy)
    grads = {name: norm.grads[name].copy() for name in ("W", "b")}
    # on the scale of the largest entry: in training the clipped values still get a gradient through
    # the batch mean and variance, some of it tiny (3e-5), where the differences' own error (1e-9)
    # is a large part of the value
    numerical = numerical_gradient(f, x, dy)
    assert np.abs(dx - numerical).max() < 1e-7 * np.abs(numerical).max()
    for name, analytic in grads.items():
        assert relative_error(analytic, numerical_gradient(f, norm.params[name], dy)) < 1e-6, name


def test_shape_errors_name_the_layer():
    unit = NormReLU(BatchNorm(4, name="bn_a"), ReLU())
    with pytest.raises(Exception, match="bn_a"):
        unit.forward(np.zeros((2, 3, 5, 5), dtype=np.float32), training=True)


def test_sequential_fuses_norm_and_relu(rng):
    """cifar-vgg (narrowed): every BatchNorm followed by a ReLU (the first convolution of each stage)
    runs as one unit, the stage ends as ConvNormMaxPool; logits and gradients as with the layers."""
    kwargs = dict(input_shape=(3, 16, 16), widths=(16, 16, 16), dtype="float64")
    fused, plain = (models.build_model("cifar-vgg", 10, **kwargs) for _ in range(2))
    kinds = [type(u).__name__ for u in fused._units()]
    assert kinds.count("NormReLU") == 3 and kinds.count("ConvNormMaxPool") == 3
    assert "BatchNorm" not in kinds
    outs = units_and_layers(fused, plain, rng.standard_normal((4, 3, 16, 16)), mean=True)
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(outs[0][1], outs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
    # a BatchNorm not followed by a ReLU stays a layer
    alone = Sequential([BatchNorm(3, dtype="float64")])
    assert [type(u).__name__ for u in alone._units()] == ["BatchNorm"]
