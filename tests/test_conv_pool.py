"""The fused units of ``actionrec.nn.conv_pool`` (a first convolution + 2x2 max pooling; a Winograd
convolution + BatchNorm + 2x2 max pooling) against the layers run one after the other: the outputs
(to the last bits), the tie-breaking, the gradients to rounding (and against finite
differences in float64), the fallbacks, and Sequential's grouping."""

import numpy as np
import pytest

import actionrec.models as models
from actionrec.errors import ShapeError
from actionrec.nn.conv import Conv2D
from actionrec.nn.conv_pool import (
    ConvMaxPool,
    ConvNormMaxPool,
    conv_max_pool_backward,
    conv_max_pool_forward,
    max_of_planes,
    spread_to_planes,
)
from actionrec.nn.gradcheck import numerical_gradient, relative_error
from actionrec.nn.layers import Flatten, ReLU
from actionrec.nn.layout import lies_channels_last
from actionrec.nn.normalization import BatchNorm
from actionrec.nn.pool import MaxPool2D
from actionrec.nn.sequential import Sequential
from unit_helpers import units_and_layers

# Output maps from 25 up: Conv2D runs such layers on the batched core, which the fused pass replaces
# (thinner ones go to the banded core, and the pair is not fused).
CASES = [  # x shape (N, C, H, W), output maps, kernel, padding
    ((3, 1, 12, 12), 32, (5, 5), (0, 0)),  # MNIST-like first layer
    ((2, 3, 10, 8), 25, (3, 3), (1, 1)),  # CIFAR-like, padded, not square
    ((5, 2, 9, 11), 30, (4, 2), (0, 0)),  # rectangular kernel
    ((1, 1, 7, 7), 40, (2, 2), (0, 0)),  # a single item, 6 x 6 output
]


def layers_for(case, dtype, seed=0, bias=True):
    x_shape, o, kernel, padding = case
    conv = Conv2D(x_shape[1], o, kernel, padding=padding, bias=bias, rng=seed, dtype=dtype, input_grad=False)
    return conv, MaxPool2D(2)


def separate(conv, pool, x, dy):
    y = pool.forward(conv.forward(x, training=True), training=True)
    conv.backward(pool.backward(dy))
    return y, conv.grads["W"].copy(), conv.grads.get("b")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])  # backward from kept columns, or unfolding again
def test_matches_the_two_layers(rng, case, dtype, training):
    conv, pool = layers_for(case, dtype)
    conv.params["b"][...] = rng.standard_normal(conv.params["b"].shape)
    x = rng.standard_normal(case[0]).astype(dtype)
    unit = ConvMaxPool(conv, pool)
    y = unit.forward(x, training=training)
    assert unit._cache is not None, "the fused pass should have run"
    assert y.dtype == dtype and lies_channels_last(y) or y.shape[1] == 1
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert unit.backward(dy) is None
    dW, db = conv.grads["W"].copy(), conv.grads["b"].copy()
    y_ref, dW_ref, db_ref = separate(conv, pool, x, dy)
    # The same sums in another row order of one GEMM: equal up to the last bit or two, since
    # OpenBLAS may round an edge tile differently (seen in float32 with its Haswell kernels).
    assert np.abs(y - y_ref).max() <= 4 * np.finfo(dtype).eps * np.abs(y_ref).max()
    # summed in another order (tap-major rows): equal to rounding, relative to the largest entry
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in ((dW, dW_ref), (db, db_ref)):
        assert np.abs(got - want).max() <= tol * np.abs(want).max()
    assert dW.shape == conv.params["W"].shape and dW.dtype == dtype and db.dtype == dtype


