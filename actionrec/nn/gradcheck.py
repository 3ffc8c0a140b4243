"""Numerical gradient checks: centred finite differences in float64 against a layer's ``backward``.

Used by the test-suite for every layer, and handy in a notebook when writing a new one::

    err = check_layer_gradients(Conv3D(2, 3, 3, dtype="float64"), x)   # max relative error
"""

from __future__ import annotations

import numpy as np


def numerical_gradient(f, x, dy, eps: float = 1e-6):
    """d(sum(f(x) * dy))/dx by centred differences; ``x`` is perturbed in place and restored.

    Elements are addressed by index, so ``x`` may have any memory layout (a channels-last array's
    flat reshape would be a copy, and perturbing a copy would perturb nothing)."""
    grad = np.zeros(x.shape, dtype=x.dtype)
    # a C-contiguous x is walked through flat views (faster); any other by index
    target, out = (x.reshape(-1), grad.reshape(-1)) if x.flags.c_contiguous else (x, grad)
    for i in np.ndindex(target.shape):
        old = target[i]
        target[i] = old + eps
        plus = float(np.sum(f() * dy))
        target[i] = old - eps
        minus = float(np.sum(f() * dy))
        target[i] = old
        out[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a, b) -> float:
    """max |a - b| / max(|a| + |b|, tiny): scale-free, 0 for identical arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.maximum(np.abs(a) + np.abs(b), 1e-8)
    return float(np.max(np.abs(a - b) / denom)) if a.size else 0.0


def check_layer_gradients(layer, x, training: bool = True, seed: int = 0, eps: float = 1e-6,
                          check_input: bool = True) -> dict:
    """Compare analytic and numerical gradients of ``sum(layer(x) * dy)`` for a random ``dy``.

    Returns ``{"x": err, "<param>": err, ...}`` with max relative errors. ``x`` and the layer must be
    float64. Layers with randomness in training (dropout) must be checked with a fixed mask.
    """
    if x.dtype != np.float64:
        raise TypeError("gradient checks need float64 inputs")
    rng = np.random.default_rng(seed)
    y = layer.forward(x, training=training)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    analytic = {k: np.array(v, copy=True) for k, v in layer.grads.items()}

    def f():
        return layer.forward(x, training=training)

    errors = {}
    if check_input:
        errors["x"] = relative_error(dx, numerical_gradient(f, x, dy, eps))
    for name, p in layer.params.items():
        errors[name] = relative_error(analytic[name], numerical_gradient(f, p, dy, eps))
    return errors
