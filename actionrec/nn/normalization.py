"""Batch normalisation (Ioffe & Szegedy 2015) over every axis but the channel axis 1."""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module
from actionrec.errors import ShapeError
from actionrec.nn.base import Layer, register_layer
from actionrec.nn.parallel import elementwise, over_batch


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
        n = x.shape[0]
        x_hat = xp.empty_like(x)
        if training:
            if count < 2:
                raise ShapeError(f"{self.name}: BatchNorm in training needs more than one value per channel, "
                                 f"got input {tuple(x.shape)} (use a batch size > 1)")
            mean = sum(over_batch(xp, lambda s, e: _channel_sum(x[s:e]), n, x.size)) / count

            def center(s, e):
                xp.subtract(x[s:e], mean.reshape(shape), out=x_hat[s:e])
                return _channel_dot(x_hat[s:e], x_hat[s:e])

            var = sum(over_batch(xp, center, n, x.size)) / count
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - m
            rm += m * mean.astype(rm.dtype)
            rv *= 1 - m
            rv += m * (var * (count / (count - 1))).astype(rv.dtype)
        else:
            mean = self.buffers["running_mean"].astype(x.dtype, copy=False)
            var = self.buffers["running_var"].astype(x.dtype, copy=False)
            elementwise(xp, lambda a, out: xp.subtract(a, mean.reshape(shape), out=out), x_hat, x)
        inv_std = (1.0 / xp.sqrt(var + self.eps)).reshape(shape)
        W, b = self.params["W"].reshape(shape), self.params["b"].reshape(shape)
        y = xp.empty_like(x)

        def normalise(s, e):  # three passes per block of items small enough for the cache
            for a, z in _blocks(s, e, x):
                x_hat[a:z] *= inv_std  # in place: the big arrays are x_hat and y only
                xp.multiply(x_hat[a:z], W, out=y[a:z])
                y[a:z] += b

        over_batch(xp, normalise, n, x.size)
        self._cache = (x_hat, inv_std.reshape(-1), count, shape, training)
        return y

    def backward(self, dy):
        """dy (N, C, *S) -> dx (N, C, *S); fills grads "W" and "b" (C,).

        In training the mean and variance depend on x, which adds the two mean terms:
        dx = W * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means per channel; in evaluation
        they are constants and dx is a per-channel scaling of dy.
        """
        xp = get_array_module(dy)
        x_hat, inv_std, count, shape, training = self._cache
        n = dy.shape[0]
        parts = over_batch(xp, lambda s, e: (_channel_sum(dy[s:e]), _channel_dot(dy[s:e], x_hat[s:e])), n,
                           dy.size)
        db, dW = sum(p[0] for p in parts), sum(p[1] for p in parts)
        self.grads["b"], self.grads["W"] = db, dW
        scale = (self.params["W"] * inv_std).reshape(shape)
        dx = xp.empty_like(dy)
        if not training:
            return elementwise(xp, lambda a, out: xp.multiply(a, scale, out=out), dx, dy)
        slope, shift = (-dW / count).reshape(shape), (db / count).reshape(shape)

        def combine(s, e):
            for a, z in _blocks(s, e, dy):
                xp.multiply(x_hat[a:z], slope, out=dx[a:z])
                dx[a:z] += dy[a:z]
                dx[a:z] -= shift
                dx[a:z] *= scale

        over_batch(xp, combine, n, dy.size)
        return dx


# Items per block of the element-wise passes: about this many elements (1 MB of float32), so the
# passes after the first find the block in the cache.
_BLOCK_ELEMENTS = 1 << 18


def _blocks(start: int, end: int, a):
    """[(a0, a1)] blocks of whole items of ``a`` covering start..end."""
    per_item = max(1, a[:1].size)
    step = max(1, _BLOCK_ELEMENTS // per_item)
    return [(s, min(end, s + step)) for s in range(start, end, step)]


def _channel_sum(a):
    """a (N, C, *S) -> (C,): sums of every channel, reduced along contiguous runs (many times faster
    than a reduction over axes (0, 2, 3) of a 4-d array)."""
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2).sum(axis=0)


def _channel_dot(a, b):
    """(C,) sums of a * b per channel, without the product array."""
    xp = get_array_module(a)
    n, c = a.shape[:2]
    return xp.einsum("nci,nci->c", a.reshape(n, c, -1), b.reshape(n, c, -1))
