"""2D baselines for MNIST and CIFAR-10, built from the same layers as the 3D action nets.

Every builder is ``builder(num_classes, input_shape=None, activation=..., seed=0, dtype="float32")``
and returns a ``Sequential``. ``input_shape`` is (C, H, W) (default: the model's registered shape);
``seed`` (an int or a ``np.random.Generator``) feeds one generator that all layers draw from in
order, so a seed fixes the model.

- ``lenet5``: LeCun et al. 1998 as cnn_np does it: conv5x5-6, pool, conv5x5-16, pool, dense 120, 84,
  classes. On 28 x 28 inputs the first convolution pads by 2 (the paper's 32 x 32 frame). Max pooling
  instead of the paper's trainable subsampling; activation ReLU by default (``activation="tanh"``
  for the original squashing).
- ``numpycnn``: the one-convolution net of numpyCNN: conv5x5-32, ReLU, max-pool 2, dense 128, classes.
- ``mnist-2conv``: two 5x5 convolutions (32, 64 maps, valid) each followed by ReLU and 2x2 max pooling,
  dense 256, dropout 0.5, classes: the net that reaches >= 99.3% on MNIST within minutes on 2 cores.
- ``cifar-vgg``: VGG-style stages of two conv3x3 (padding 1) + BatchNorm + ReLU and a 2x2 max pool,
  widths (32, 64, 128) by default (``convs_per_stage`` an int or one count per stage), then dropout
  and a dense classifier.
"""

from __future__ import annotations

import numpy as np

from actionrec.errors import ActionrecError
from actionrec.models import ModelSpec, register_model

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)


def _nn():
    # Imported on use: the layer modules are heavier than the registry that lists model names.
    import actionrec.nn.conv as conv
    import actionrec.nn.layers as layers
    import actionrec.nn.normalization as normalization
    import actionrec.nn.pool as pool
    import actionrec.nn.sequential as sequential

    return conv, pool, layers, normalization, sequential


def _activation(name: str):
    _, _, layers, _, _ = _nn()
    kinds = {"relu": layers.ReLU, "tanh": layers.Tanh}
    if name not in kinds:
        raise ActionrecError(f"unknown activation {name!r}: choose one of {', '.join(kinds)}")
    return kinds[name]()


def _shape(input_shape, default) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in (input_shape or default))
    if len(shape) != 3 or min(shape) < 1:
        raise ActionrecError(f"input_shape must be (channels, height, width), got {input_shape}")
    return shape


def _init_for(activation: str) -> str:
    # LeCun rather than He scaling for ReLU: in these shallow nets max pooling raises the scale at
    # every stage, and He-initialised logits start with a standard deviation of ~3 (initial loss ~6).
    return "lecun" if activation == "relu" else "xavier"


def build_lenet5(num_classes, input_shape=None, activation="relu", seed=0, dtype="float32"):
    conv, pool, layers, _, sequential = _nn()
    c, h, w = _shape(input_shape, MNIST_SHAPE)
    rng = np.random.default_rng(seed)
    init = _init_for(activation)
    pad = 2 if (h, w) == (28, 28) else 0
    h1, w1 = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
    h2, w2 = (h1 - 4) // 2, (w1 - 4) // 2
    if h2 < 1 or w2 < 1:
        raise ActionrecError(f"lenet5 needs inputs of at least 28 x 28 (or 32 x 32 unpadded), got {h} x {w}")
    net = [
        conv.Conv2D(c, 6, 5, padding=pad, init=init, rng=rng, dtype=dtype, input_grad=False),
        _activation(activation), pool.MaxPool2D(2),
        conv.Conv2D(6, 16, 5, init=init, rng=rng, dtype=dtype),
        _activation(activation), pool.MaxPool2D(2),
        layers.Flatten(),
        layers.Dense(16 * h2 * w2, 120, init=init, rng=rng, dtype=dtype), _activation(activation),
        layers.Dense(120, 84, init=init, rng=rng, dtype=dtype), _activation(activation),
        layers.Dense(84, num_classes, init="xavier", rng=rng, dtype=dtype),
    ]
    return sequential.Sequential(net, name="lenet5")


