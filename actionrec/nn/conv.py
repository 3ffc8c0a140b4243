"""Convolution layers: Conv2D, Conv3D and Ji et al.'s per-segment SegmentConv3D.

All three share one frame-wise core (``actionrec.nn.banded``): x is seen as (N, C, T, *S), every frame
is convolved over its S axes with the kernels of all (output map, temporal tap) pairs through a banded
unfolding and one GEMM per chunk of items, and an output frame is the sum of kt shifted frames of that
product. Conv2D is the same code with a single frame and kt = 1; SegmentConv3D gives each segment of
the time axis its own kernels. The unfolded matrix is rebuilt in backward, never cached.

Conv2D layers with enough output maps that the banding would not tile (b = 1: plain im2col, as in
the 2D nets) use the batched core instead (``actionrec.nn.batched_conv``): whole chunks of items per
unfolding and GEMM, where the frame-wise core pays per-item overheads. 3x3 and 5x5 stride-1 layers
without groups and with at least 16 input and output maps (VGG stacks, MNIST's second layer) run by
Winograd's F(4x4, 3x3) / F(4x4, 5x5) (``actionrec.nn.winograd``; F(2x2, 5x5) for outputs too small
for 4x4 tiles): 4 / 6.25 times fewer multiply-adds than im2col.

SegmentConv3D (the Ji layers: one or few input maps per group, kernels of 4x4 taps and more) runs in
the frequency domain on the CPU (``actionrec.nn.fftconv``): each frame is transformed once, whatever
the kernel's size (measured 1.8-2.1x faster than the banded core on every Ji layer).
"""

from __future__ import annotations

import math

import numpy as np

from actionrec.backend import get_array_module
from actionrec.errors import ShapeError
from actionrec.nn.banded import banded_conv_backward, banded_conv_forward, choose_tile
from actionrec.nn.batched_conv import batched_conv_backward, batched_conv_forward
from actionrec.nn.fftconv import fft_conv_backward, fft_conv_forward, fft_pays
from actionrec.nn.base import Layer, register_layer
from actionrec.nn.im2col import as_tuple, output_size
from actionrec.nn.init import initial_weights
from actionrec.nn.winograd import winograd_applies, winograd_conv_backward, winograd_conv_forward


# --- functional core ---------------------------------------------------------------------------
def conv_output_shape(x_shape: tuple, w_shape: tuple, stride: tuple, padding: tuple) -> tuple:
    """Output shape of ``conv_forward`` (entries < 1 mean the kernel does not fit)."""
    spatial = tuple(output_size(s, k, st, p)
                    for s, k, st, p in zip(x_shape[2:], w_shape[2:], stride, padding))
    return (x_shape[0], w_shape[0]) + spatial


def conv_forward(x, W, b, stride: tuple, padding: tuple, groups: int):
    """Frame-wise grouped convolution.

    x (N, C, T, *S), W (O, C/g, kt, *ks), b (O,) or None, stride and padding (t, *s) tuples
    -> out (N, O, T', *S') with T' = (T + 2 pt - kt) // st + 1 (likewise S'), and the cache for
    ``conv_backward``.
    """
    return banded_conv_forward(x, [W], [b], [0, x.shape[2] + 2 * padding[0]], stride, padding, groups)


def conv_backward(dout, cache, input_grad: bool = True):
    """Mirror of ``conv_forward``: dout (N, O, T', *S') -> (dx (N, C, T, *S) or None, dW, db (O,))."""
    dx, dws, dbs = banded_conv_backward(dout, cache, input_grad)
    return dx, dws[0], dbs[0]


# --- layers --------------------------------------------------------------------------------------
def _check_groups(in_channels: int, out_channels: int, groups: int):
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")


def _check_input(layer, shape, axes: str, channels: int):
    """ShapeError naming the layer and both shapes unless ``shape`` has layout ``axes`` with ``channels``."""
    if len(shape) != len(axes) or shape[1] != channels:
        expected = "(" + ", ".join([axes[0], str(channels)] + list(axes[2:])) + ")"
        raise ShapeError(f"{layer.name}: expected input of shape {expected}, got {tuple(shape)}")


def _check_fits(layer, x_shape, out_shape, kernel):
    if min(out_shape[2:]) < 1:
        raise ShapeError(f"{layer.name}: kernel {tuple(kernel)} (with padding) is larger than the input "
                         f"{tuple(x_shape)}; use a smaller kernel or a larger input")