def test_ties_go_to_the_first_tap_in_row_major_order(rng):
    """Small integers make many windows tie exactly; which tap gets the gradient changes dW, and
    integer sums are exact, so the fused dW must equal the layers' dW to the bit."""
    conv, pool = layers_for(((4, 2, 10, 10), 32, (3, 3), (0, 0)), np.float64)
    conv.params["W"][...] = rng.integers(-1, 2, conv.params["W"].shape)
    conv.params["b"][...] = 0
    x = rng.integers(0, 2, (4, 2, 10, 10)).astype(np.float64)
    unit = ConvMaxPool(conv, pool)
    y = unit.forward(x, training=True)
    taps = conv_max_pool_forward(x, conv.params["W"], None, (0, 0))[1][2]
    assert sum(int(np.sum(w)) for chunk in taps for w in chunk) > 0  # some windows move right or down
    dy = rng.integers(1, 4, y.shape).astype(np.float64)
    unit.backward(dy)
    dW, db = conv.grads["W"].copy(), conv.grads["b"].copy()
    y_ref, dW_ref, db_ref = separate(conv, pool, x, dy)
    assert np.array_equal(y, y_ref)
    np.testing.assert_array_equal(dW, dW_ref)
    np.testing.assert_array_equal(db, db_ref)


@pytest.mark.parametrize("keep_columns", [False, True])
def test_gradients_match_finite_differences(rng, keep_columns):
    """Both backward paths: columns unfolded again (evaluation forward) and kept from the forward."""
    conv, pool = layers_for(((2, 2, 8, 10), 25, (3, 3), (1, 1)), np.float64)
    x = rng.standard_normal((2, 2, 8, 10))
    W, b = conv.params["W"], conv.params["b"]
    b[...] = rng.standard_normal(b.shape)
    y, cache = conv_max_pool_forward(x, W, b, (1, 1), keep_columns=keep_columns)
    assert all((cols is not None) == keep_columns for cols in cache[3])
    dy = rng.standard_normal(y.shape)
    dW, db = conv_max_pool_backward(dy, cache, W.shape)

    def f():
        return conv_max_pool_forward(x, W, b, (1, 1))[0]

    assert relative_error(dW, numerical_gradient(f, W, dy)) < 1e-7
    assert relative_error(db, numerical_gradient(f, b, dy)) < 1e-7


def test_without_bias(rng):
    conv, pool = layers_for(CASES[1], np.float64, bias=False)
    x = rng.standard_normal(CASES[1][0])
    unit = ConvMaxPool(conv, pool)
    y = unit.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    unit.backward(dy)
    assert unit._cache is not None and "b" not in conv.grads
    dW = conv.grads["W"].copy()
    y_ref, dW_ref, _ = separate(conv, pool, x, dy)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dW, dW_ref, rtol=1e-12)


def test_backward_takes_either_layout(rng):
    conv, pool = layers_for(CASES[0], np.float64)
    x = rng.standard_normal(CASES[0][0])
    unit = ConvMaxPool(conv, pool)
    y = unit.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    unit.backward(np.ascontiguousarray(dy))  # C order
    dW_c = conv.grads["W"].copy()
    unit.backward(y * 0 + dy)  # laid out as y (channels-last)
    np.testing.assert_allclose(conv.grads["W"], dW_c, rtol=1e-13)


