"""Plain-loop reference implementations of convolution and pooling, used only by the tests.

Slow and obviously correct: one Python loop per output element, no strides tricks, no GEMM.
"""

from __future__ import annotations

import itertools

import numpy as np


def conv(x, W, b=None, stride=1, padding=0, groups=1):
    """Grouped convolution over any number of spatial dims (cross-correlation, as torch).

    x (N, C, *S), W (O, C/groups, *k), b (O,) or None -> (N, O, *S').
    """
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    d = x.ndim - 2
    stride = (stride,) * d if isinstance(stride, int) else tuple(stride)
    padding = (padding,) * d if isinstance(padding, int) else tuple(padding)
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    n, o = x.shape[0], W.shape[0]
    cg, og = W.shape[1], W.shape[0] // groups
    kernel = W.shape[2:]
    out_sizes = [(s - k) // st + 1 for s, k, st in zip(xpad.shape[2:], kernel, stride)]
    out = np.zeros((n, o, *out_sizes))
    for i in range(n):
        for oc in range(o):
            g = oc // og
            for pos in itertools.product(*(range(s) for s in out_sizes)):
                window = tuple(slice(p * st, p * st + k) for p, st, k in zip(pos, stride, kernel))
                patch = xpad[(i, slice(g * cg, (g + 1) * cg)) + window]
                out[(i, oc) + pos] = np.sum(patch * W[oc]) + (0.0 if b is None else b[oc])
    return out


def conv_backward(x, W, dy, stride=1, padding=0, groups=1):
    """Gradients of ``conv`` by the definition, every output element adding dy times its window:
    -> (dx like x, dW like W, db (O,)), in float64."""
    x, W, dy = (np.asarray(a, dtype=np.float64) for a in (x, W, dy))
    d = x.ndim - 2
    stride = (stride,) * d if isinstance(stride, int) else tuple(stride)
    padding = (padding,) * d if isinstance(padding, int) else tuple(padding)
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    dxpad, dW = np.zeros_like(xpad), np.zeros_like(W)
    cg, og = W.shape[1], W.shape[0] // groups
    for index in np.ndindex(*dy.shape):
        n, o, pos = index[0], index[1], index[2:]
        g = o // og
        window = (n, slice(g * cg, (g + 1) * cg)) + tuple(slice(p * s, p * s + k) for p, s, k in
                                                           zip(pos, stride, W.shape[2:]))
        dW[o] += dy[index] * xpad[window]
        dxpad[window] += dy[index] * W[o]
    inner = (slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(padding, x.shape[2:]))
    return dxpad[inner], dW, dy.sum(axis=(0,) + tuple(range(2, 2 + d)))


def pool(x, kernel, stride=None, mode="max"):
    """Max or average pooling over the last len(kernel) axes, no padding, remainder dropped."""
    x = np.asarray(x, dtype=np.float64)
    kernel = tuple(kernel)
    d = len(kernel)
    stride = kernel if stride is None else tuple(stride)
    lead = x.shape[:-d]
    out_sizes = [(s - k) // st + 1 for s, k, st in zip(x.shape[-d:], kernel, stride)]
    out = np.zeros(lead + tuple(out_sizes))
    reduce = np.max if mode == "max" else np.mean
    for idx in itertools.product(*(range(s) for s in lead)):
        for pos in itertools.product(*(range(s) for s in out_sizes)):
            window = tuple(slice(p * st, p * st + k) for p, st, k in zip(pos, stride, kernel))
            out[idx + pos] = reduce(x[idx + window])
    return out


def subsampling(x, W, b, kernel):
    """LeNet trainable subsampling: y[n, m, i, j] = W[m] * sum(window) + b[m] over the last two axes."""
    x = np.asarray(x, dtype=np.float64)
    kh, kw = kernel
    sums = pool(x, (kh, kw), mode="mean") * (kh * kw)
    return sums * W[(None,) + (...,) + (None, None)] + b[(None,) + (...,) + (None, None)]
