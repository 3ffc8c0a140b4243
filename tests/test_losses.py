"""Softmax cross-entropy: values against a direct formula, gradients, weights, errors."""

import numpy as np
import pytest

from actionrec.errors import ShapeError
from actionrec.nn.gradcheck import numerical_gradient, relative_error
from actionrec.nn.losses import SoftmaxCrossEntropy, softmax


def reference_loss(logits, labels, weights=None):
    losses, ws = [], []
    for row, label in zip(logits, labels):
        p = np.exp(row) / np.exp(row).sum()
        w = 1.0 if weights is None else weights[label]
        losses.append(-w * np.log(p[label]))
        ws.append(w)
    return sum(losses) / sum(ws)


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 3.0]])
@pytest.mark.parametrize("n", [1, 6])
def test_loss_value_and_gradient(weights, n, rng):
    logits = rng.standard_normal((n, 4))
    labels = rng.integers(0, 4, n)
    crit = SoftmaxCrossEntropy(class_weights=weights)
    loss = crit.forward(logits, labels)
    assert isinstance(loss, float)
    assert loss == pytest.approx(reference_loss(logits, labels, weights), rel=1e-12)
    analytic = crit.backward()
    numeric = numerical_gradient(lambda: np.array(crit.forward(logits, labels)), logits, np.array(1.0))
    assert relative_error(analytic, numeric) < 1e-6
    crit.forward(logits, labels)  # the finite differences left a perturbed forward in the cache
    np.testing.assert_allclose(crit.backward(dloss=2.0), 2 * analytic)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_stable_for_large_logits(dtype):
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 0.0]], dtype=dtype)
    crit = SoftmaxCrossEntropy()
    assert crit.forward(logits, np.array([0, 0])) == pytest.approx(400.0, rel=1e-6)
    grad = crit.backward()
    assert grad.dtype == dtype and np.all(np.isfinite(grad))
    p = softmax(logits)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1)


def test_softmax_axis(rng):
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(softmax(x, axis=0), np.exp(x) / np.exp(x).sum(0))


@pytest.mark.parametrize("logits_shape, labels, message", [
    ((2, 3), np.array([0, 3]), "label 3 is out of range for 3 classes"),
    ((2, 3), np.array([-1, 0]), "label -1 is out of range"),
    ((2, 3), np.array([0, 1, 2]), r"labels of shape \(2,\)"),
    ((2, 3), np.array([0.0, 1.0]), "must be integers"),
    ((6,), np.array([0]), r"logits of shape \(N, classes\)"),
])
def test_loss_errors(logits_shape, labels, message):
    with pytest.raises(ShapeError, match=message):
        SoftmaxCrossEntropy().forward(np.zeros(logits_shape), labels)


def test_class_weight_errors():
    with pytest.raises(ShapeError, match="2 class weights but the logits have 3"):
        SoftmaxCrossEntropy([1, 2]).forward(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError):
        SoftmaxCrossEntropy([1, -2])
