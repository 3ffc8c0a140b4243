"""Fully connected layer, flattening, activations and dropout.

Each layer caches in ``forward`` exactly what its ``backward`` needs; ``backward`` fills ``self.grads``
and returns the gradient for the input. One code path for numpy and CuPy (``xp``).
"""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module, to_device
from actionrec.errors import ShapeError
from actionrec.nn.base import Layer, register_layer
from actionrec.nn.init import _rng, initial_weights
from actionrec.nn.layout import empty_in_layout, lies_channels_last
from actionrec.nn.parallel import elementwise, item_blocks, matmul, over_batch


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


@register_layer
class Dense(Layer):
    """Fully connected layer ``y = x @ W.T + b``.

    With ``bias_groups=G > 1`` the bias is stored as (O, G) and its sum over G is the bias actually
    added: Ji et al.'s C6 layer has one bias per (output feature, input map) pair, which is what the
    published parameter count implies. Every column receives the same gradient.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_groups: int = 1,
                 init: str = "lecun", rng=None, dtype="float32", name: str | None = None):
        super().__init__(name)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Dense needs positive in/out features, got {in_features}, {out_features}")
        if bias_groups < 1:
            raise ValueError(f"Dense bias_groups must be >= 1, got {bias_groups}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_bias = bool(bias)
        self.bias_groups = int(bias_groups)
        self.init = init
        self.params["W"] = initial_weights((self.out_features, self.in_features), fan_in=self.in_features,
                                           fan_out=self.out_features, method=init, rng=rng, dtype=dtype)
        if self.use_bias:
            b_shape = (self.out_features,) if self.bias_groups == 1 else (self.out_features, self.bias_groups)
            self.params["b"] = np.zeros(b_shape, dtype=dtype)
        self._x = None

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.use_bias,
                "bias_groups": self.bias_groups, "init": self.init, "dtype": _dtype_name(self.dtype),
                "name": self.name}

    def _effective_bias(self):
        b = self.params["b"]
        return b if b.ndim == 1 else b.sum(axis=1)

    def forward(self, x, training: bool = False):
        """x (N, F) -> y (N, O), with F = in_features and O = out_features."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ShapeError(f"{self.name}: Dense expects input (N, {self.in_features}), got {tuple(x.shape)}"
                             " (add a Flatten layer before it, or fix in_features)")
        self._x = x
        xp, W = get_array_module(x), self.params["W"]
        if x.shape[0] < min(64, W.shape[0]):
            # y as the transpose of W @ x.T: OpenBLAS's AVX-512 kernels run a product with few rows
            # at about half speed (32 x 1024 by 1024 x 256: 192 us on one core, against 102 us as
            # 256 x 1024 by 1024 x 32; from 64 rows on the two forms take about as long). y is then
            # column-major; the layers after it take either layout.
            y = matmul(xp, W, x.T).T
        else:
            y = matmul(xp, x, W.T)
        if self.use_bias:
            y += self._effective_bias()
        return y

    def backward(self, dy):
        """dy (N, O) -> dx (N, F); fills grads "W" (O, F) and "b" (O,) or (O, G)."""
        x = self._x
        xp = get_array_module(dy)
        self.grads["W"] = matmul(xp, dy.T, x)
        dx = matmul(xp, dy, self.params["W"])
        if self.use_bias:
            db = dy.sum(axis=0)
            b = self.params["b"]
            self.grads["b"] = db if b.ndim == 1 else get_array_module(b).repeat(db[:, None], b.shape[1], axis=1)
        return dx


@register_layer
class Flatten(Layer):
    """Collapse every axis but the batch axis."""

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self._shape = None
        self._channels_last = False

    def forward(self, x, training: bool = False):
        """x (N, d1, d2, ...) -> y (N, d1 * d2 * ...), in (d1, d2, ...) order whatever x's layout
        (a channels-last x is copied)."""
        self._shape = x.shape
        self._channels_last = lies_channels_last(x)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        """dy (N, d1 * d2 * ...) -> dx (N, d1, d2, ...), laid out as x was: the layers before a
        channels-last x then run on one layout (mixed layouts make numpy's loops stride)."""
        if not self._channels_last:
            return dy.reshape(self._shape)
        dx = empty_in_layout(get_array_module(dy), self._shape, dy.dtype, last=True)
        dx[...] = dy.reshape(self._shape)
        return dx


def _one_minus_square(y, out):
    """out = 1 - y**2 (tanh's derivative from its output), in place: no temporaries."""
    get_array_module(y).multiply(y, y, out=out)
    get_array_module(y).subtract(1, out, out=out)
    return out


def _tanh_grad(dy, y, out):
    """out = dy * (1 - y**2), in place: no temporaries."""
    _one_minus_square(y, out)
    out *= dy
    return out


