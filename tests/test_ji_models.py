"""The Ji et al. nets: shapes and parameter counts as published, options, and an end-to-end gradient check."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.errors import ActionrecError
from actionrec.models import MODELS, build_model
from actionrec.models.ji import JiGeometry, build_ji
from actionrec.nn.gradcheck import check_layer_gradients

# A Ji-shaped net small enough for finite differences: 4 frames of 12x10, temporal kernels of 2.
TINY = JiGeometry(frames=4, height=12, width=10, c2_kernel=(3, 3), s3=2, c4_kernel=(2, 1), s5=2, features=5,
                  temporal=2)


def param_counts(model):
    return {layer.name: layer.num_parameters() for layer in model.layers if layer.num_parameters()}


def test_trecvid_parameter_count_is_the_published_295458():
    model = build_model("ji-trecvid", 3)
    assert param_counts(model) == {"C2": 1480, "S3": 92, "C4": 3810, "S5": 156, "C6": 289536, "output": 384}
    assert model.num_parameters() == 295_458


def test_trecvid_layer_shapes_follow_the_paper():
    model = build_model("ji-trecvid", 3)
    assert MODELS["ji-trecvid"].input_shape == (1, 33, 60, 40)
    x = np.zeros((2, 1, 33, 60, 40), dtype=np.float32)
    shapes = {}
    for layer in model.layers:
        x = layer.forward(x)
        shapes[layer.name] = x.shape[1:]
    assert shapes["C2"] == (2, 23, 54, 34)   # 23 frames x 2 sets of 54x34 maps
    assert shapes["S3"] == (2, 23, 27, 17)
    assert shapes["C4"] == (6, 13, 21, 12)   # 13 x 6 maps of 21x12
    assert shapes["S5"] == (6, 13, 7, 4)     # 78 maps of 7x4
    assert shapes["C6"] == (128,)
    assert shapes["output"] == (3,)


@pytest.mark.parametrize("classes", [2, 6])
def test_kth_shapes_and_parameter_count(classes):
    model = build_model("ji-kth", classes)
    assert MODELS["ji-kth"].input_shape == (1, 43, 60, 80)  # 9 frames of 80 wide x 60 high
    x = np.zeros((1, 1, 43, 60, 80), dtype=np.float32)
    shapes = {}
    for layer in model.layers:
        x = layer.forward(x)
        shapes[layer.name] = x.shape[1:]
    assert shapes["C2"] == (2, 33, 54, 72)
    assert shapes["S3"] == (2, 33, 18, 24)
    assert shapes["C4"] == (6, 23, 12, 18)
    assert shapes["S5"] == (6, 23, 4, 6)     # the 6x4 (W x H) C6 kernel covers the whole map
    assert x.shape == (1, classes)
    # C2: 5 x (2 x 3*7*9 + 2); S3: 2*33*2; C4: 5 x (6 x 3*7*7 + 6); S5: 6*23*2; C6: 138*24*128 + 128*138
    assert param_counts(model) == {"C2": 1900, "S3": 132, "C4": 4440, "S5": 276, "C6": 441_600,
                                   "output": 128 * classes}


def test_modern_options_change_only_what_they_say():
    base = param_counts(build_model("ji-trecvid", 3))
    shared = param_counts(build_model("ji-trecvid", 3, kernels="shared"))
    assert shared["C2"] == base["C2"] // 5 and shared["C4"] == base["C4"] // 5
    maxpool = param_counts(build_model("ji-trecvid", 3, pooling="max"))
    assert "S3" not in maxpool and "S5" not in maxpool and maxpool["C6"] == base["C6"]
    relu = build_model("ji-trecvid", 3, activation="relu")
    assert "ReLU" in {type(layer).__name__ for layer in relu.layers}
    assert "Tanh" not in {type(layer).__name__ for layer in relu.layers}
    drop = build_model("ji-trecvid", 3, dropout=0.5)
    assert sum(type(layer).__name__ == "Dropout" for layer in drop.layers) == 2
    assert drop.num_parameters() == 295_458


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (build_model("ji-small", 6, seed=s) for s in (1, 1, 2))
    wa, wb, wc = (np.concatenate([p.ravel() for _, p, _ in m.named_parameters()]) for m in (a, b, c))
    assert np.array_equal(wa, wb)
    assert not np.array_equal(wa, wc)


@pytest.mark.parametrize("option,value", [("activation", "sigmoid"), ("pooling", "avg"), ("kernels", "some"),
                                          ("dropout", 1.0)])
def test_bad_options_are_clear_errors(option, value):
    with pytest.raises(ActionrecError, match=option):
        build_model("ji-kth", 6, **{option: value})


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ActionrecError, match="ji-kth"):
        build_model("ji-huge", 6)


class LossOfModel:
    """The loss of a Sequential as a layer, so ``check_layer_gradients`` checks every parameter end to end."""

    def __init__(self, model, labels):
        from actionrec.nn import SoftmaxCrossEntropy

        self.model, self.labels = model, labels
        self.criterion = SoftmaxCrossEntropy()
        # The very arrays the model uses: perturbing them in place perturbs the model.
        self.params = {name: p for name, p, _ in model.named_parameters()}
        self.grads = {}

    def forward(self, x, training=True):
        return np.array([self.criterion.forward(self.model.forward(x, training=training), self.labels)])

    def backward(self, dy):
        self.model.backward(self.criterion.backward() * float(dy[0]))
        self.grads = {name: g for name, _, g in self.model.named_parameters()}


@pytest.mark.parametrize("pooling,kernels,activation", [("subsampling", "per-channel", "tanh"),
                                                        ("subsampling", "shared", "tanh"),
                                                        ("max", "per-channel", "tanh")])
def test_end_to_end_gradients_of_a_small_ji_net(pooling, kernels, activation):
    rng = np.random.default_rng(0)
    model = build_ji(TINY, 3, pooling=pooling, kernels=kernels, activation=activation, seed=3, dtype="float64")
    # Non-zero biases and subsampling offsets so every parameter's gradient is exercised.
    for _, p, _ in model.named_parameters():
        p += 0.1 * rng.standard_normal(p.shape)
    x = rng.standard_normal((3,) + TINY.input_shape)
    errors = check_layer_gradients(LossOfModel(model, np.array([0, 2, 1])), x, check_input=False)
    assert set(errors) == {name for name, _, _ in model.named_parameters()}
    assert max(errors.values()) < 1e-5, errors