class _ConvND(Layer):
    """Conv2D / Conv3D: shared constructor, parameters and frame-wise forward/backward."""

    ndim = 0  # spatial dims, set by subclasses
    axes = ""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True,
                 init="lecun", rng=None, dtype="float32", input_grad=True, name=None):
        super().__init__(name)
        d = self.ndim
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        self.kernel_size = as_tuple(kernel_size, d, "kernel_size")
        self.stride = as_tuple(stride, d, "stride")
        self.padding = as_tuple(padding, d, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError("kernel_size and stride must be >= 1 and padding >= 0")
        self.bias, self.init, self.input_grad = bool(bias), init, bool(input_grad)
        self._core = None  # which core ran the last forward: "winograd", "batched" or "framewise"
        cg = self.in_channels // self.groups
        volume = math.prod(self.kernel_size)
        dtype = np.dtype(dtype)
        self.params["W"] = initial_weights((self.out_channels, cg) + self.kernel_size, cg * volume,
                                           self.out_channels * volume // self.groups, init, rng, dtype)
        if self.bias:
            self.params["b"] = np.zeros(self.out_channels, dtype=dtype)
        self._cache = None

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "groups": self.groups, "bias": self.bias,
                "init": self.init, "dtype": np.dtype(self.dtype).name, "input_grad": self.input_grad,
                "name": self.name}

    def _as_frames(self, a):
        """Frame-wise view: 3D arrays unchanged, 2D arrays get a single frame axis (no copy)."""
        return a if self.ndim == 3 else a[:, :, None]

    def _frame_geometry(self, input_shape):
        """(input shape, weight shape, stride, padding) as seen by the frame-wise core."""
        w_shape = self.params["W"].shape
        if self.ndim == 3:
            return tuple(input_shape), w_shape, self.stride, self.padding
        return (tuple(input_shape[:2]) + (1,) + tuple(input_shape[2:]), w_shape[:2] + (1,) + w_shape[2:],
                (1,) + self.stride, (0,) + self.padding)

    def output_shape(self, input_shape):
        """Output shape for ``input_shape``; ShapeError when the rank, channels or size do not fit."""
        _check_input(self, input_shape, self.axes, self.in_channels)
        out = conv_output_shape(*self._frame_geometry(input_shape))
        _check_fits(self, input_shape, out, self.kernel_size)
        return out if self.ndim == 3 else out[:2] + out[3:]

    def _batched(self, out_shape) -> bool:
        """Batched core for 2D layers the banded core would run as plain im2col (tile width 1)."""
        if self.ndim != 2:
            return False
        return self.stride[-1] != 1 or choose_tile(self.out_channels // self.groups, out_shape[-1],
                                                   self.kernel_size[-1]) == 1

    def forward(self, x, training=False):
        out_shape = self.output_shape(x.shape)  # validates
        self._cache = None  # free the previous batch's cache before building this one
        # Winograd on the CPU only: on the GPU cuBLAS runs im2col's GEMMs near its peak, and the CuPy path
        # of the Winograd core has not run on a GPU yet (none was lent): the batched core stays there.
        if (self.ndim == 2 and get_array_module(x) is np
                and winograd_applies(self.kernel_size, self.stride, self.groups, self.in_channels,
                                     self.out_channels)):
            out, cache = winograd_conv_forward(x, self.params["W"], self.params.get("b"), self.padding,
                                               keep_transformed=training)
            self._cache, self._core = cache, "winograd"
            return out
        if self._batched(out_shape):
            # a first layer keeps its column matrices for backward (its only use of them there)
            out, cache = batched_conv_forward(x, self.params["W"], self.params.get("b"), self.stride,
                                              self.padding, self.groups,
                                              keep_columns=training and not self.input_grad)
            self._cache, self._core = cache, "batched"
            return out
        stride, padding = self._frame_geometry(x.shape)[2:]
        out, cache = conv_forward(self._as_frames(x), self._as_frames(self.params["W"]),
                                  self.params.get("b"), stride, padding, self.groups)
        self._cache, self._core = cache, "framewise"
        return out if self.ndim == 3 else out[:, :, 0]

    def backward(self, dy):
        cache = self._cache
        if self._core in ("batched", "winograd"):
            backward = batched_conv_backward if self._core == "batched" else winograd_conv_backward
            dx, dW, db = backward(dy, cache, self.input_grad, need_db=self.bias)
            self.grads["W"] = dW
            if self.bias:
                self.grads["b"] = db
            return dx
        dx, dW, db = conv_backward(self._as_frames(dy), cache, self.input_grad)
        self.grads["W"] = dW.reshape(self.params["W"].shape)
        if self.bias:
            self.grads["b"] = db
        if dx is None or self.ndim == 3:
            return dx
        return dx[:, :, 0]


@register_layer
class Conv2D(_ConvND):
    """2D convolution with groups, stride and zero padding.

    forward: x (N, C, H, W) -> y (N, O, H', W'), H' = (H + 2 ph - kh) // sh + 1 (likewise W').
    Params "W" (O, C/groups, kh, kw), "b" (O,). backward: dy (N, O, H', W') -> dx (N, C, H, W)
    (None when input_grad=False).
    """

    ndim = 2
    axes = "NCHW"


@register_layer
class Conv3D(_ConvND):
    """3D convolution with groups, stride and zero padding (frame-wise im2col, see module docstring).

    forward: x (N, C, T, H, W) -> y (N, O, T', H', W'), T' = (T + 2 pt - kt) // st + 1 (likewise H',
    W'). Params "W" (O, C/groups, kt, kh, kw), "b" (O,). backward: dy (N, O, T', H', W') ->
    dx (N, C, T, H, W) (None when input_grad=False).
    """

    ndim = 3
    axes = "NCTHW"


@register_layer
class SegmentConv3D(Layer):
    """Valid stride-1 3D convolution applied separately to each time segment (Ji et al.'s channels).

    forward: x (N, C, sum(segments), H, W) -> y (N, O, sum(output_segments), H - kh + 1, W - kw + 1),
    output_segments[s] = segments[s] - kt + 1; no output frame straddles two segments.
    Params "W" (S, O, C/groups, kt, kh, kw), "b" (S, O): one kernel set per segment; with shared=True
    "W" (O, C/groups, kt, kh, kw), "b" (O,). backward: dy of the output shape -> dx of the input shape
    (None when input_grad=False).
    """

    def __init__(self, segments, in_channels, out_channels, kernel_size, groups=1, shared=False, bias=True,
                 init="lecun", rng=None, dtype="float32", input_grad=True, name=None):
        super().__init__(name)
        self.segments = tuple(int(s) for s in segments)
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        _check_groups(self.in_channels, self.out_channels, self.groups)
        self.kernel_size = as_tuple(kernel_size, 3, "kernel_size")
        kt = self.kernel_size[0]
        if not self.segments or min(self.segments) < kt:
            raise ValueError(f"every segment must have at least kt={kt} frames, got segments={self.segments}")
        self.output_segments = tuple(s - kt + 1 for s in self.segments)
        self.shared, self.bias, self.init, self.input_grad = bool(shared), bool(bias), init, bool(input_grad)
        cg = self.in_channels // self.groups
        volume = math.prod(self.kernel_size)
        lead = () if self.shared else (len(self.segments),)
        dtype = np.dtype(dtype)
        self.params["W"] = initial_weights(lead + (self.out_channels, cg) + self.kernel_size, cg * volume,
                                           self.out_channels * volume // self.groups, init, rng, dtype)
        if self.bias:
            self.params["b"] = np.zeros(lead + (self.out_channels,), dtype=dtype)
        self._cache = None

    def config(self):
        return {"segments": list(self.segments), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "groups": self.groups, "shared": self.shared, "bias": self.bias, "init": self.init,
                "dtype": np.dtype(self.dtype).name, "input_grad": self.input_grad, "name": self.name}

    def _starts(self):
        return np.concatenate([[0], np.cumsum(self.segments)]).tolist()

    def output_shape(self, input_shape):
        """Output shape for ``input_shape``; ShapeError when the rank, channels, frames or size do not fit."""
        _check_input(self, input_shape, "NCTHW", self.in_channels)
        n, _, t, h, w = input_shape
        if t != sum(self.segments):
            raise ShapeError(f"{self.name}: expected {sum(self.segments)} frames (segments {self.segments}) "
                             f"on axis 2, got input of shape {tuple(input_shape)}")
        _, kh, kw = self.kernel_size
        out = (n, self.out_channels, sum(self.output_segments), h - kh + 1, w - kw + 1)
        _check_fits(self, input_shape, out, self.kernel_size)
        return out

    def _segment_kernels(self):
        """(list of W (O, C/g, kt, kh, kw), list of b (O,) or None), one entry per segment."""
        n = len(self.segments)
        W, b = self.params["W"], self.params.get("b")
        kernels = [W] * n if self.shared else list(W)
        biases = [b] * n if (self.shared or b is None) else list(b)
        return kernels, biases

    def forward(self, x, training=False, activation=None):
        """x (N, C, T, H, W) -> y (see the class). ``activation`` (an element-wise ufunc of the array
        library, such as ``tanh``, or None): y is activation(convolution), applied by the FFT core as it
        writes its output (one pass over the maps fewer than a separate layer; ``TanhSubsampling``) and
        in place elsewhere. ``backward`` still takes the gradient with respect to the convolution."""
        self.output_shape(x.shape)  # validates
        self._cache = None  # free the previous batch's input before keeping this one
        kernels, biases = self._segment_kernels()
        if get_array_module(x) is np and fft_pays(kernels[0].shape):
            out, cache = fft_conv_forward(x, kernels, biases, self._starts(), self.groups, keep_spectra=training,
                                          activation=activation)
            self._cache = (fft_conv_backward, cache)
            return out
        out, cache = banded_conv_forward(x, kernels, biases, self._starts(), (1, 1, 1), (0, 0, 0), self.groups)
        self._cache = (banded_conv_backward, cache)  # keeps x, not out: out may be activated in place
        if activation is not None:
            activation(out, out=out)
        return out

    def backward(self, dy):
        core_backward, cache = self._cache
        dx, dws, dbs = core_backward(dy, cache, self.input_grad)
        xp = get_array_module(dy)
        self.grads["W"] = sum(dws[1:], dws[0]) if self.shared else xp.stack(dws)
        if self.bias:
            self.grads["b"] = sum(dbs[1:], dbs[0]) if self.shared else xp.stack(dbs)
        return dx
