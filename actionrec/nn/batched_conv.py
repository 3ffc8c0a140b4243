"""Batched im2col convolution: the core behind Conv2D's many-channel layers (the 2D nets).

The banded core (``actionrec.nn.banded``) is built for thin layers on large frames and works item by
item. Layers with many input channels and output maps (VGG-style 3x3 stacks, MNIST's second 5x5
convolution) need no banding: the plain column matrix already gives the GEMM enough columns, and what
costs is per-item overhead. Here a chunk of ``m`` items is unfolded at once, by one strided copy, into

    cols[(c, *taps), n, p] = x_padded[n, c, p * stride + taps]        (C/g * prod(k), m, P)

with P = prod(out) output positions, and

- forward: y[n] = W (O/g, C/g * prod(k)) @ cols[:, n]: one stacked matmul per chunk that writes the
  output straight in (N, O, *out) layout;
- weight gradient: dW = dY (O/g, m * P) @ cols^T (one GEMM over the whole chunk, dY transposed once);
- input gradient: for stride 1 on maps not much larger than the output ("same" padding), the full
  correlation of dY with the flipped kernels, i.e. this forward run on dY, whose column matrix also
  gives dW (so x is not unfolded again: backward 8-12% faster on CIFAR's layers); otherwise
  dcols[n] = W^T @ dY[n] added back onto the input grid with one add per kernel tap (the adjoint of
  the unfolding), over flat ranges of the grid when the stride is 1.

The column matrix is rebuilt in backward (one copy), never kept between the passes: the cache holds
the padded input only. Chunks of items run on every core (``actionrec.nn.parallel``), each about
``_COLS_ELEMENTS`` large so the copy and the GEMM that reads it next stay near the caches.
numpy and CuPy alike; any number of spatial axes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from actionrec.backend import get_array_module
from actionrec.nn.banded import flipped_kernels
from actionrec.nn.im2col import output_size, window_view
from actionrec.nn.layout import channels_last_view, empty_in_layout, lies_channels_last
from actionrec.nn.parallel import item_chunks, map_chunks, sum_parts

# Column-matrix elements built at once per chunk (whole items, at least one): about 2 MB of float32.
_COLS_ELEMENTS = 1 << 19


def _item_chunks(xp, n: int, per_item: int):
    """Chunks of whole items of about ``_COLS_ELEMENTS`` column entries each (``item_chunks``)."""
    return item_chunks(xp, n, per_item, _COLS_ELEMENTS)


def _pad(x, padding: tuple):
    """x (N, C, *S) zero-padded by ``padding`` on both sides of every spatial axis (x itself if none)."""
    if not any(padding):
        return x
    xp = get_array_module(x)
    out = xp.zeros(x.shape[:2] + tuple(s + 2 * p for s, p in zip(x.shape[2:], padding)), dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(padding, x.shape[2:]))] = x
    return out


def _unfold(cols, x_chunk, kernel: tuple, stride: tuple):
    """Copy the windows of x_chunk (m, C/g, *S) into cols (C/g, *kernel, m, *out) (contiguous runs
    along the last output axis)."""
    d = len(kernel)
    windows = window_view(x_chunk, kernel, stride)  # (m, C/g, *out, *kernel)
    order = (1,) + tuple(range(2 + d, 2 + 2 * d)) + (0,) + tuple(range(2, 2 + d))
    cols[...] = windows.transpose(order)


def _fold(dx_chunk, dcols, kernel: tuple, stride: tuple, out: tuple):
    """Adjoint of ``_unfold``: add dcols (m, C/g, *kernel, *out) onto dx_chunk (m, C/g, *S), one
    strided add per kernel tap."""
    for taps in itertools.product(*(range(k) for k in kernel)):
        target = tuple(slice(t, t + s * (o - 1) + 1, s) for t, s, o in zip(taps, stride, out))
        dx_chunk[(slice(None), slice(None)) + target] += dcols[(slice(None), slice(None)) + taps + (Ellipsis,)]


def _grid_offsets(grid: tuple, out: tuple):
    """For stride 1 on a C-ordered grid: (flat offset of each output position, the length L of the
    flat range from the first to the last one)."""
    steps = [math.prod(grid[a + 1:]) for a in range(len(grid))]
    return steps, sum((o - 1) * st for o, st in zip(out, steps)) + 1


def _input_gradient_flat(dx_chunk, w_t, dy_chunk, kernel: tuple):
    """Stride 1: add W^T dY back onto dx_chunk (m, C/g, *S) through flat ranges of the grid.

    dY is spread onto the grid's row pitch (zeros between the rows of each output map), so that every
    kernel tap lands on one contiguous range of the flattened input: one long add per tap instead of
    one short add per output row (8 floats on MNIST's second layer, where numpy's per-row overhead
    dominates the fold), at the cost of the gap columns in the GEMM.
    """
    xp = get_array_module(dy_chunk)
    m, og = dy_chunk.shape[:2]
    out, grid = dy_chunk.shape[2:], dx_chunk.shape[2:]
    steps, length = _grid_offsets(grid, out)
    spread = xp.zeros((m, og, length), dtype=dy_chunk.dtype)
    on_grid = xp.lib.stride_tricks.as_strided(
        spread, shape=(m, og) + out, strides=spread.strides[:2] + tuple(st * spread.itemsize for st in steps))
    on_grid[...] = dy_chunk
    dcols = xp.matmul(w_t, spread).reshape((m, dx_chunk.shape[1]) + kernel + (length,))
    dx_flat = dx_chunk.reshape(dx_chunk.shape[:2] + (-1,))
    for taps in itertools.product(*(range(k) for k in kernel)):
        start = sum(t * st for t, st in zip(taps, steps))
        dx_flat[:, :, start:start + length] += dcols[(slice(None), slice(None)) + taps]


def batched_conv_forward(x, W, b, stride: tuple, padding: tuple, groups: int, keep_columns: bool = False):
    """Grouped convolution over the spatial axes of x.

    x (N, C, *S), W (O, C/g, *k), b (O,) or None, stride and padding tuples of len(S)
    -> y (N, O, *S') with S'_i = (S_i + 2 p_i - k_i) // s_i + 1 (laid out channels-last for 2D layers
    without groups on the CPU, see ``actionrec.nn.layout``), and the cache for backward.

    With ``keep_columns`` (for a layer without input gradient in training: CIFAR's first layer) the
    cache keeps the channels-last path's column matrices (C prod(k) times the output positions), which
    its backward then reads instead of unfolding x again.
    """
    xp = get_array_module(x)
    n, o = x.shape[0], W.shape[0]
    cg, og = W.shape[1], o // groups
    kernel, stride, padding = tuple(W.shape[2:]), tuple(stride), tuple(padding)
    xpad = _pad(x, padding)
    out = tuple(output_size(s, k, st) for s, k, st in zip(xpad.shape[2:], kernel, stride))
    depth, positions = cg * math.prod(kernel), math.prod(out)
    w_mat = W.reshape(groups, og, depth)
    # 2D layers without groups on the CPU write y channels-last, (positions, O) per item, as the
    # Winograd core does: the layers after them keep that layout, so a Winograd layer next reads it
    # without a transpose, and the same product costs the same either way.
    last = xp is np and groups == 1 and x.ndim == 4
    if last:
        y = empty_in_layout(xp, (n, o) + out, x.dtype, last=True)
        y_rows = channels_last_view(y).reshape(n, positions, o)  # a view: y is channels-last
    else:
        y = xp.empty((n, o) + out, dtype=x.dtype)
        y_flat = y.reshape(n, groups, og, positions)
    bias = None if b is None else b.reshape(o, 1)
    # (depth, O) in C order for the per-item products of the channels-last path: OpenBLAS's AVX-512
    # kernels read it 1.2-1.3x faster than the transposed view of W (CIFAR's first layer, 16 items:
    # 135 against 176 us on one thread)
    w_rows = xp.ascontiguousarray(w_mat[0].T) if last else None

    def work(n0, n1):
        m = n1 - n0
        cols = xp.empty((cg,) + kernel + (m,) + out, dtype=x.dtype)
        if last:
            _unfold(cols, xpad[n0:n1], kernel, stride)
            xp.matmul(cols.reshape(depth, m, positions).transpose(1, 2, 0), w_rows, out=y_rows[n0:n1])
            if bias is not None:
                y_rows[n0:n1] += b
            return cols if keep_columns else None
        for g in range(groups):
            _unfold(cols, xpad[n0:n1, g * cg:(g + 1) * cg], kernel, stride)
            xp.matmul(w_mat[g], cols.reshape(depth, m, positions).transpose(1, 0, 2), out=y_flat[n0:n1, g])
        if bias is not None:
            y[n0:n1].reshape(m, o, positions)[...] += bias

    columns = map_chunks(xp, work, _item_chunks(xp, n, depth * positions))
    kept = columns if last and keep_columns else None
    return y, (xpad, x.shape, W, stride, padding, groups, kept)


def _by_adjoint(x_shape, out: tuple, kernel: tuple, stride: tuple, padding: tuple) -> bool:
    """Input gradient as a forward convolution of dY: stride 1, padding at most k - 1 (so dY needs
    padding, not cropping), and at most 1.5 times as many input as output positions (a valid 5x5
    layer on 12x12 maps has 2.25: its padded dY would cost more than the fold)."""
    return (set(stride) == {1} and all(p <= k - 1 for p, k in zip(padding, kernel))
            and math.prod(x_shape[2:]) < 1.5 * math.prod(out))


def _backward_by_adjoint(dout, cache, need_db: bool = True):
    """Stride 1: (dx, dW, db) from one unfolding of dY per chunk instead of one of dY and one of x.

    dx is the forward convolution of dY (zero-padded by k - 1 - p) with the flipped kernels; the same
    column matrix cols[(o, t), n, q] = dY_padded[n, o, q + t] (q over the input positions) also gives
    the weight gradient, dW[o, c, k - 1 - t] = sum over (n, q) of x[n, c, q] * cols[(o, t), n, q]: both
    sums run over the same pairs of an output and an input position.
    """
    xp = get_array_module(dout)
    xpad, x_shape, W, _, padding, groups, _ = cache
    n, o = dout.shape[:2]
    cg, og = W.shape[1], o // groups
    kernel, spatial = tuple(W.shape[2:]), tuple(x_shape[2:])
    depth, positions = og * math.prod(kernel), math.prod(spatial)
    d = len(kernel)
    dpad = _pad(dout, tuple(k - 1 - p for k, p in zip(kernel, padding)))
    x = xpad[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(padding, spatial))]
    flipped = flipped_kernels(W, groups).reshape(groups, cg, depth)  # [g, c, (o, t)] = W[g o, c, k - 1 - t]
    dx = xp.empty(x_shape, dtype=dout.dtype)
    dx_flat = dx.reshape(n, groups, cg, positions)

    def work(n0, n1):
        m = n1 - n0
        cols = xp.empty((og,) + kernel + (m,) + spatial, dtype=dout.dtype)
        x_t = xp.empty((cg, m) + spatial, dtype=dout.dtype)
        dw = xp.empty((groups, cg, depth), dtype=dout.dtype)
        for g in range(groups):
            _unfold(cols, dpad[n0:n1, g * og:(g + 1) * og], kernel, (1,) * d)
            by_item = cols.reshape(depth, m, positions)
            xp.matmul(flipped[g], by_item.transpose(1, 0, 2), out=dx_flat[n0:n1, g])
            x_t[...] = x[n0:n1, g * cg:(g + 1) * cg].swapaxes(0, 1)
            xp.matmul(x_t.reshape(cg, m * positions), by_item.reshape(depth, m * positions).T, out=dw[g])
        return dw

    dw = sum(map_chunks(xp, work, _item_chunks(xp, n, depth * positions)))
    # dw[g, c, (o, t)] -> dW[g og + o, c, k - 1 - t]
    dw = dw.reshape((groups, cg, og) + kernel).swapaxes(1, 2)[(Ellipsis,) + (slice(None, None, -1),) * d]
    db = dout.reshape(n, o, -1).sum(axis=2).sum(axis=0) if need_db else None
    return dx, xp.ascontiguousarray(dw.reshape(W.shape)), db


def batched_conv_backward(dout, cache, need_dx: bool = True, need_db: bool = True):
    """Mirror of ``batched_conv_forward``: dout (N, O, *S') -> (dx (N, C, *S) or None, dW, db (O,), or
    None without ``need_db``: a layer without a bias skips a pass over dout)."""
    xp = get_array_module(dout)
    xpad, x_shape, W, stride, padding, groups, kept = cache
    n, o = dout.shape[:2]
    cg, og = W.shape[1], o // groups
    kernel, out = tuple(W.shape[2:]), tuple(dout.shape[2:])
    depth, positions = cg * math.prod(kernel), math.prod(out)
    w_mat = W.reshape(groups, og, depth)
    dx = None
    if need_dx and _by_adjoint(x_shape, out, kernel, stride, padding):
        return _backward_by_adjoint(dout, cache, need_db)
    # a channels-last dY without groups gives dW and db straight from its (positions, O) rows; the
    # input gradient needs it by map (a copy)
    rows = groups == 1 and lies_channels_last(dout)
    dy_rows = channels_last_view(dout).reshape(n, positions, o) if rows else None
    dy_flat = xp.ascontiguousarray(dout).reshape(n, groups, og, positions) if need_dx or not rows else None
    w_t = xp.ascontiguousarray(w_mat.transpose(0, 2, 1)) if need_dx else None  # (g, depth, O/g)
    if need_dx:
        dx = xp.zeros(x_shape, dtype=dout.dtype)
    flat = set(stride) == {1} and groups == 1  # flat ranges of whole (contiguous) chunks
    inner = tuple(slice(p, p + s) for p, s in zip(padding, x_shape[2:]))

    def work(n0, n1, kept_cols):
        m = n1 - n0
        cols = xp.empty((cg,) + kernel + (m,) + out, dtype=dout.dtype) if kept_cols is None else kept_cols
        dw = xp.empty((groups, og, depth), dtype=dout.dtype)
        db = xp.zeros((groups, og), dtype=dout.dtype)
        dx_chunk = None
        if need_dx:  # padded chunks are small: fold there (near the caches), then keep the interior
            dx_chunk = dx[n0:n1] if not any(padding) else xp.zeros((m,) + xpad.shape[1:], dtype=dout.dtype)
        for g in range(groups):
            if kept_cols is None:
                _unfold(cols, xpad[n0:n1, g * cg:(g + 1) * cg], kernel, stride)
            if rows:  # (m P, O) rows
                dy_r = dy_rows[n0:n1].reshape(m * positions, o)
                if need_db:
                    db[g] = xp.einsum("ij->j", dy_r)
                dw[g] = xp.matmul(cols.reshape(depth, m * positions), dy_r).T
            else:
                dy_t = xp.ascontiguousarray(dy_flat[n0:n1, g].transpose(1, 0, 2)).reshape(og, m * positions)
                if need_db:
                    db[g] = dy_t.sum(axis=1)
                xp.matmul(dy_t, cols.reshape(depth, m * positions).T, out=dw[g])
            if need_dx:
                dy_g = dy_flat[n0:n1, g]  # (m, O/g, P)
                if flat:
                    _input_gradient_flat(dx_chunk[:, g * cg:(g + 1) * cg], w_t[g],
                                         dy_g.reshape((m, og) + out), kernel)
                else:
                    dcols = xp.matmul(w_t[g], dy_g)  # (m, depth, P)
                    _fold(dx_chunk[:, g * cg:(g + 1) * cg], dcols.reshape((m, cg) + kernel + out), kernel,
                          stride, out)
        if need_dx and any(padding):
            dx[n0:n1] = dx_chunk[(slice(None), slice(None)) + inner]
        return dw, db

    chunks = _item_chunks(xp, n, depth * positions)
    kept = kept if kept is not None else [None] * len(chunks)  # the forward's columns serve either dY layout
    dw, db = sum_parts(map_chunks(xp, work, [chunk + (cols,) for chunk, cols in zip(chunks, kept)]))
    return dx, dw.reshape(W.shape), db.reshape(o) if need_db else None