def test_falls_back_to_the_layers_where_the_fused_pass_does_not_apply(rng):
    cases = [
        (Conv2D(1, 32, 4, rng=0, dtype="float64", input_grad=False), MaxPool2D(2), (2, 1, 8, 8)),  # odd output (5 x 5)
        (Conv2D(1, 32, 3, stride=2, rng=0, dtype="float64", input_grad=False), MaxPool2D(2), (2, 1, 9, 9)),
        (Conv2D(2, 32, 3, rng=0, dtype="float64", input_grad=False), MaxPool2D(2, stride=1), (2, 2, 8, 8)),
        (Conv2D(2, 32, 3, groups=2, rng=0, dtype="float64", input_grad=False), MaxPool2D(2), (2, 2, 8, 8)),
        (Conv2D(2, 4, 3, rng=0, dtype="float64", input_grad=False), MaxPool2D(2), (2, 2, 8, 8)),  # thin: banded
        (Conv2D(16, 16, 3, padding=1, rng=0, dtype="float64", input_grad=False), MaxPool2D(2),
         (2, 16, 8, 8)),  # Winograd
        (Conv2D(2, 32, 3, rng=0, dtype="float64", input_grad=True), MaxPool2D(2), (2, 2, 8, 8)),  # needs dx
    ]
    for conv, pool, shape in cases:
        x = rng.standard_normal(shape)
        unit = ConvMaxPool(conv, pool)
        y = unit.forward(x, training=True)
        assert unit._cache is None
        dy = rng.standard_normal(y.shape)
        dx = unit.backward(dy)
        y_ref, dW_ref, _ = separate(conv, pool, x, dy)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_allclose(conv.grads["W"], dW_ref, rtol=1e-13)
        assert (dx is None) == (not conv.input_grad)


def test_shape_errors_name_the_layer():
    unit = ConvMaxPool(Conv2D(1, 2, 5, input_grad=False), MaxPool2D(2))
    with pytest.raises(ShapeError, match="conv2d"):
        unit.forward(np.zeros((2, 3, 12, 12), np.float32))


def test_sequential_fuses_a_first_convolution_and_its_pool(rng):
    """mnist-2conv: the first conv and its pool run as one unit (the ReLU between them moved after the
    pool); logits and every gradient as with the layers one by one."""
    fused = models.build_model("mnist-2conv", 10, input_shape=(1, 16, 16), widths=(4, 16), hidden=8,
                               dtype="float64", dropout=0.0)
    plain = models.build_model("mnist-2conv", 10, input_shape=(1, 16, 16), widths=(4, 16), hidden=8,
                               dtype="float64", dropout=0.0)
    units = fused._units()
    assert type(units[0]) is ConvMaxPool and units[0].conv is fused.layers[0]
    assert [type(u).__name__ for u in units[1:3]] == ["ReLU", "Conv2D"]  # the second conv has dx: not fused
    outs = units_and_layers(fused, plain, rng.standard_normal((3, 1, 16, 16)))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_sequential_keeps_unfusable_pairs_apart():
    model = Sequential([Conv2D(1, 32, 3, input_grad=True), ReLU(), MaxPool2D(2), Flatten()])
    assert [type(u).__name__ for u in model._units()] == ["Conv2D", "MaxPool2D", "ReLU", "Flatten"]
    model.layers[0].input_grad = False
    assert type(model._units()[0]) is ConvMaxPool


# --- the pooling planes shared by both units -----------------------------------------------------
def test_max_of_planes_and_its_spread_match_max_pool_2d(rng):
    """Small integers tie often: the winners, and so where the gradient goes, must be MaxPool2D's."""
    x = rng.integers(0, 3, (3, 4, 6, 8)).astype(np.float64)
    pool = MaxPool2D(2)
    y_ref = pool.forward(x, training=True)
    planes = [x[:, :, r::2, s::2] for r in range(2) for s in range(2)]
    y = np.empty_like(y_ref)
    winners = max_of_planes(planes, y)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.integers(1, 5, y.shape).astype(np.float64)
    dx_ref = pool.backward(dy)
    dx = np.empty_like(x)
    spread_to_planes(dy, winners, [dx[:, :, r::2, s::2] for r in range(2) for s in range(2)])
    np.testing.assert_array_equal(dx, dx_ref)


# --- convolution, BatchNorm and max pooling ---------------------------------------------------------
NORM_CASES = [  # x shape, output maps, kernel, padding (Winograd layers: 16 maps and more in and out)
    ((3, 16, 8, 8), 16, 3, 1),  # CIFAR-like
    ((2, 16, 6, 10), 24, 3, 1),
    ((2, 16, 12, 12), 16, 5, 0),  # 5x5, 8 x 8 output
]


