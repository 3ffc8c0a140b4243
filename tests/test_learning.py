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


# Settings that converge for every initialisation tried (5 seeds each, final loss < 0.05). Full-batch
# SGD with Nesterov momentum at lr 0.1 through BatchNorm is chaotic here: two float64 runs that differ
# by 1e-10 after 50 steps differ by 1e-3 after 100, so whether step 400 landed on a spike depended on
# rounding, not on the layers.
@pytest.mark.parametrize("opt_name, kw, batchnorm", [
    ("adam", {"lr": 0.01}, False),
    ("sgd", {"lr": 0.3, "momentum": 0.9, "nesterov": True}, False),
    ("adam", {"lr": 0.01}, True),
    ("sgd", {"lr": 0.1, "momentum": 0.9}, True),
])
def test_mlp_learns_two_spirals(opt_name, kw, batchnorm):
    x, y = two_spirals()
    hidden = [BatchNorm(32)] if batchnorm else []
    model = Sequential([Dense(2, 32, rng=0), Tanh(), Dense(32, 32, rng=1), *hidden, Tanh(), Dense(32, 2, rng=2)])
    losses = train(model, make_optimizer(opt_name, **kw), x, y, steps=400)
    assert losses[0] > 0.6  # starts near chance (log 2)
    assert losses[-1] < 0.1, losses[::50]
    accuracy = (model.predict(x).argmax(axis=1) == y).mean()
    assert accuracy > 0.97
