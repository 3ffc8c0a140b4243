"""The pieces learn together: a tiny MLP fits two interleaved spirals (not linearly separable)."""

import numpy as np
import pytest

from actionrec.nn.layers import Dense, Tanh
from actionrec.nn.losses import SoftmaxCrossEntropy
from actionrec.nn.normalization import BatchNorm
from actionrec.nn.optim import make_optimizer
from actionrec.nn.sequential import Sequential


def two_spirals(n_per_class=100, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1, n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0, 0.02, (2 * n_per_class, 2))
    y = np.repeat([0, 1], n_per_class)
    return x.astype(np.float32), y


def train(model, optimizer, x, y, steps):
    crit = SoftmaxCrossEntropy()
    losses = []
    for _ in range(steps):
        losses.append(crit.forward(model.forward(x, training=True), y))
        model.backward(crit.backward())
        optimizer.step(model)
    return losses


@pytest.mark.parametrize("opt_name, lr, batchnorm", [("adam", 0.01, False), ("sgd", 0.1, True)])
def test_mlp_learns_two_spirals(opt_name, lr, batchnorm):
    x, y = two_spirals()
    hidden = [BatchNorm(32)] if batchnorm else []
    model = Sequential([Dense(2, 32, rng=0), Tanh(), Dense(32, 32, rng=1), *hidden, Tanh(), Dense(32, 2, rng=2)])
    kw = {"momentum": 0.9, "nesterov": True} if opt_name == "sgd" else {}
    losses = train(model, make_optimizer(opt_name, lr=lr, **kw), x, y, steps=400)
    assert losses[0] > 0.6  # starts near chance (log 2)
    assert losses[-1] < 0.1, losses[::50]
    accuracy = (model.predict(x).argmax(axis=1) == y).mean()
    assert accuracy > 0.97
