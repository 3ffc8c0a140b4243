"""Pooling layers: max and average pooling (2D, 3D) and LeNet/Ji trainable subsampling.

Pooling reads windows through a zero-copy strided view (``window_view``) and sends gradients back with
``fold_add`` (one vectorised add per kernel tap). No padding; a trailing remainder that does not fill a
window is dropped (floor), as torch does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from actionrec.backend import get_array_module
from actionrec.errors import ShapeError
from actionrec.nn.base import Layer, register_layer
from actionrec.nn.im2col import as_tuple, fold_add, output_size, window_view
from actionrec.nn.init import initial_weights
from actionrec.nn.layout import empty_in_layout, empty_like_layout, lies_channels_last
from actionrec.nn.parallel import map_chunks, over_batch

_AXES = {2: "(N, C, H, W)", 3: "(N, C, T, H, W)"}


def _check_windows_fit(layer, x_shape, kernel, out):
    if min(out) < 1:
        raise ShapeError(f"{layer.name}: kernel {tuple(kernel)} is larger than the input {tuple(x_shape)}; "
                         f"use a smaller kernel or a larger input")


class _PoolND(Layer):
    """Shared constructor, validation and window geometry for MaxPool / AvgPool in 2D and 3D."""

    ndim = 0

    def __init__(self, kernel_size, stride=None, name=None):
        super().__init__(name)
        self.kernel_size = as_tuple(kernel_size, self.ndim, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_tuple(stride, self.ndim, "stride")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError("kernel_size and stride must be >= 1")
        self._cache = None

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "name": self.name}

    def output_shape(self, input_shape):
        """Output shape for ``input_shape``; ShapeError when the rank is wrong or a window does not fit."""
        if len(input_shape) != self.ndim + 2:
            raise ShapeError(f"{self.name}: expected input of shape {_AXES[self.ndim]}, got {tuple(input_shape)}")
        out = tuple(output_size(s, k, st) for s, k, st in zip(input_shape[2:], self.kernel_size, self.stride))
        _check_windows_fit(self, input_shape, self.kernel_size, out)
        return tuple(input_shape[:2]) + out

    def _windows(self, x):
        """x (N, C, *S) -> strided view (N, C, *S', *kernel) after checking the rank and fit."""
        self.output_shape(x.shape)
        return window_view(x, self.kernel_size, self.stride)

    def _fold(self, window_grads, x_shape):
        """(N, C, *S', *kernel) window gradients -> dx (N, C, *S) (zeros in the dropped remainder)."""
        return fold_add(window_grads, x_shape[2:], self.kernel_size, self.stride)


def _split_axis(a, axis: int, kernel: int, stride: int):
    """View of ``a`` with axis ``axis`` (size S) split into (windows, taps): (..., O, k, ...), window o
    tap t reading a[..., o * stride + t, ...]. No copy: never write to the result."""
    xp = get_array_module(a)
    windows = output_size(a.shape[axis], kernel, stride)
    shape = a.shape[:axis] + (windows, kernel) + a.shape[axis + 1:]
    strides = a.strides[:axis] + (a.strides[axis] * stride, a.strides[axis]) + a.strides[axis + 1:]
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def _first_max_along(a, axis: int, kernel: int):
    """Max over non-overlapping windows of ``kernel`` along ``axis`` of ``a`` and the tap of the first
    maximum (uint8; strictly greater wins, so ties keep the earliest tap)."""
    xp = get_array_module(a)
    view = _split_axis(a, axis, kernel, kernel)
    tap = [slice(None)] * view.ndim

    def at(t):
        tap[axis + 1] = t
        return view[tuple(tap)]

    best = xp.copy(at(0), order="K")  # keeps the input's layout (C order or channels-last)
    winner = xp.zeros(best.shape, dtype=xp.uint8)
    for t in range(1, kernel):
        greater = at(t) > best
        xp.maximum(best, at(t), out=best)
        if t == 1:
            winner = greater.view(xp.uint8)
        else:  # winner += greater * (t - winner), exact in uint8 arithmetic (wraps mod 256)
            step = xp.subtract(t, winner, dtype=xp.uint8)
            step *= greater
            winner += step
    return best, winner


class _MaxPoolND(_PoolND):
    """Max over each window, keeping the index of the first maximal tap in row-major order (ties send
    the gradient to one element, as torch).

    Non-overlapping windows (stride = kernel, the usual 2x2 pooling) reduce one axis at a time, last
    axis first: the first maximum of every row, then the first row holding the overall maximum, which
    is the first maximum in row-major order. Each step runs over long runs of memory (the 2x2 pool of
    MNIST's first stage: ~4x faster than tap by tap). Overlapping windows go tap by tap: one strided
    ``maximum`` per kernel tap (no copy of the windows).
    """

    def _taps(self):
        return list(itertools.product(*(range(k) for k in self.kernel_size)))

    def _separable(self):
        return self.stride == self.kernel_size and max(self.kernel_size) < 256

    def forward(self, x, training=False):
        out_shape = self.output_shape(x.shape)  # validates
        xp = get_array_module(x)
        if self._separable():  # chunks of the batch on every core; y and dx laid out as x
            y = empty_like_layout(out_shape, x)

            def work(s, e):
                winners, a = [], x[s:e]
                for axis in range(x.ndim - 1, 1, -1):  # last spatial axis first
                    a, winner = _first_max_along(a, axis, self.kernel_size[axis - 2])
                    winners.append(winner)
                y[s:e] = a
                return s, e, winners[::-1]

            self._cache = ("separable", over_batch(xp, work, x.shape[0], x.size), x.shape, lies_channels_last(x))
            return y
        windows = self._windows(x)  # (N, C, *S', *kernel) view
        taps = self._taps()
        y = windows[(Ellipsis,) + taps[0]].copy()
        winner = xp.zeros(y.shape, dtype=xp.uint8 if len(taps) < 256 else xp.int32)
        for index, tap in enumerate(taps[1:], 1):
            values = windows[(Ellipsis,) + tap]
            xp.copyto(winner, index, where=values > y)  # strictly greater: the first maximum wins
            xp.maximum(y, values, out=y)
        self._cache = ("taps", winner, x.shape, False)
        return y

    def backward(self, dy):
        xp = get_array_module(dy)
        # separable: (start, end, one array per axis step) per chunk, and whether x was channels-last
        kind, winner, x_shape, last = self._cache
        if kind == "separable":
            kernel, out = self.kernel_size, dy.shape[2:]
            remainder = any(s % k for s, k in zip(x_shape[2:], kernel))  # dropped positions get zeros
            dx = empty_in_layout(xp, x_shape, dy.dtype, last, zero=remainder)

            def taps(prefix):  # the positions of tap ``prefix`` along the first len(prefix) axes
                return (slice(None), slice(None)) + tuple(
                    slice(t, t + k * o, k) for t, k, o in zip(prefix, kernel, out))

            def work(s, e, winners):
                # Every tap writes its own positions of dx once: dy where the axis steps all chose it
                # (winners[a] has the axes before a at full size, so it is read at the tap's rows),
                # with no intermediate array per axis step.
                chosen = {(): None}  # tap prefix -> where the steps so far chose it
                for a, won in enumerate(winners):
                    deeper = {}
                    for prefix, mask in chosen.items():
                        at = won[taps(prefix)]
                        for t in range(kernel[a]):
                            here = at == t
                            deeper[prefix + (t,)] = here if mask is None else xp.logical_and(mask, here, out=here)
                    chosen = deeper
                grad, target = dy[s:e], dx[s:e]
                for tap, mask in chosen.items():
                    xp.multiply(grad, mask, out=target[taps(tap)])

            map_chunks(xp, work, winner)
            return dx
        dx = xp.zeros(x_shape, dtype=dy.dtype)
        out = dy.shape[2:]
        for index, tap in enumerate(self._taps()):
            target = tuple(slice(t, t + st * (o - 1) + 1, st) for t, st, o in zip(tap, self.stride, out))
            dx[(Ellipsis,) + target] += dy * (winner == index)
        return dx


class _AvgPoolND(_PoolND):
    def forward(self, x, training=False):
        windows = self._windows(x)
        self._cache = x.shape
        return windows.mean(axis=tuple(range(-self.ndim, 0)))

    def backward(self, dy):
        xp = get_array_module(dy)
        share = dy / math.prod(self.kernel_size)
        window_grads = xp.broadcast_to(share.reshape(dy.shape + (1,) * self.ndim), dy.shape + self.kernel_size)
        return self._fold(window_grads, self._cache)


@register_layer
class MaxPool2D(_MaxPoolND):
    """Max pooling: x (N, C, H, W) -> y (N, C, H', W'), H' = (H - kh) // sh + 1; backward mirrors."""

    ndim = 2


@register_layer
class MaxPool3D(_MaxPoolND):
    """Max pooling: x (N, C, T, H, W) -> y (N, C, T', H', W'), T' = (T - kt) // st + 1; backward mirrors."""

    ndim = 3


@register_layer
class AvgPool2D(_AvgPoolND):
    """Average pooling: x (N, C, H, W) -> y (N, C, H', W'), H' = (H - kh) // sh + 1; backward mirrors."""

    ndim = 2


@register_layer
class AvgPool3D(_AvgPoolND):
    """Average pooling: x (N, C, T, H, W) -> y (N, C, T', H', W'); backward mirrors."""

    ndim = 3


@register_layer
class Subsampling(Layer):
    """LeNet / Ji et al. trainable subsampling over the last two axes (non-overlapping kh x kw windows).

    forward: x (N, *map_shape, H, W) -> y (N, *map_shape, H // kh, W // kw),
    y[n, m, i, j] = W[m] * sum(window (i, j) of x[n, m]) + b[m]; remainder rows/columns are dropped.
    Params "W", "b" of shape map_shape: one coefficient and one bias per 2D map (W starts at the
    average, 1 / (kh * kw), with init="average"). backward: dy of the output shape -> dx of x's shape.
    """

    def __init__(self, kernel_size, map_shape, init="average", rng=None, dtype="float32", name=None):
        super().__init__(name)
        self.kernel_size = as_tuple(kernel_size, 2, "kernel_size")
        if min(self.kernel_size) < 1:
            raise ValueError("kernel_size must be >= 1")
        self.map_shape = (int(map_shape),) if isinstance(map_shape, int) else tuple(int(m) for m in map_shape)
        self.init = init
        dtype = np.dtype(dtype)
        area = math.prod(self.kernel_size)
        if init == "average":
            self.params["W"] = np.full(self.map_shape, 1.0 / area, dtype=dtype)
        else:
            self.params["W"] = initial_weights(self.map_shape, area, 1, init, rng, dtype)
        self.params["b"] = np.zeros(self.map_shape, dtype=dtype)
        self._cache = None

    def config(self):
        return {"kernel_size": list(self.kernel_size), "map_shape": list(self.map_shape), "init": self.init,
                "dtype": np.dtype(self.dtype).name, "name": self.name}

    def output_shape(self, input_shape):
        """Output shape for ``input_shape``; ShapeError when the maps or the window size do not fit."""
        if len(input_shape) != len(self.map_shape) + 3 or tuple(input_shape[1:-2]) != self.map_shape:
            expected = "(N, " + ", ".join(str(m) for m in self.map_shape) + ", H, W)"
            raise ShapeError(f"{self.name}: expected input of shape {expected}, got {tuple(input_shape)}")
        (kh, kw), (h, w) = self.kernel_size, input_shape[-2:]
        _check_windows_fit(self, input_shape, self.kernel_size, (h // kh, w // kw))
        return tuple(input_shape[:-2]) + (h // kh, w // kw)

    def _per_map(self, a):
        """(*map_shape) parameter -> broadcastable against (N, *map_shape, H', W')."""
        return a.reshape((1,) + self.map_shape + (1, 1))

    def forward(self, x, training=False):
        xp = get_array_module(x)
        hh, ww = self.output_shape(x.shape)[-2:]  # validates
        kh, kw = self.kernel_size
        coef, bias = self._per_map(self.params["W"]), self._per_map(self.params["b"])
        sums = xp.empty(x.shape[:-2] + (hh, ww), dtype=x.dtype)
        y = xp.empty_like(sums)

        def work(s, e):
            # Window sums as kh + kw - 2 strided adds: rows first (contiguous runs), then columns. Many
            # times faster than a reduction over the two inner axes of a (.., hh, kh, ww, kw) view.
            rows = x[s:e, ..., : hh * kh, : ww * kw].reshape((e - s,) + x.shape[1:-2] + (hh, kh, ww * kw))
            row_sums = rows[..., 0, :].copy()
            for i in range(1, kh):
                row_sums += rows[..., i, :]
            part = sums[s:e]
            part[...] = row_sums[..., 0::kw]
            for j in range(1, kw):
                part += row_sums[..., j::kw]
            xp.multiply(part, coef, out=y[s:e])
            y[s:e] += bias

        over_batch(xp, work, x.shape[0], x.size)  # on both cores: Ji's first maps are 33 MB at batch 32
        self._cache = (sums, x.shape)
        return y

    def _param_grads(self, dy):
        xp = get_array_module(dy)
        sums = self._cache[0]
        # sums over the batch and the grid (einsum: 2-3x faster than a product and a sum here)
        self.grads["W"] = xp.einsum("n...hw,n...hw->...", dy, sums)
        self.grads["b"] = xp.einsum("n...hw->...", dy)

    def tiles_exactly(self) -> bool:
        """Whether the last forward's windows covered its input exactly (no rows or columns dropped)."""
        sums, x_shape = self._cache
        return tuple(x_shape[-2:]) == tuple(s * k for s, k in zip(sums.shape[-2:], self.kernel_size))

    def scales_into(self, factor) -> bool:
        """Whether ``backward_scaled`` can multiply into ``factor``: C order (its product would otherwise
        be lost in a copy), the last forward's input shape, and windows that tile that input exactly."""
        return factor.flags.c_contiguous and tuple(factor.shape) == tuple(self._cache[1]) and self.tiles_exactly()

    def _window_rows(self, dy, coef, target):
        """(target (.., H, W) seen as (.., hh, kh, W), dy * coef widened kw times as (.., hh, 1, W)):
        every output's spread over its window, for windows that tile target exactly."""
        kh, kw = self.kernel_size
        hh, ww = dy.shape[-2:]
        rows = get_array_module(dy).repeat(dy * coef, kw, axis=-1)  # (.., hh, W)
        return target.reshape(rows.shape[:-2] + (hh, kh, ww * kw)), rows[..., :, None, :]

    def backward_scaled(self, dy, factor):
        """``backward(dy) * factor``, multiplied into ``factor`` (x's shape and layout, C order) and
        returned: the spread of dy goes straight into the product, with no dx array of its own (the
        gradient of a Tanh before this layer, ``TanhSubsampling``). The same numbers as the product of
        ``backward(dy)`` and ``factor``; needs ``scales_into(factor)``."""
        if not self.scales_into(factor):
            raise ValueError(f"{self.name}: backward_scaled needs a C-order factor of the input's shape "
                             f"{self._cache[1]} and windows that tile it exactly")
        self._param_grads(dy)
        coef = self._per_map(self.params["W"])

        def work(s, e):  # each output row widened kw times, then multiplied into its kh input rows
            view, spread = self._window_rows(dy[s:e], coef, factor[s:e])
            view *= spread

        over_batch(get_array_module(dy), work, dy.shape[0], factor.size)
        return factor

    def backward(self, dy):
        xp = get_array_module(dy)
        x_shape = self._cache[1]
        self._param_grads(dy)
        kh, kw = self.kernel_size
        hh, ww = dy.shape[-2:]
        coef = self._per_map(self.params["W"])
        exact = self.tiles_exactly()
        dx = (xp.empty if exact else xp.zeros)(x_shape, dtype=dy.dtype)

        def work(s, e):
            if exact:  # each output row widened kw times, then written to its kh input rows at once
                view, spread = self._window_rows(dy[s:e], coef, dx[s:e])
                view[...] = spread
            else:
                scaled = dy[s:e] * coef
                windows = scaled.shape[:-2] + (hh, kh, ww, kw)
                dx[s:e, ..., : hh * kh, : ww * kw] = xp.broadcast_to(
                    scaled[..., :, None, :, None], windows).reshape(windows[:-4] + (hh * kh, ww * kw))

        over_batch(xp, work, dy.shape[0], math.prod(x_shape))
        return dx
