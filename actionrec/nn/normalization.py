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
        """x (N, C, *S) -> y (N, C, *S); statistics per channel over the N * prod(S) values.

        Keeps x (not x_hat) for backward: y = x * (W inv_std) + (b - mean W inv_std) is two passes, and
        x_hat is rebuilt per block of items where it is needed, in the cache.
        """
        self._check(x)
        xp = get_array_module(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)  # broadcast a (C,) vector against x
        count = x.size // self.num_features
        n = x.shape[0]
        if training:
            if count < 2:
                raise ShapeError(f"{self.name}: BatchNorm in training needs more than one value per channel, "
                                 f"got input {tuple(x.shape)} (use a batch size > 1)")
            mean = sum(over_batch(xp, lambda s, e: _channel_sum(x[s:e]), n, x.size)) / count

            def squares(s, e):  # the centred block lives in a small buffer only
                total = 0
                for a, z, centred in _blocks(s, e, x):
                    xp.subtract(x[a:z], mean.reshape(shape), out=centred)
                    total = total + _channel_dot(centred, centred)
                return total

            var = sum(over_batch(xp, squares, n, x.size)) / count
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1 - m
            rm += m * mean.astype(rm.dtype)
            rv *= 1 - m
            rv += m * (var * (count / (count - 1))).astype(rv.dtype)
        else:
            mean = self.buffers["running_mean"].astype(x.dtype, copy=False)
            var = self.buffers["running_var"].astype(x.dtype, copy=False)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        slope = (self.params["W"] * inv_std).astype(x.dtype, copy=False)
        offset = (self.params["b"] - mean * slope).astype(x.dtype, copy=False)
        y = xp.empty_like(x)

        def normalise(s, e):
            for a, z, _ in _blocks(s, e, x, buffer=False):
                xp.multiply(x[a:z], slope.reshape(shape), out=y[a:z])
                y[a:z] += offset.reshape(shape)

        over_batch(xp, normalise, n, x.size)
        self._cache = (x, mean, inv_std, count, shape, training)
        return y

    def backward(self, dy):
        """dy (N, C, *S) -> dx (N, C, *S); fills grads "W" and "b" (C,).

        In training the mean and variance depend on x, which adds the two mean terms:
        dx = W * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means per channel; in evaluation
        they are constants and dx is a per-channel scaling of dy.
        """
        xp = get_array_module(dy)
        x, mean, inv_std, count, shape, training = self._cache
        n = dy.shape[0]

        def sums(s, e):  # sum(dy) and sum(dy * (x - mean)) per channel, the centred block in a buffer
            db = dw = 0
            for a, z, centred in _blocks(s, e, x):
                db = db + _channel_sum(dy[a:z])
                dw = dw + _channel_dot(dy[a:z], xp.subtract(x[a:z], mean.reshape(shape), out=centred))
            return db, dw

        parts = over_batch(xp, sums, n, dy.size)
        db, dW = sum(p[0] for p in parts), sum(p[1] for p in parts) * inv_std  # dW = sum(dy * x_hat)
        self.grads["b"], self.grads["W"] = db, dW
        scale = self.params["W"] * inv_std
        dx = xp.empty_like(dy)
        if not training:
            return elementwise(xp, lambda a, out: xp.multiply(a, scale.reshape(shape), out=out), dx, dy)
        # dx = scale * (dy - db / count - x_hat * dW / count), x_hat = (x - mean) * inv_std, as
        # x * slope + dy * scale + offset with per-channel slope and offset: four passes per block
        slope = (-scale * inv_std * dW / count).astype(dy.dtype, copy=False)
        offset = (-scale * db / count - mean * slope).astype(dy.dtype, copy=False)

        def combine(s, e):
            for a, z, scaled in _blocks(s, e, x):
                xp.multiply(x[a:z], slope.reshape(shape), out=dx[a:z])
                dx[a:z] += offset.reshape(shape)
                dx[a:z] += xp.multiply(dy[a:z], scale.reshape(shape), out=scaled)

        over_batch(xp, combine, n, dy.size)
        return dx


# Items per block of the element-wise passes: about this many elements (1 MB of float32), so the
# passes after the first find the block in the cache.
_BLOCK_ELEMENTS = 1 << 18


def _blocks(start: int, end: int, a, buffer: bool = True):
    """[(a0, a1, scratch)] blocks of whole items of ``a`` covering start..end, each with a scratch array
    of the block's shape (one buffer, reused; None when ``buffer`` is False)."""
    xp = get_array_module(a)
    per_item = max(1, a[:1].size)
    step = max(1, min(end - start, _BLOCK_ELEMENTS // per_item))
    scratch = xp.empty((step,) + a.shape[1:], dtype=a.dtype) if buffer else None
    for s in range(start, end, step):
        e = min(end, s + step)
        yield s, e, None if scratch is None else scratch[:e - s]


def _channel_sum(a):
    """a (N, C, *S) -> (C,): sums of every channel, reduced along contiguous runs (many times faster
    than a reduction over axes (0, 2, 3) of a 4-d array)."""
    return a.reshape(a.shape[0], a.shape[1], -1).sum(axis=2).sum(axis=0)


def _channel_dot(a, b):
    """(C,) sums of a * b per channel, without the product array."""
    xp = get_array_module(a)
    n, c = a.shape[:2]
    return xp.einsum("nci,nci->c", a.reshape(n, c, -1), b.reshape(n, c, -1))
