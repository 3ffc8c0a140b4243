"""Parity with torch (a test oracle only): Dense, BatchNorm, weighted cross-entropy, SGD-Nesterov, Adam."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from actionrec.nn.layers import Dense  # noqa: E402
from actionrec.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from actionrec.nn.normalization import BatchNorm  # noqa: E402
from actionrec.nn.optim import SGD, Adam  # noqa: E402
from actionrec.nn.sequential import Sequential  # noqa: E402


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def test_dense_matches_torch_linear(rng):
    layer = Dense(5, 3, rng=0, dtype="float64")
    layer.params["b"][...] = rng.standard_normal(3)
    x = rng.standard_normal((4, 5))
    dy = rng.standard_normal((4, 3))
    tx, tw, tb = t(x, True), t(layer.params["W"], True), t(layer.params["b"], True)
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(t(dy))
    np.testing.assert_allclose(layer.forward(x, training=True), ty.detach().numpy(), rtol=1e-12)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], tw.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], tb.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 5), (2, 3, 3, 4, 4)])
def test_batchnorm_matches_torch(shape, rng):
    c = shape[1]
    ours = BatchNorm(c, momentum=0.3, eps=1e-4, dtype="float64")
    bn_cls = {2: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[len(shape)]
    theirs = bn_cls(c, momentum=0.3, eps=1e-4).double()
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    ours.params["W"][...], ours.params["b"][...] = gamma, beta
    with torch.no_grad():
        theirs.weight.copy_(t(gamma))
        theirs.bias.copy_(t(beta))
    for step in range(2):  # two training steps: running statistics accumulate the same way
        x = rng.standard_normal(shape) * 2 + step
        dy = rng.standard_normal(shape)
        tx = t(x, True)
        ty = theirs.train()(tx)
        ty.backward(t(dy))
        np.testing.assert_allclose(ours.forward(x, training=True), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), tx.grad.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(ours.grads["W"], theirs.weight.grad.numpy(), rtol=1e-10)
        np.testing.assert_allclose(ours.grads["b"], theirs.bias.grad.numpy(), rtol=1e-10)
        theirs.zero_grad()
    np.testing.assert_allclose(ours.buffers["running_mean"], theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.buffers["running_var"], theirs.running_var.numpy(), rtol=1e-12)
    x = rng.standard_normal(shape)
    tx = t(x, True)
    ty = theirs.eval()(tx)
    dy = rng.standard_normal(shape)
    ty.backward(t(dy))
    np.testing.assert_allclose(ours.forward(x, training=False), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.backward(dy), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weights", [None, [0.2, 1.0, 3.0, 0.5, 1.5]])
def test_cross_entropy_matches_torch(weights, rng):
    logits = rng.standard_normal((7, 5)) * 3
    labels = rng.integers(0, 5, 7)
    crit = SoftmaxCrossEntropy(class_weights=weights)
    tl = t(logits, True)
    loss = torch.nn.functional.cross_entropy(tl, torch.tensor(labels), weight=None if weights is None else t(weights))
    loss.backward()
    assert crit.forward(logits, labels) == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(crit.backward(), tl.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("ours_cls, torch_cls, kwargs", [
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (Adam, torch.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.01}),
])
def test_optimizer_steps_match_torch(ours_cls, torch_cls, kwargs, rng):
    model = Sequential([Dense(4, 3, rng=0, dtype="float64")])
    params = {name: torch.nn.Parameter(t(p.copy())) for name, p, _ in model.named_parameters()}
    ours, theirs = ours_cls(**kwargs), torch_cls(list(params.values()), **kwargs)
    model.zero_grads()
    for _ in range(3):
        for name, _, grad in model.named_parameters():
            grad[...] = rng.standard_normal(grad.shape)
            params[name].grad = t(grad.copy())
        ours.step(model)
        theirs.step()
        for name, p, _ in model.named_parameters():
            np.testing.assert_allclose(p, params[name].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adamw_matches_torch(rng):
    p = rng.standard_normal(6)
    ours_model = Sequential([Dense(3, 2, bias=False, dtype="float64")])
    ours_model.layers[0].params["W"][...] = p.reshape(2, 3)
    ours_model.zero_grads()
    tp = torch.nn.Parameter(t(p.reshape(2, 3)))
    ours = Adam(lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)
    theirs = torch.optim.AdamW([tp], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        g = rng.standard_normal((2, 3))
        ours_model.layers[0].grads["W"][...] = g
        tp.grad = t(g)
        ours.step(ours_model)
        theirs.step()
    np.testing.assert_allclose(ours_model.layers[0].params["W"], tp.detach().numpy(), rtol=1e-12)
