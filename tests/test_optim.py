"""Optimizers against scalar hand computations, state round trips, schedules' values."""

import math

import h5py
import numpy as np
import pytest

from actionrec.errors import ActionrecError
from actionrec.nn.layers import Dense, Tanh
from actionrec.nn.optim import (SGD, Adam, ConstantLR, CosineLR, RMSProp, StepLR, make_optimizer,
                                make_schedule)
from actionrec.nn.sequential import Sequential
from actionrec.nn.serialization import read_state, write_state

GRADS = [0.5, 0.25, -1.0]  # gradient of the single parameter at steps 1, 2, 3


class OneParameter:
    """Stands in for a model: one parameter with a gradient set by the test."""

    def __init__(self, value=1.0, dtype=np.float64):
        self.p = np.array([value], dtype=dtype)
        self.g = np.zeros(1, dtype=dtype)

    def named_parameters(self):
        yield "w.W", self.p, self.g


def run(opt, grads=GRADS, value=1.0):
    model = OneParameter(value)
    values = []
    for g in grads:
        model.g[0] = g
        opt.step(model)
        values.append(float(model.p[0]))
    return values


def test_sgd_hand_computed():
    assert run(SGD(lr=0.1)) == pytest.approx([0.95, 0.925, 1.025])
    # momentum 0.9: buffers 0.5, 0.7, -0.37
    assert run(SGD(lr=0.1, momentum=0.9)) == pytest.approx([0.95, 0.88, 0.917])
    # Nesterov: steps g + 0.9 * buf = 0.95, 0.88, -1.333
    assert run(SGD(lr=0.1, momentum=0.9, nesterov=True)) == pytest.approx([0.905, 0.817, 0.9503])
    # L2: g + 0.5 * p -> 1.0 at p=1 -> p=0.9; then 0.25 + 0.45 = 0.7 -> 0.83
    assert run(SGD(lr=0.1, weight_decay=0.5), GRADS[:2]) == pytest.approx([0.9, 0.83])


def test_rmsprop_hand_computed():
    p, v, expected = 1.0, 0.0, []
    for g in GRADS:
        v = 0.9 * v + 0.1 * g * g
        p -= 0.01 * g / (math.sqrt(v) + 1e-8)
        expected.append(p)
    assert expected[0] == pytest.approx(1 - 0.01 / math.sqrt(0.1))
    assert run(RMSProp(lr=0.01, alpha=0.9)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("weight_decay, decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_hand_computed(weight_decay, decoupled):
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p, m, v, expected = 1.0, 0.0, 0.0, []
    for t, g in enumerate(GRADS, start=1):
        if decoupled:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
        expected.append(p)
    opt = Adam(lr=lr, weight_decay=weight_decay, decoupled_weight_decay=decoupled)
    assert run(opt) == pytest.approx(expected, rel=1e-9)
    if weight_decay == 0:
        assert expected[0] == pytest.approx(0.9)  # bias correction: the first step is lr * sign(g)


def test_skips_parameters_without_gradient_and_updates_in_place():
    model = Sequential([Dense(2, 2, rng=0), Tanh()])
    before = {name: (p, p.copy()) for name, p, _ in model.named_parameters()}
    SGD(lr=1.0).step(model)  # no backward yet: nothing to do
    for p, copy in before.values():
        np.testing.assert_array_equal(p, copy)
    model.zero_grads()
    model.layers[0].grads["W"][...] = 1.0
    SGD(lr=0.5).step(model)
    after = dict((name, p) for name, p, _ in model.named_parameters())
    assert after["dense.W"] is before["dense.W"][0]  # same array object: in-place update
    np.testing.assert_allclose(after["dense.W"], before["dense.W"][1] - 0.5)


@pytest.mark.parametrize("opt_name, kwargs", [("sgd", {"momentum": 0.9, "nesterov": True}),
                                              ("rmsprop", {}), ("adam", {"weight_decay": 0.01}),
                                              ("adamw", {"weight_decay": 0.01})])
def test_state_round_trip_continues_identically(tmp_path, opt_name, kwargs):
    original = make_optimizer(opt_name, lr=0.05, **kwargs)
    model = OneParameter()
    for g in GRADS[:2]:
        model.g[0] = g
        original.step(model)
    with h5py.File(tmp_path / "opt.h5", "w") as f:
        write_state(f.create_group("optimizer"), original.state_dict())
    with h5py.File(tmp_path / "opt.h5", "r") as f:
        saved = read_state(f["optimizer"])
    restored = make_optimizer(opt_name, lr=1.0)  # hyperparameters come from the state
    restored.load_state_dict(saved)
    assert restored.hyperparameters() == original.hyperparameters()
    twin = OneParameter()
    twin.p[...] = model.p
    model.g[0] = twin.g[0] = GRADS[2]
    original.step(model)
    restored.step(twin)
    assert twin.p[0] == model.p[0]


def test_make_optimizer_and_state_errors():
    assert isinstance(make_optimizer("SGD", lr=0.3), SGD) and make_optimizer("sgd", lr=0.3).lr == 0.3
    assert make_optimizer("adam").lr == 1e-3
    with pytest.raises(ActionrecError, match="unknown optimizer 'lbfgs'"):
        make_optimizer("lbfgs")
    with pytest.raises(ActionrecError, match="unexpected keyword"):
        make_optimizer("rmsprop", momentum=0.9)
    with pytest.raises(ActionrecError, match="same --optimizer"):
        Adam().load_state_dict(SGD().state_dict())


def test_schedules():
    assert ConstantLR(0.1)(50) == 0.1
    step = StepLR(1.0, step_size=3, gamma=0.5)
    assert [step(e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cos = CosineLR(1.0, total_epochs=10, min_lr=0.1, warmup_epochs=2)
    values = [cos(e) for e in range(12)]
    assert values[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert values[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert values[10:] == pytest.approx([0.1, 0.1])
    assert all(a >= b for a, b in zip(values[2:], values[3:]))
    assert make_schedule("cosine", 1.0, 10)(0) == 1.0
    assert make_schedule("step", 1.0, 9)(3) == pytest.approx(0.1)
    assert make_schedule("constant", 0.2, 9)(8) == 0.2
    with pytest.raises(ActionrecError, match="unknown learning-rate schedule"):
        make_schedule("poly", 1.0, 10)
    with pytest.raises(ActionrecError, match="warmup_epochs"):
        make_schedule("cosine", 1.0, 10, warmup_epochs=10)