def build_numpycnn(num_classes, input_shape=None, activation="relu", seed=0, dtype="float32"):
    conv, pool, layers, _, sequential = _nn()
    c, h, w = _shape(input_shape, MNIST_SHAPE)
    rng = np.random.default_rng(seed)
    init = _init_for(activation)
    net = [
        conv.Conv2D(c, 32, 5, init=init, rng=rng, dtype=dtype, input_grad=False),
        _activation(activation), pool.MaxPool2D(2),
        layers.Flatten(),
        layers.Dense(32 * ((h - 4) // 2) * ((w - 4) // 2), 128, init=init, rng=rng, dtype=dtype),
        _activation(activation),
        layers.Dense(128, num_classes, init="xavier", rng=rng, dtype=dtype),
    ]
    return sequential.Sequential(net, name="numpycnn")


def build_mnist_2conv(num_classes, input_shape=None, activation="relu", seed=0, dtype="float32",
                      widths=(32, 64), hidden=256, dropout=0.5):
    conv, pool, layers, _, sequential = _nn()
    c, h, w = _shape(input_shape, MNIST_SHAPE)
    rng = np.random.default_rng(seed)
    init = _init_for(activation)
    w1, w2 = widths
    side_h, side_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    net = [
        conv.Conv2D(c, w1, 5, init=init, rng=rng, dtype=dtype, input_grad=False),
        _activation(activation), pool.MaxPool2D(2),
        conv.Conv2D(w1, w2, 5, init=init, rng=rng, dtype=dtype),
        _activation(activation), pool.MaxPool2D(2),
        layers.Flatten(),
        layers.Dense(w2 * side_h * side_w, hidden, init=init, rng=rng, dtype=dtype),
        _activation(activation),
        layers.Dropout(dropout, seed=int(rng.integers(2**31))),
        layers.Dense(hidden, num_classes, init="xavier", rng=rng, dtype=dtype),
    ]
    return sequential.Sequential(net, name="mnist-2conv")


def build_cifar_vgg(num_classes, input_shape=None, activation="relu", seed=0, dtype="float32",
                    widths=(32, 64, 128), convs_per_stage=2, dropout=0.3):
    conv, pool, layers, normalization, sequential = _nn()
    c, h, w = _shape(input_shape, CIFAR_SHAPE)
    rng = np.random.default_rng(seed)
    init = _init_for(activation)
    counts = (convs_per_stage,) * len(widths) if isinstance(convs_per_stage, int) else tuple(convs_per_stage)
    if len(counts) != len(widths) or min(counts) < 1:
        raise ActionrecError(f"convs_per_stage {convs_per_stage} must be >= 1 for each of the {len(widths)} stages")
    net = []
    channels = c
    for width, count in zip(widths, counts):
        for _ in range(count):
            # No conv bias: BatchNorm's beta replaces it.
            net.append(conv.Conv2D(channels, width, 3, padding=1, bias=False, init=init, rng=rng,
                                   dtype=dtype, input_grad=bool(net)))
            net.append(normalization.BatchNorm(width, dtype=dtype))
            net.append(_activation(activation))
            channels = width
        net.append(pool.MaxPool2D(2))
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ActionrecError(f"cifar-vgg with {len(widths)} pooling stages needs larger inputs than {input_shape}")
    net += [layers.Flatten(), layers.Dropout(dropout, seed=int(rng.integers(2**31))),
            layers.Dense(channels * h * w, num_classes, init="xavier", rng=rng, dtype=dtype)]
    return sequential.Sequential(net, name="cifar-vgg")


register_model(ModelSpec("lenet5", build_lenet5, MNIST_SHAPE,
                         "LeNet-5: conv5x5-6, pool, conv5x5-16, pool, dense 120-84 (ReLU)", kind="image"))
register_model(ModelSpec("numpycnn", build_numpycnn, MNIST_SHAPE,
                         "numpyCNN's net: conv5x5-32, max-pool, dense 128", kind="image"))
register_model(ModelSpec("mnist-2conv", build_mnist_2conv, MNIST_SHAPE,
                         "two conv5x5 (32, 64) + pools, dense 256, dropout: MNIST >= 99.3%", kind="image"))
register_model(ModelSpec("cifar-vgg", build_cifar_vgg, CIFAR_SHAPE,
                         "VGG-style conv3x3+BatchNorm stages (32, 64, 128) for CIFAR-10", kind="image"))

DEFAULT_MODELS = {"mnist": "mnist-2conv", "cifar10": "cifar-vgg"}
