"""Batch normalisation (Ioffe & Szegedy 2015) over every axis but the channel axis 1."""

from __future__ import annotations

import math

import numpy as np

from actionrec.backend import get_array_module
from actionrec.errors import ShapeError
from actionrec.nn.base import Layer, register_layer
from actionrec.nn.layout import channels_last_view, lies_channels_last
from actionrec.nn.parallel import elementwise, item_blocks, over_batch


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
        mean, inv_std, count = self.statistics(x, training)
        y = get_array_module(x).empty_like(x)
        normalise_into(y, x, *self.affine(mean, inv_std, x.dtype))
        self._cache = (x, mean, inv_std, count, training)
        return y

    def statistics(self, x, training: bool):
        """x (N, C, *S) -> (mean, inv_std, count): the batch's per-channel mean and 1 / sqrt(var + eps)
        (C,) in training, which also updates the running statistics, else the running ones; count is
        the number of values per channel."""
        xp = get_array_module(x)
        if not training:
            mean = self.buffers["running_mean"].astype(x.dtype, copy=False)
            var = self.buffers["running_var"].astype(x.dtype, copy=False)
            return mean, 1.0 / xp.sqrt(var + self.eps), x.size // self.num_features
        # One pass over x for both moments: each cache-sized block is centred on a shift near the
        # mean (the first item's channel means) in a small buffer, whose sum and sum of squares come
        # from the cache; the shift keeps E[d^2] - E[d]^2 free of cancellation.
        first, shift = self.moment_shift(x)

        def moments(s, e):
            total = squares = 0
            for a, z, centred in item_blocks(s, e, x, _BLOCK_ELEMENTS):
                total, squares = add_block_moments(total, squares, x[a:z], shift, centred)
            return total, squares

        return self.batch_statistics(first, over_batch(xp, moments, x.shape[0], x.size), x.shape, x.dtype)

    def moment_shift(self, x):
        """(first, shift): the first item's channel means (C,), and as a channel map for x (N, C, *S)
        (checks that training statistics can be taken of x)."""
        count = x.size // self.num_features
        if count < 2:
            raise ShapeError(f"{self.name}: BatchNorm in training needs more than one value per channel, "
                             f"got input {tuple(x.shape)} (use a batch size > 1)")
        first = _channel_sum(x[:1]) / (count // x.shape[0])
        return first, _channel_map(first, x)

    def batch_statistics(self, first, parts, shape: tuple, dtype):
        """(mean, inv_std, count) in training from the sums over parts of the batch [(sum of x - first,
        sum of (x - first)^2)] (``add_block_moments`` over blocks of items, ``moment_shift``); updates
        the running statistics."""
        xp = get_array_module(first)
        count = math.prod(shape) // self.num_features
        offset_mean = sum(p[0] for p in parts) / count
        var = (sum(p[1] for p in parts) / count - offset_mean**2).clip(0).astype(dtype)
        mean = (first + offset_mean).astype(dtype)
        m = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm *= 1 - m
        rm += m * mean.astype(rm.dtype)
        rv *= 1 - m
        rv += m * (var * (count / (count - 1))).astype(rv.dtype)
        return mean, 1.0 / xp.sqrt(var + self.eps), count

    def affine(self, mean, inv_std, dtype):
        """(slope, offset) (C,) of y = x * slope + offset for ``statistics``' mean and inv_std."""
        slope = (self.params["W"] * inv_std).astype(dtype, copy=False)
        return slope, (self.params["b"] - mean * slope).astype(dtype, copy=False)

    def backward(self, dy):
        """dy (N, C, *S) -> dx (N, C, *S); fills grads "W" and "b" (C,).

        In training the mean and variance depend on x, which adds the two mean terms:
        dx = W * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means per channel; in evaluation
        they are constants and dx is a per-channel scaling of dy.
        """
        xp = get_array_module(dy)
        x, mean, inv_std, count, training = self._cache
        n = dy.shape[0]
        mean_map = _channel_map(mean, x)

        def sums(s, e):  # sum(dy) and sum(dy * (x - mean)) per channel, the centred block in a buffer
            db = dw = 0
            for a, z, centred in item_blocks(s, e, x, _BLOCK_ELEMENTS):
                db = db + _channel_sum(dy[a:z])
                dw = dw + _channel_dot(dy[a:z], xp.subtract(x[a:z], mean_map, out=centred))
            return db, dw

        parts = over_batch(xp, sums, n, dy.size)
        scale, slope, offset = self.set_grads(sum(p[0] for p in parts), sum(p[1] for p in parts), mean,
                                              inv_std, count, training)
        if not training:
            scale = _channel_map(scale, dy)
            return elementwise(xp, lambda a, out: xp.multiply(a, scale, out=out), xp.empty_like(dy), dy)
        dx = xp.empty_like(x, dtype=dy.dtype)  # laid out as x (and as dy, when the next layer kept it)
        # dx = scale * (dy - db / count - x_hat * dW / count), x_hat = (x - mean) * inv_std, as
        # x * slope + dy * scale + offset with per-channel slope and offset: four passes per block
        slope, offset, scale = (_channel_map(v, dx) for v in (slope, offset, scale))

        def combine(s, e):
            for a, z, scaled in item_blocks(s, e, x, _BLOCK_ELEMENTS):
                xp.multiply(x[a:z], slope, out=dx[a:z])
                dx[a:z] += offset
                dx[a:z] += xp.multiply(dy[a:z], scale, out=scaled)

        over_batch(xp, combine, n, dy.size)
        return dx

    def set_grads(self, dy_sum, centred_dot, mean, inv_std, count: int, training: bool):
        """Fills grads "b" (sum(dy)) and "W" (sum(dy * x_hat)) from the per-channel sums dy_sum and
        centred_dot = sum(dy * (x - mean)); returns (scale, slope, offset) (C,) of the input gradient
        dx = dy * scale + x * slope + offset (slope and offset zero in evaluation)."""
        dW = centred_dot * inv_std
        self.grads["b"], self.grads["W"] = dy_sum, dW
        scale = self.params["W"] * inv_std
        if not training:
            return scale, 0 * scale, 0 * scale
        slope = -scale * inv_std * dW / count
        return scale, slope, -scale * dy_sum / count - mean * slope


def add_block_moments(total, squares, block, shift, centred):
    """(total + sum of (block - shift), squares + sum of (block - shift)^2) per channel, in float64,
    centred a scratch array laid out as the block."""
    xp = get_array_module(block)
    xp.subtract(block, shift, out=centred)
    return (total + _channel_sum(centred).astype(xp.float64),
            squares + _channel_dot(centred, centred).astype(xp.float64))


def normalise_into(y, x, slope, offset):
    """y = x * slope + offset with (C,) slope and offset, over (N, C, *S) arrays in cache-sized blocks
    of items on both cores (y may be x)."""
    xp = get_array_module(x)
    slope, offset = _channel_map(slope, x), _channel_map(offset, x)

    def normalise(s, e):
        for a, z, _ in item_blocks(s, e, x, _BLOCK_ELEMENTS, buffer=False):
            xp.multiply(x[a:z], slope, out=y[a:z])
            y[a:z] += offset

    over_batch(xp, normalise, x.shape[0], x.size)
    return y


# Items per block of the element-wise passes: about this many elements (1 MB of float32), so the
# passes after the first find the block in the cache.
_BLOCK_ELEMENTS = 1 << 18


def _channel_map(v, like):
    """A (C,) vector as a (1, C, *S) array for ``like`` (N, C, *S), spelled out over one item in the
    memory layout of ``like`` (C order or channels-last): numpy's element-wise loops run about
    1.5-3 times faster on it than on a broadcast (1, C, 1, 1) operand (whose inner runs stop at every
    map), and an operand laid out as x keeps them running in memory order."""
    xp = get_array_module(like)
    out = xp.empty_like(like[:1])
    out[...] = v.astype(like.dtype, copy=False).reshape((1, -1) + (1,) * (like.ndim - 2))
    return out


def _by_channel(a):
    """a (N, C, *S) as a 3-d view and a name for its axes, without a copy for either layout: (N, C, P)
    "nci" in C order; channels-last, (rows, k, C) "rkc", k positions of all C channels per row (k
    divides N P, k C at most 1024), since einsum sums short C-long runs slowly."""
    n, c = a.shape[:2]
    if lies_channels_last(a):
        k = math.gcd(a.size // c, max(1, 1024 // c))  # a divisor of the positions, at most 1024 / C
        return channels_last_view(a).reshape(-1, k, c), "rkc"
    return a.reshape(n, c, -1), "nci"


def _channel_sum(a):
    """a (N, C, *S) -> (C,): sums of every channel (einsum's summing loop: 2-3 times faster than
    ``sum`` along the map axis, and many times faster than a reduction over axes (0, 2, 3)).
    Channels-last: the column sums of the (rows, k C) view as a product with a row of ones (BLAS's
    gemv: 2-3.5x faster than einsum's column sums on CIFAR's maps, AMD EPYC family 25; one thread
    inside ``over_batch``), folded over k."""
    xp = get_array_module(a)
    view, letters = _by_channel(a)
    if letters == "rkc":
        rows, k, c = view.shape
        return (xp.ones(rows, dtype=a.dtype) @ view.reshape(rows, k * c)).reshape(k, c).sum(axis=0)
    return xp.einsum("nci->c", view)


def _channel_dot(a, b):
    """(C,) sums of a * b per channel, without the product array (a and b in either layout)."""
    xp = get_array_module(a)
    (va, la), (vb, lb) = _by_channel(a), _by_channel(b)
    if la != lb:  # mixed layouts: einsum pairs the axes (slower, correct)
        return xp.einsum("nci,nic->c", a.reshape(a.shape[0], a.shape[1], -1),
                         channels_last_view(b).reshape(b.shape[0], -1, b.shape[1]))
    if la == "rkc":
        rows, k, c = va.shape
        return xp.einsum("ij,ij->j", va.reshape(rows, k * c), vb.reshape(rows, k * c)).reshape(k, c).sum(axis=0)
    return xp.einsum("nci,nci->c", va, vb)


class NormReLU:
    """``norm`` (BatchNorm) then ``relu`` (ReLU) as one unit of a Sequential's forward and backward (not
    a layer: parameters, gradients and running statistics stay in ``norm``), on the CPU.

    Forward normalises, clips and takes the mask of each cache-sized block of items while it is in
    the cache, and backward takes the ReLU's gradient (dy where the output is positive) per block
    inside BatchNorm's two passes instead of writing it out and reading it twice: the full-size
    normalised array and the masked gradient are never stored. The same numbers as the two layers
    (the same operations in the same order on each value). CuPy arrays run the layers.
    """

    def __init__(self, norm, relu):
        self.norm, self.relu = norm, relu
        self._cache = None  # (x, positive, mean, inv_std, count, training) after a fused forward

    def forward(self, x, training: bool = False):
        """x (N, C, *S) -> relu(norm(x)) (N, C, *S), laid out as x."""
        norm = self.norm
        self._cache = None
        if get_array_module(x) is not np:
            return self.relu.forward(norm.forward(x, training=training), training=training)
        norm._check(x)
        norm._cache = self.relu._positive = None  # the layers' own caches would be stale
        mean, inv_std, count = norm.statistics(x, training)
        slope, offset = (_channel_map(v, x) for v in norm.affine(mean, inv_std, x.dtype))
        y, positive = np.empty_like(x), np.empty_like(x, dtype=bool)

        def work(s, e):
            zeros = None
            for a, z, block in item_blocks(s, e, x, _BLOCK_ELEMENTS):
                if zeros is None:  # numpy's maximum against a block of zeros, not the scalar 0: 2.5x faster
                    zeros = block
                    zeros.fill(0)
                np.multiply(x[a:z], slope, out=y[a:z])
                y[a:z] += offset
                np.maximum(y[a:z], zeros[:z - a], out=y[a:z])
                np.greater(y[a:z], 0, out=positive[a:z])

        over_batch(np, work, x.shape[0], x.size)
        self._cache = (x, positive, mean, inv_std, count, training)
        return y

    def backward(self, dy):
        """dy (N, C, *S) -> dx (N, C, *S); fills the grads of ``norm``."""
        if self._cache is None:
            return self.norm.backward(self.relu.backward(dy))
        x, positive, mean, inv_std, count, training = self._cache
        n = dy.shape[0]
        mean_map = _channel_map(mean, x)

        dx = np.empty_like(x, dtype=dy.dtype)  # holds g = dy where positive between the passes

        def sums(s, e):  # sum(g) and sum(g * (x - mean)) per channel
            db = dw = 0
            for a, z, centred in item_blocks(s, e, x, _BLOCK_ELEMENTS):
                g = np.multiply(dy[a:z], positive[a:z], out=dx[a:z])
                db = db + _channel_sum(g)
                dw = dw + _channel_dot(g, np.subtract(x[a:z], mean_map, out=centred))
            return db, dw

        parts = over_batch(np, sums, n, dy.size)
        scale, slope, offset = self.norm.set_grads(sum(p[0] for p in parts), sum(p[1] for p in parts), mean,
                                                   inv_std, count, training)
        scale, slope, offset = (_channel_map(v, dx) for v in (scale, slope, offset))

        def combine(s, e):  # BatchNorm's combine, g * scale + (x * slope + offset), in place over g
            for a, z, affine in item_blocks(s, e, x, _BLOCK_ELEMENTS):
                dx[a:z] *= scale
                if training:
                    np.multiply(x[a:z], slope, out=affine)
                    affine += offset
                    dx[a:z] += affine

        over_batch(np, combine, n, dy.size)
        return dx
