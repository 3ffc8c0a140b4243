"""Convolution layers: Conv2D, Conv3D and Ji et al.'s per-segment SegmentConv3D.

All three share one frame-wise formulation (``conv_forward`` / ``conv_backward``). The input is seen as
x (N, C, T, *S): only the S axes are unfolded into columns (K = C * prod(ks) rows), one GEMM with the
weight reshaped to (O * kt, K) gives Y[(o, dt), (n, t, *s')] for every frame, and the temporal sum is
kt shifted adds: out[n, o, t'] = sum_dt Y[o, dt, n, t' * st + dt]. For a 3D kernel this makes a column
matrix kt times smaller than a full 3D im2col (the first Ji layer, kernel 3x7x9, would need ~97 MB per
cube otherwise). Conv2D is the same code with a single frame and kt = 1; a full N-d im2col is the
special case "one frame, kt = 1, unfold all axes".
"""

from __future__ import annotations

import math

import numpy as np

from actionrec.backend import get_array_module
from actionrec.errors import ShapeError
from actionrec.nn.base import Layer, register_layer
from actionrec.nn.im2col import as_tuple, col2im, im2col, output_size, pad_spatial
from actionrec.nn.init import initial_weights


# --- functional core ---------------------------------------------------------------------------
def _weight_matrix(W, groups: int):
    """W (O, C/g, kt, *ks) -> (g, O/g * kt, C/g * prod(ks)), rows ordered (o, dt), columns (c, taps)."""
    o, cg, kt = W.shape[:3]
    ks = W.shape[3:]
    d = len(ks)
    blocks = W.reshape((groups, o // groups, cg, kt) + ks)
    blocks = blocks.transpose((0, 1, 3, 2) + tuple(range(4, 4 + d)))
    return blocks.reshape(groups, (o // groups) * kt, cg * math.prod(ks))


def _weight_from_matrix(Wmat, w_shape: tuple, groups: int):
    """Inverse of ``_weight_matrix``: (g, O/g * kt, C/g * prod(ks)) -> (O, C/g, kt, *ks)."""
    o, cg, kt = w_shape[:3]
    ks = tuple(w_shape[3:])
    d = len(ks)
    blocks = Wmat.reshape((groups, o // groups, kt, cg) + ks)
    blocks = blocks.transpose((0, 1, 3, 2) + tuple(range(4, 4 + d)))
    return blocks.reshape(w_shape)


def _group_matmul(a, b):
    """Per-group product (g, m, k) @ (g, k, n) -> (g, m, n).

    A 2D product per group: numpy's stacked matmul falls back to a slow non-BLAS loop when an operand
    is a transposed view (40x slower for dW = dY @ cols^T), while a 2D ``@`` hands it to BLAS as is.
    """
    if a.shape[0] == 1:
        return (a[0] @ b[0])[None]
    xp = get_array_module(a, b)
    out = xp.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=xp.result_type(a, b))
    for g in range(a.shape[0]):
        out[g] = a[g] @ b[g]
    return out


def _frame_slice(dt: int, stride: int, t_out: int) -> slice:
    """Input frames t' * stride + dt for t' = 0 .. t_out - 1."""
    return slice(dt, dt + stride * (t_out - 1) + 1, stride)


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
    xp = get_array_module(x)
    n = x.shape[0]
    o, cg, kt = W.shape[:3]
    ks = tuple(W.shape[3:])
    st = stride[0]
    xpad = pad_spatial(x, padding)  # pads frames and spatial axes at once
    cols = im2col(xpad, ks, stride[1:])  # (C * prod(ks), N * Tp * prod(S'))
    cols = cols.reshape(groups, cg * math.prod(ks), -1)
    Wmat = _weight_matrix(W, groups)
    Y = _group_matmul(Wmat, cols)  # (g, O/g * kt, N * Tp * prod(S'))
    t_pad = xpad.shape[2]
    out_shape = conv_output_shape(x.shape, W.shape, stride, padding)
    t_out, s_out = out_shape[2], out_shape[3:]
    Y = Y.reshape((o, kt, n, t_pad) + s_out)
    acc = Y[:, 0, :, _frame_slice(0, st, t_out)].copy()  # (O, N, T', *S')
    for dt in range(1, kt):
        acc += Y[:, dt, :, _frame_slice(dt, st, t_out)]
    out = xp.ascontiguousarray(acc.swapaxes(0, 1))
    if b is not None:
        out += b.reshape((1, o) + (1,) * (out.ndim - 2))
    cache = (cols, Wmat, xpad.shape, x.shape, W.shape, stride, padding, groups)
    return out, cache


def conv_backward(dout, cache, input_grad: bool = True):
    """Mirror of ``conv_forward``: dout (N, O, T', *S') -> (dx (N, C, T, *S) or None, dW, db (O,)).

    dY[(o, dt), (n, t)] holds dout[n, o, t'] where t = t' * st + dt and zeros for frames no output
    uses; then dW = dY @ cols^T and dcols = W^T @ dY, folded back frame by frame (col2im).
    """
    xp = get_array_module(dout)
    cols, Wmat, xpad_shape, x_shape, w_shape, stride, padding, groups = cache
    o, _, kt = w_shape[:3]
    ks = tuple(w_shape[3:])
    n, _, t_out = dout.shape[:3]
    s_out = dout.shape[3:]
    st = stride[0]
    t_pad = xpad_shape[2]
    dout_t = dout.swapaxes(0, 1)  # (O, N, T', *S')
    dY = xp.zeros((o, kt, n, t_pad) + s_out, dtype=dout.dtype)
    for dt in range(kt):
        dY[:, dt, :, _frame_slice(dt, st, t_out)] = dout_t
    dY = dY.reshape(groups, (o // groups) * kt, -1)
    # dW = dY @ cols^T, computed as (cols @ dY^T)^T: OpenBLAS is up to 100x slower on the
    # (small x huge) @ (huge x small) orientation with the long axis inside.
    dWmat = _group_matmul(cols, dY.transpose(0, 2, 1)).transpose(0, 2, 1)
    dW = _weight_from_matrix(dWmat, w_shape, groups)
    db = dout.sum(axis=(0,) + tuple(range(2, dout.ndim)))
    if not input_grad:
        return None, dW, db
    dcols = _group_matmul(Wmat.transpose(0, 2, 1), dY)  # (g, C/g * prod(ks), N * Tp * prod(S'))
    dcols = dcols.reshape(-1, dcols.shape[-1])
    dxpad = col2im(dcols, xpad_shape, ks, stride[1:])
    if not any(padding):
        return dxpad, dW, db
    crop = tuple(slice(p, p + s) for p, s in zip(padding, x_shape[2:]))
    return xp.ascontiguousarray(dxpad[(slice(None), slice(None)) + crop]), dW, db


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

    def forward(self, x, training=False):
        self.output_shape(x.shape)  # validates
        self._cache = None  # free the previous batch's column matrix before building this one
        stride, padding = self._frame_geometry(x.shape)[2:]
        out, self._cache = conv_forward(self._as_frames(x), self._as_frames(self.params["W"]),
                                        self.params.get("b"), stride, padding, self.groups)
        return out if self.ndim == 3 else out[:, :, 0]

    def backward(self, dy):
        dx, dW, db = conv_backward(self._as_frames(dy), self._cache, self.input_grad)
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
        self._caches = None

    def config(self):
        return {"segments": list(self.segments), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "groups": self.groups, "shared": self.shared, "bias": self.bias, "init": self.init,
                "dtype": np.dtype(self.dtype).name, "input_grad": self.input_grad, "name": self.name}

    def _segment_params(self, s):
        b = self.params.get("b")
        if self.shared:
            return self.params["W"], b
        return self.params["W"][s], None if b is None else b[s]

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

    def forward(self, x, training=False):
        self.output_shape(x.shape)  # validates
        self._caches = None  # free the previous batch's column matrices before building these
        xp = get_array_module(x)
        starts = self._starts()
        outs, self._caches = [], []
        for s in range(len(self.segments)):
            W, b = self._segment_params(s)
            out, cache = conv_forward(x[:, :, starts[s]: starts[s + 1]], W, b, (1, 1, 1), (0, 0, 0), self.groups)
            outs.append(out)
            self._caches.append(cache)
        return xp.concatenate(outs, axis=2)

    def backward(self, dy):
        xp = get_array_module(dy)
        out_starts = np.concatenate([[0], np.cumsum(self.output_segments)]).tolist()
        starts = self._starts()
        dx = None
        dW = xp.zeros_like(self.params["W"], dtype=dy.dtype)
        db = xp.zeros_like(self.params["b"], dtype=dy.dtype) if self.bias else None
        for s, cache in enumerate(self._caches):
            dx_s, dW_s, db_s = conv_backward(dy[:, :, out_starts[s]: out_starts[s + 1]], cache, self.input_grad)
            if self.shared:
                dW += dW_s
                if self.bias:
                    db += db_s
            else:
                dW[s] = dW_s
                if self.bias:
                    db[s] = db_s
            if dx_s is not None:
                if dx is None:
                    dx = xp.empty((dy.shape[0], self.in_channels, starts[-1]) + dx_s.shape[3:],
                                  dtype=dx_s.dtype)
                dx[:, :, starts[s]: starts[s + 1]] = dx_s
        self.grads["W"] = dW
        if self.bias:
            self.grads["b"] = db
        return dx