def norm_layers(case, dtype, input_grad=True, seed=0):
    x_shape, o, k, padding = case
    return (Conv2D(x_shape[1], o, k, padding=padding, rng=seed, dtype=dtype, input_grad=input_grad),
            BatchNorm(o, dtype=dtype), MaxPool2D(2))


@pytest.mark.parametrize("case", NORM_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("gammas", ["positive", "mixed"])
def test_conv_norm_pool_matches_the_three_layers(rng, case, dtype, training, gammas):
    """Positive gammas: the unit pools before normalising. Negative or zero ones: it pools the
    normalised values (a zero gamma makes every window a tie, won by its first tap)."""
    conv, norm, pool = norm_layers(case, dtype)
    norm.params["W"][...] = rng.uniform(0.5, 1.5, norm.params["W"].shape)
    if gammas == "mixed":
        norm.params["W"][::3] *= -1
        norm.params["W"][1] = 0
    norm.params["b"][...] = rng.standard_normal(norm.params["b"].shape)
    norm.buffers["running_var"][...] = rng.uniform(0.5, 2, norm.num_features)
    running = {k: v.copy() for k, v in norm.buffers.items()}
    x = rng.standard_normal(case[0]).astype(dtype)
    unit = ConvNormMaxPool(conv, norm, pool)
    y = unit.forward(x, training=training)
    assert unit._cache is not None, "the fused pass should have run"
    fused_running = {k: v.copy() for k, v in norm.buffers.items()}
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = unit.backward(dy)
    got = [y, dx, conv.grads["W"], conv.grads["b"], norm.grads["W"], norm.grads["b"]]
    got = [a.copy() for a in got]
    for k, v in running.items():
        norm.buffers[k][...] = v
    y_ref = pool.forward(norm.forward(conv.forward(x, training=training), training=training), training=training)
    dx_ref = conv.backward(norm.backward(pool.backward(dy)))
    want = [y_ref, dx_ref, conv.grads["W"], conv.grads["b"], norm.grads["W"], norm.grads["b"]]
    tol = 2e-5 if dtype == np.float32 else 1e-11
    for name, a, b in zip(["y", "dx", "dW", "db", "dgamma", "dbeta"], got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        # db is zero up to rounding in training (BatchNorm removes the mean): compare on dy's scale
        assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1.0), name
    for k in running:  # on the scale of the largest entry, as above: a running mean near zero is a
        # cancelling sum whose own relative error says nothing (one at 6e-5 of 3e-2 differed by 5e-5)
        a, b = fused_running[k], norm.buffers[k]
        assert np.abs(a - b).max() <= tol * np.abs(b).max(), k


def test_conv_norm_pool_without_input_gradient(rng):
    conv, norm, pool = norm_layers(NORM_CASES[0], np.float64, input_grad=False)
    unit = ConvNormMaxPool(conv, norm, pool)
    y = unit.forward(rng.standard_normal(NORM_CASES[0][0]), training=True)
    assert unit._cache is not None and unit.backward(np.ones_like(y)) is None
    assert conv.grads["W"].shape == conv.params["W"].shape


def test_winograd_pooling_taps_reorders_positions(rng):
    """The tap-major output holds the same values as the plain one, and backward takes dout in the
    same order: the results match the plain core's."""
    from actionrec.nn.winograd import winograd_conv_backward, winograd_conv_forward
    x = rng.standard_normal((2, 16, 8, 10))
    W, b = rng.standard_normal((16, 16, 3, 3)) / 12, rng.standard_normal(16)
    y, cache = winograd_conv_forward(x, W, b, (1, 1))
    taps, taps_cache = winograd_conv_forward(x, W, b, (1, 1), pooling_taps=True)
    assert taps.shape == (2, 16, 2, 2, 4, 5) and lies_channels_last(taps)
    for r in range(2):
        for s in range(2):
            np.testing.assert_array_equal(taps[:, :, r, s], y[:, :, r::2, s::2])
    with pytest.raises(ValueError, match="even output size"):
        winograd_conv_forward(x[:, :, :7], W, b, (1, 1), pooling_taps=True)
    dy = rng.standard_normal(y.shape)
    dy_taps = np.stack([np.stack([dy[:, :, r::2, s::2] for s in range(2)], axis=2) for r in range(2)], axis=2)
    for got, want in zip(winograd_conv_backward(dy_taps, taps_cache), winograd_conv_backward(dy, cache)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_norm_pool_falls_back_where_it_does_not_apply(rng):
    cases = [
        (Conv2D(16, 16, 4, rng=0, dtype="float64"), (2, 16, 8, 8)),  # 4x4 kernel: not Winograd
        (Conv2D(16, 16, 3, rng=0, dtype="float64"), (2, 16, 9, 9)),  # odd output (7 x 7)
        (Conv2D(2, 4, 3, padding=1, rng=0, dtype="float64"), (2, 2, 8, 8)),  # few maps: not Winograd
    ]
    for conv, shape in cases:
        norm, pool = BatchNorm(conv.out_channels, dtype="float64"), MaxPool2D(2)
        x = rng.standard_normal(shape)
        unit = ConvNormMaxPool(conv, norm, pool)
        y = unit.forward(x, training=True)
        assert unit._cache is None
        dy = rng.standard_normal(y.shape)
        dx = unit.backward(dy)
        y_ref = pool.forward(norm.forward(conv.forward(x, training=True), training=True), training=True)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12)
        np.testing.assert_allclose(dx, conv.backward(norm.backward(pool.backward(dy))), rtol=1e-12)


def test_sequential_fuses_convolution_norm_and_pool(rng):
    """cifar-vgg (narrowed): every stage's last convolution, its BatchNorm and the pool run as one
    unit; logits and every gradient as with the layers one by one."""
    kwargs = dict(input_shape=(3, 16, 16), widths=(16, 16, 16), dtype="float64")
    fused, plain = (models.build_model("cifar-vgg", 10, **kwargs) for _ in range(2))
    kinds = [type(u).__name__ for u in fused._units()]
    assert kinds.count("ConvNormMaxPool") == 3 and "MaxPool2D" not in kinds
    outs = units_and_layers(fused, plain, rng.standard_normal((4, 3, 16, 16)), mean=True)
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(outs[0][1], outs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_moments_and_pool_is_statistics_and_pool_planes_in_one_pass(rng, monkeypatch):
    """The one-pass forward of a training ConvNormMaxPool: the same statistics as
    BatchNorm.statistics bit for bit (same blocks, same sums; running statistics too), the same
    pooled values and winners as pool_planes, on one thread and split over two."""
    from actionrec.nn import parallel
    from actionrec.nn.conv_pool import moments_and_pool, pool_planes
    from actionrec.nn.layout import empty_in_layout
    for threshold in (parallel._PARALLEL_ELEMENTS, 1):
        monkeypatch.setattr(parallel, "_PARALLEL_ELEMENTS", threshold)
        taps = empty_in_layout(np, (5, 6, 2, 2, 3, 4), np.float32, last=True)
        taps[...] = rng.standard_normal(taps.shape) * 3 + 1
        norms = [BatchNorm(6, dtype="float32") for _ in range(2)]
        outs = [empty_in_layout(np, (5, 6, 3, 4), np.float32, last=True) for _ in range(2)]
        statistics, winners = moments_and_pool(norms[0], taps, outs[0])
        want_statistics, want_winners = norms[1].statistics(taps, True), pool_planes(taps, outs[1])
        for got, want in zip(statistics + winners, want_statistics + want_winners):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(outs[0], outs[1])
        for name in ("running_mean", "running_var"):
            np.testing.assert_array_equal(norms[0].buffers[name], norms[1].buffers[name])
