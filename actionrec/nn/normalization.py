"""Batch normalisation (Ioffe & Szegedy 2015) over every axis but the channel axis 1."""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module
from actionrec.errors import ShapeError
from actionrec.nn.base import Layer, register_layer


@register_layer
class BatchNorm(Layer):
    """Normalise each channel by its batch statistics in training, by running statistics in evaluation.

    Works for (N, C), (N, C, H, W) and (N, C, T, H, W): statistics are taken over every axis but 1.
    Running statistics follow torch: ``running = (1 - momentum) * running + momentum * batch``, with the
    unbiased batch variance for ``running_var`` (the biased one normalises the batch itself).
    Params "W" (gamma, ones) and "b" (beta, zeros), shape (C,); buffers "running_mean" (zeros) and
    "running_var" (ones), shape (C,).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, dtype="float32",
                 name: str | None = None):
        super().__init__(name)
        if num_features < 1:
            raise ValueError(f"BatchNorm needs num_features >= 1, got {num_features}")
        self.num_features = int(num_features)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.params["W"] = np.ones(self.num_features, dtype=dtype)
        self.params["b"] = np.zeros(self.num_features, dtype=dtype)
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype=dtype)
        self._cache = None

    def config(self) -> dict:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "dtype": np.dtype(self.dtype).name, "name": self.name}

    def _check(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ShapeError(f"{self.name}: BatchNorm expects input (N, {self.num_features}, ...), "
                             f"got {tuple(x.shape)}")

    def forward(self, x, training: bool = False):
        """x (N, C, *S) -> y (N, C, *S); statistics per channel over the N * prod(S) values."""
        self._check(x)
        xp = get_array_module(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)  # broadcast a (C,) vector against x
        count = x.size // self.num_features
        if training:
            if count < 2:
                raise ShapeError(f"{self.name}: BatchNorm in training needs more than one value per channel, "
                                 f"got input {tuple(x.shape)} (use a batch size > 1)")
            mean = _channel_sum(x) / count
            x_hat = x - mean.reshape(shape)
            var = _channel_dot(x_hat, x_hat) / count
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - m
            rm += m * mean.astype(rm.dtype)
            rv *= 1 - m
            rv += m * (var * (count / (count - 1))).astype(rv.dtype)
        else:
            mean = self.buffers["running_mean"].astype(x.dtype, copy=False)
            var = self.buffers["running_var"].astype(x.dtype, copy=False)
            x_hat = x - mean.reshape(shape)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat *= inv_std.reshape(shape)  # in place: the big arrays are x_hat and y only
        self._cache = (x_hat, inv_std, count, shape, training)
        y = x_hat * self.params["W"].reshape(shape)
        y += self.params["b"].reshape(shape)
        return y

    def backward(self, dy):
        """dy (N, C, *S) -> dx (N, C, *S); fills grads "W" and "b" (C,).

        In training the mean and variance depend on x, which adds the two mean terms:
        dx = W * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means per channel; in evaluation
        they are constants and dx is a per-channel scaling of dy.
        """
        x_hat, inv_std, count, shape, training = self._cache
        db = _channel_sum(dy)
        dW = _channel_dot(dy, x_hat)
        self.grads["b"], self.grads["W"] = db, dW
        scale = (self.params["W"] * inv_std).reshape(shape)
        if not training:
            return dy * scale
        dx = x_hat * (-dW / count).reshape(shape)
        dx += dy
        dx -= (db / count).reshape(shape)
        dx *= scale
        return dx


def _channel_sum(a):
    """a (N, C, *S) -> (C,): sums of every channel, reduced along contiguous runs (many times faster
    than a reduction over axes (0, 2, 3) of a 4-d array)."""
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2).sum(axis=0)


def _channel_dot(a, b):
    """(C,) sums of a * b per channel, without the product array."""
    xp = get_array_module(a)
    n, c = a.shape[:2]
    return xp.einsum("nci,nci->c", a.reshape(n, c, -1), b.reshape(n, c, -1))