@register_layer
class Tanh(Layer):
    """Element-wise hyperbolic tangent (the paper's activation)."""

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self._y = None

    def forward(self, x, training: bool = False):
        """x (any shape) -> y = tanh(x), same shape."""
        xp = get_array_module(x)
        self._y = elementwise(xp, xp.tanh, xp.empty_like(x), x)
        return self._y

    def derivative(self):
        """1 - y**2 for the last forward's output y: the factor backward multiplies dy by, as a new
        array laid out as y (a layer after this one can multiply its own gradient straight into it)."""
        xp = get_array_module(self._y)
        return elementwise(xp, _one_minus_square, xp.empty_like(self._y), self._y)

    def backward(self, dy):
        """dy (same shape) -> dx = dy * (1 - y**2)."""
        xp = get_array_module(dy)
        return elementwise(xp, _tanh_grad, xp.empty_like(dy, dtype=xp.result_type(dy, self._y)), dy, self._y)


@register_layer
class ReLU(Layer):
    """Element-wise max(x, 0)."""

    def __init__(self, name: str | None = None):
        super().__init__(name)
        self._positive = None

    def forward(self, x, training: bool = False):
        """x (any shape) -> y = max(x, 0), same shape.

        The mask for backward (y > 0, exactly where x > 0) is taken from y per cache-sized block while
        the block is still in the cache: x is read from memory once, not twice. The zeros are a block
        of zeros laid out as x, not the scalar 0: numpy's ``maximum`` against a scalar runs an
        unvectorised loop, 2.5-3.5 times slower (measured on numpy 2.4, AMD EPYC, AVX2).
        """
        xp = get_array_module(x)
        positive, y = xp.empty_like(x, dtype=bool), xp.empty_like(x)  # both laid out as x

        def work(s, e):
            zeros = None
            for a, z, block in item_blocks(s, e, x, _BLOCK_ELEMENTS):
                if zeros is None:  # the first block is the largest: its scratch serves them all
                    zeros = block
                    zeros.fill(0)
                xp.maximum(x[a:z], zeros[:z - a], out=y[a:z])
                xp.greater(y[a:z], 0, out=positive[a:z])

        over_batch(xp, work, x.shape[0], x.size)
        self._positive = positive
        return y

    def backward(self, dy):
        """dy (same shape) -> dx = dy where x > 0, else 0 (subgradient 0 at the kink)."""
        xp = get_array_module(dy)
        return elementwise(xp, xp.multiply, xp.empty_like(dy), dy, self._positive)


# Items per block of ReLU's forward: about this many elements (256 KB of float32), so the mask is
# taken from a block of y still in the cache.
_BLOCK_ELEMENTS = 1 << 16


@register_layer
class Dropout(Layer):
    """Inverted dropout: in training zero each element with probability ``p`` and scale the rest by
    1 / (1 - p), so evaluation (``training=False``) is the identity.

    The mask comes from the layer's own generator, seeded by ``seed`` (or drawn from ``rng`` when no
    seed is given), from the random module of the input's array library so it stays on the device.
    For gradient checks set ``layer.freeze_mask = True`` after one training forward: later forwards
    re-use the last mask (when the input shape is unchanged) instead of drawing a new one.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None, rng=None, name: str | None = None):
        super().__init__(name)
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        if seed is None:
            seed = int(_rng(rng).integers(2**31 - 1))
        self.seed = int(seed)
        self.freeze_mask = False
        self._generator = None
        self._generator_xp = None
        self._mask = None  # last mask drawn (kept for freeze_mask)
        self._applied = None  # mask used by the last forward (None after an evaluation forward)

    def config(self) -> dict:
        return {"p": self.p, "seed": self.seed, "name": self.name}

    def reseed(self, seed: int):
        """Restart the mask generator from ``seed`` (the Trainer does this every epoch)."""
        self.seed = int(seed)
        self._generator = None

    def _draw(self, xp, shape, dtype):
        if self._generator is None or self._generator_xp is not xp:
            self._generator = xp.random.default_rng(self.seed)
            self._generator_xp = xp
        keep = self._generator.random(shape, dtype=np.float32) >= self.p
        return keep.astype(dtype) * (1.0 / (1.0 - self.p))

    def forward(self, x, training: bool = False):
        """x (any shape) -> y, same shape: x * mask / (1 - p) in training, x otherwise."""
        if not training or self.p == 0.0:
            self._applied = None
            return x
        xp = get_array_module(x)
        reuse = self.freeze_mask and self._mask is not None and self._mask.shape == x.shape
        if not reuse:
            self._mask = self._draw(xp, x.shape, x.dtype)
        else:
            self._mask = to_device(self._mask, xp).astype(x.dtype, copy=False)
        self._applied = self._mask
        return x * self._mask

    def backward(self, dy):
        """dy (same shape) -> dx = dy * mask / (1 - p) (dy itself after an evaluation forward)."""
        return dy if self._applied is None else dy * self._applied
