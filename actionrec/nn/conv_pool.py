"""Convolutions whose 2x2 max pooling reads whole planes: two units that ``Sequential`` runs in
place of the layers, on the CPU.

Run separately, 2x2 max pooling reads a convolution's channels-last output in runs of C values (the
two columns of a window lie one map-vector apart), and numpy's per-run cost, not the data, sets its
time: after MNIST's first layer (32 maps) it took about as long as the convolution. Both units have
the convolution write its output positions tap-major instead, position (2 i + r, 2 j + s) at
[r, s, i, j], so the four taps (r, s) of every window are whole planes and the pooling is three
``maximum`` calls over planes (``max_of_planes``). The winners follow ``MaxPool2D`` exactly (the first
maximum in row-major order of the window wins ties: strictly greater to move right or down); backward
spreads dy over the planes (``spread_to_planes``).

- ``ConvMaxPool``: a first convolution (no input gradient) on the batched im2col core, stride 1, no
  groups, then ``MaxPool2D(2)`` (MNIST's and numpycnn's first layer). The im2col columns are ordered
  tap-major,

      cols[(c, *taps), n, (r, s, i, j)] = x_padded[n, c, 2 i + r + taps_h, 2 j + s + taps_w],

  so the GEMM writes the planes; a last row of ones in the columns carries the bias through the
  GEMM (added before the pooling, as in the layers, so outputs are the same numbers to rounding);
  dW and db come from one product of the columns and the spread planes; the pre-pooling
  output is never stored.
- ``ConvNormMaxPool``: a Winograd convolution, BatchNorm and ``MaxPool2D(2)`` (CIFAR's stage ends).
  ``winograd_conv_forward(..., pooling_taps=True)`` writes (N, O, 2, 2, H/2, W/2); BatchNorm's
  statistics come from that array unchanged (they do not depend on the order of positions, though
  the sums then round differently), the pooling runs on the raw values and only the pooled quarter
  is normalised (see the class); the Winograd backward reads the tap-major gradient.

Each unit checks per call that it applies (numpy arrays, an even output size, the core it replaces)
and otherwise runs its layers one after the other.
"""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module
from actionrec.nn.batched_conv import _item_chunks, _pad
from actionrec.nn.im2col import window_view
from actionrec.nn.layout import channels_last_view, empty_in_layout, lies_channels_last
from actionrec.nn.normalization import (
    _BLOCK_ELEMENTS,
    _channel_dot,
    _channel_map,
    _channel_sum,
    add_block_moments,
    normalise_into,
)
from actionrec.nn.parallel import item_blocks, map_chunks, over_batch, sum_parts
from actionrec.nn.winograd import winograd_applies, winograd_conv_backward, winograd_conv_forward


class ConvMaxPool:
    """``conv`` then ``pool`` as one unit of a Sequential's forward and backward (not a layer: the
    parameters and gradients stay in ``conv``). Falls back to the two layers where the fused pass
    does not apply."""

    def __init__(self, conv, pool):
        self.conv, self.pool = conv, pool
        self._cache = None  # conv_max_pool_forward's cache after a fused forward, else None

    def _fuses(self, x, out_shape) -> bool:
        conv = self.conv
        return (_pools_planes(x, self.pool, out_shape) and not conv.input_grad and conv.groups == 1
                and conv.stride == (1, 1) and conv._batched(out_shape)
                and not winograd_applies(conv.kernel_size, conv.stride, conv.groups, conv.in_channels,
                                         conv.out_channels))

    def forward(self, x, training: bool = False):
        """x (N, C, H, W) -> pool(conv(x)) (N, O, H'/2, W'/2), laid out channels-last when fused."""
        conv, pool = self.conv, self.pool
        out_shape = conv.output_shape(x.shape)  # validates, as the layers would
        pool.output_shape(out_shape)
        self._cache = None
        if not self._fuses(x, out_shape):
            return pool.forward(conv.forward(x, training=training), training=training)
        conv._cache = pool._cache = None  # the layers' own caches would be stale
        # kept in evaluation too, as the layers keep theirs: the winners are a quarter of the output;
        # in training also the im2col columns, which backward needs again
        y, self._cache = conv_max_pool_forward(x, conv.params["W"], conv.params.get("b"), conv.padding,
                                               keep_columns=training)
        return y

    def backward(self, dy):
        """dy (N, O, H'/2, W'/2) -> None (the fused convolution has no input gradient); fills conv's grads."""
        if self._cache is None:
            return self.conv.backward(self.pool.backward(dy))
        _set_grads(self.conv, *conv_max_pool_backward(dy, self._cache, self.conv.params["W"].shape))
        return None


class ConvNormMaxPool:
    """``conv`` (a Winograd layer), ``norm`` (BatchNorm) and ``pool`` (2x2 max pooling) as one unit:
    the convolution writes its output tap-major (``winograd_conv_forward(..., pooling_taps=True)``:
    the same values, positions reordered), BatchNorm's statistics come from it unchanged (they do not
    depend on the order of positions), and the pooling reads four whole planes (``max_of_planes``)
    instead of runs of C values. Falls back to the three layers where this does not apply.

    The pooling runs before the normalisation: y = x * slope + offset per channel is, for a positive
    slope, non-decreasing in x also as rounded (a multiply, then an add), so the window's largest x
    gives the largest y, and y is the normalised pooled maximum, the same number. The full-size
    normalised array is never written: the unit normalises a quarter of the values. In backward the
    BatchNorm sums need dy only where it lands (the winners), so they run over the pooled values too,
    and the spread and BatchNorm's input gradient are one pass. Where a slope is not positive (gamma
    <= 0) the winners come from the normalised values, as the layers find them. A window whose
    values differ but round to equal normalised ones sends its gradient to the largest x, where the
    layers send it to the first in row-major order: both are subgradients of the same output.
    """

    def __init__(self, conv, norm, pool):
        self.conv, self.norm, self.pool = conv, norm, pool
        self._cache = None  # after a fused forward: (conv cache, x, winners, pooled x, statistics)

    def _fuses(self, x, out_shape) -> bool:
        conv = self.conv
        return _pools_planes(x, self.pool, out_shape) and winograd_applies(
            conv.kernel_size, conv.stride, conv.groups, conv.in_channels, conv.out_channels)

    def forward(self, x, training: bool = False):
        """x (N, C, H, W) -> pool(norm(conv(x))) (N, O, H'/2, W'/2), channels-last when fused."""
        conv, norm, pool = self.conv, self.norm, self.pool
        out_shape = conv.output_shape(x.shape)
        pool.output_shape(out_shape)
        self._cache = None
        if not self._fuses(x, out_shape):
            return pool.forward(norm.forward(conv.forward(x, training=training), training=training),
                                training=training)
        conv._cache = norm._cache = pool._cache = None  # the layers' own caches would be stale
        taps, conv_cache = winograd_conv_forward(x, conv.params["W"], conv.params.get("b"), conv.padding,
                                                 keep_transformed=training, pooling_taps=True)
        norm._check(taps)  # (N, O, 2, 2, h, w): O must be its number of channels, as for the layers
        pooled = empty_in_layout(np, out_shape[:2] + (out_shape[2] // 2, out_shape[3] // 2), x.dtype, last=True)
        # the slopes' signs are gamma's (inv_std > 0): with every gamma positive the pooling need not
        # wait for the statistics, and in training one pass over the blocks takes both
        if training and bool((norm.params["W"] > 0).all()):
            statistics, winners = moments_and_pool(norm, taps, pooled)
        else:
            statistics, winners = norm.statistics(taps, training), None  # (mean, inv_std, count)
        slope, offset = norm.affine(statistics[0], statistics[1], x.dtype)
        if bool((slope > 0).all()):
            if winners is None:
                winners = pool_planes(taps, pooled)
        else:  # (a gamma <= 0, or a slope lost to underflow) the winners of the normalised values, and
            # the x they came from
            normalised = normalise_into(np.empty_like(taps), taps, slope, offset)
            winners = pool_planes(normalised, pooled)
            del normalised
            gather_planes(taps, winners, pooled)
        y = normalise_into(np.empty_like(pooled), pooled, slope, offset)
        self._cache = (conv_cache, taps, winners, pooled, statistics, training)
        return y

    def backward(self, dy):
        """dy (N, O, H'/2, W'/2) -> dx (N, C, H, W) (None without input gradient); fills the grads of
        conv and norm."""
        if self._cache is None:
            return self.conv.backward(self.norm.backward(self.pool.backward(dy)))
        conv_cache, taps, winners, pooled, (mean, inv_std, count), training = self._cache
        if not lies_channels_last(dy):
            dy = _channels_last_copy(dy)
        # BatchNorm's sums over its output gradient, which is dy on the winners and zero elsewhere
        mean_map = _channel_map(mean, pooled)

        def sums(s, e):
            centred = np.subtract(pooled[s:e], mean_map)
            return _channel_sum(dy[s:e]), _channel_dot(dy[s:e], centred)

        parts = over_batch(np, sums, dy.shape[0], dy.size)
        scale, slope, offset = self.norm.set_grads(sum(p[0] for p in parts), sum(p[1] for p in parts),
                                                   mean, inv_std, count, training)
        grad = empty_in_layout(np, taps.shape, dy.dtype, last=True)
        spread_input_gradient(grad, dy, winners, taps, scale, slope, offset, training)
        dx, dW, db = winograd_conv_backward(grad, conv_cache, self.conv.input_grad, need_db=self.conv.bias)
        _set_grads(self.conv, dW, db)
        return dx


def _pools_planes(x, pool, out_shape) -> bool:
    """What both units need of the pooling: numpy input of a 2D layer, 2x2 windows of stride 2, and
    an output of even size (so every position belongs to one window)."""
    return (get_array_module(x) is np and x.ndim == 4 and pool.kernel_size == (2, 2) and pool.stride == (2, 2)
            and out_shape[2] % 2 == 0 and out_shape[3] % 2 == 0)


def _planes(taps):
    """The four tap planes (0, 0), (0, 1), (1, 0), (1, 1) of a tap-major (N, O, 2, 2, h, w) array."""
    return [taps[:, :, r, s] for r in range(2) for s in range(2)]


def _set_grads(conv, dW, db):
    """The convolution's gradients, as its own backward would set them."""
    conv.grads["W"] = dW
    if conv.bias:
        conv.grads["b"] = db


def max_of_planes(planes, out, winners=None):
    """2x2 max pooling of four planes (the taps (0, 0), (0, 1), (1, 0), (1, 1) of every window, any
    equal shapes) into ``out``; returns the winners (right of the top pair, right of the bottom pair,
    bottom over top), boolean arrays of that shape (written into ``winners`` when given). Strictly
    greater moves the winner right or down, so ties keep the first maximum in row-major order, as
    ``MaxPool2D``."""
    p00, p01, p10, p11 = planes
    if winners is None:
        winners = tuple(np.empty(out.shape, dtype=bool) for _ in range(3))
    top, bottom = np.maximum(p00, p01), np.maximum(p10, p11)
    for (a, b), won in zip(((p00, p01), (p10, p11), (top, bottom)), winners):
        np.greater(b, a, out=won)
    np.maximum(top, bottom, out=out)
    return winners


def spread_to_planes(grad, winners, planes):
    """Adjoint of ``max_of_planes``: each of the four ``planes`` gets ``grad`` where its tap won,
    zero elsewhere (a multiply and a subtract per split, no masks built)."""
    right_top, right_bottom, down = winners
    top = np.multiply(grad, ~down)
    bottom = np.subtract(grad, top)
    for first, share, right in ((0, top, right_top), (2, bottom, right_bottom)):
        np.multiply(share, ~right, out=planes[first])
        np.subtract(share, planes[first], out=planes[first + 1])


def pool_planes(taps, out):
    """``max_of_planes`` of a tap-major (N, O, 2, 2, h, w) array into ``out`` (N, O, h, w), in
    cache-sized blocks of items on both cores; returns the winners, laid out as ``out``."""
    winners = tuple(np.empty_like(out, dtype=bool) for _ in range(3))

    def work(s, e):
        for a, z, _ in item_blocks(s, e, taps, _BLOCK_ELEMENTS, buffer=False):
            max_of_planes(_planes(taps[a:z]), out[a:z], tuple(w[a:z] for w in winners))

    over_batch(np, work, taps.shape[0], taps.size)
    return winners


def moments_and_pool(norm, taps, out):
    """BatchNorm's training statistics of a tap-major (N, O, 2, 2, h, w) array and ``max_of_planes``
    of it into ``out``, in one pass over cache-sized blocks of items on both cores (each block read
    from memory once, not once for each): (norm.statistics(taps, True)'s result, the winners). The
    blocks and sums are those of ``BatchNorm.statistics``, so the statistics are the same numbers."""
    first, shift = norm.moment_shift(taps)
    winners = tuple(np.empty_like(out, dtype=bool) for _ in range(3))

    def work(s, e):
        total = squares = 0
        for a, z, centred in item_blocks(s, e, taps, _BLOCK_ELEMENTS):  # BatchNorm.statistics' blocks
            total, squares = add_block_moments(total, squares, taps[a:z], shift, centred)
            max_of_planes(_planes(taps[a:z]), out[a:z], tuple(w[a:z] for w in winners))
        return total, squares

    parts = over_batch(np, work, taps.shape[0], taps.size)
    return norm.batch_statistics(first, parts, taps.shape, taps.dtype), winners


def gather_planes(taps, winners, out):
    """out (N, O, h, w) <- the value of tap-major ``taps`` at each window's winner."""
    p00, p01, p10, p11 = _planes(taps)
    right_top, right_bottom, down = winners
    np.copyto(out, np.where(down, np.where(right_bottom, p11, p10), np.where(right_top, p01, p00)))


def spread_input_gradient(grad, dy, winners, x, scale, slope, offset, training: bool):
    """BatchNorm's input gradient through the pooling, in one pass over cache-sized blocks of items:
    grad (N, O, 2, 2, h, w) <- spread(dy * scale) + (x * slope + offset in training), per-channel
    (O,) scale, slope and offset (``BatchNorm.set_grads``), x the tap-major pre-normalisation values,
    dy (N, O, h, w) and its winners laid out alike. The same numbers as BatchNorm's backward of the
    spread gradient (dy * scale on a winner, zero elsewhere, then the same sum)."""
    scale = _channel_map(scale, dy)
    slope, offset = _channel_map(slope, x), _channel_map(offset, x)

    def work(s, e):
        for a, z, scratch in item_blocks(s, e, x, _BLOCK_ELEMENTS):
            spread_to_planes(np.multiply(dy[a:z], scale), tuple(w[a:z] for w in winners), _planes(grad[a:z]))
            if training:
                np.multiply(x[a:z], slope, out=scratch)
                scratch += offset
                grad[a:z] += scratch

    over_batch(np, work, x.shape[0], x.size)


def _channels_last_copy(a):
    """a (N, C, *S) copied into channels-last memory."""
    out = empty_in_layout(np, a.shape, a.dtype, last=True)
    np.copyto(out, a)
    return out


def _unfold_tap_major(cols, x_chunk, kernel: tuple, half: tuple):
    """cols (C, kh, kw, m, 2, 2, H'/2, W'/2) <- the stride-1 windows of x_chunk (m, C, H, W), output
    position (2 i + r, 2 j + s) stored at [..., r, s, i, j]."""
    m, c = x_chunk.shape[:2]
    (kh, kw), (ph, pw) = kernel, half
    windows = window_view(x_chunk, kernel, (1, 1)).reshape(m, c, ph, 2, pw, 2, kh, kw)
    cols[...] = windows.transpose(1, 6, 7, 0, 3, 5, 2, 4)


def _tap_major_columns(x_chunk, kernel: tuple, half: tuple, ones_row: bool):
    """The GEMM's columns for a chunk: (C kh kw [+ 1], m 4 H'/2 W'/2), tap-major (``_unfold_tap_major``),
    with a last row of ones when the convolution has a bias. The bias then rides in the GEMM as one
    more row of weights (no pass over the output to add it: a fifth of the forward's time at
    MNIST's first layer), and in backward that row of the product is the bias gradient."""
    c, m = x_chunk.shape[1], x_chunk.shape[0]
    depth = c * kernel[0] * kernel[1]
    cols = np.empty((depth + ones_row, m * 4 * half[0] * half[1]), dtype=x_chunk.dtype)
    _unfold_tap_major(cols[:depth].reshape((c,) + kernel + (m, 2, 2) + half), x_chunk, kernel, half)
    if ones_row:
        cols[depth] = 1
    return cols


def conv_max_pool_forward(x, W, b, padding: tuple, keep_columns: bool = False):
    """Stride-1 convolution then 2x2 max pooling.

    x (N, C, H, W), W (O, C, kh, kw), b (O,) or None -> y (N, O, H'/2, W'/2) channels-last in memory,
    H' = H + 2 ph - kh + 1 (even; likewise W'), and the cache for ``conv_max_pool_backward``. With
    ``keep_columns`` (training) the cache keeps the tap-major im2col columns (C kh kw (+ 1) times
    the convolution's output positions: 1.9 MB for MNIST at batch 32), so that backward does not
    unfold x again (a quarter to a fifth of its time at MNIST's first layer).
    """
    n, o = x.shape[0], W.shape[0]
    kernel = tuple(W.shape[2:])
    xpad = _pad(x, padding)
    out = (xpad.shape[2] - kernel[0] + 1, xpad.shape[3] - kernel[1] + 1)
    half = (out[0] // 2, out[1] // 2)
    depth, pooled = int(np.prod(W.shape[1:])), half[0] * half[1]
    # (depth [+ 1], O) in C order, the bias as the last row: the per-item products below read it
    # 1.2x faster than a transposed view of W
    weights = W.reshape(o, depth).T
    weights = (np.concatenate([weights, b.reshape(1, o).astype(W.dtype, copy=False)]) if b is not None
               else np.ascontiguousarray(weights))
    y = empty_in_layout(np, (n, o) + half, x.dtype, last=True)
    y_rows = channels_last_view(y).reshape(n, pooled, o)
    chunks = _item_chunks(np, n, depth * 4 * pooled)

    def work(n0, n1):
        m = n1 - n0
        cols = _tap_major_columns(xpad[n0:n1], kernel, half, b is not None)
        taps = np.empty((m, 4, pooled, o), dtype=x.dtype)  # per item: planes (0, 0), (0, 1), (1, 0), (1, 1)
        # one product per item, on one BLAS thread (``map_chunks``): MNIST, 16 items, 82 us, where
        # one (m 4 H'/2 W'/2) x (depth + 1) product takes 116 us
        rows = cols.shape[0]
        np.matmul(cols.reshape(rows, m, -1).transpose(1, 2, 0), weights, out=taps.reshape(m, -1, o))
        return max_of_planes([taps[:, t] for t in range(4)], y_rows[n0:n1]), cols if keep_columns else None

    winners, columns = zip(*map_chunks(np, work, chunks))
    return y, (xpad, chunks, winners, columns, b is not None)


def conv_max_pool_backward(dy, cache, w_shape: tuple):
    """Mirror of ``conv_max_pool_forward``: dy (N, O, H'/2, W'/2), either layout -> (dW, db (O,) or
    None without a bias)."""
    xpad, chunks, winners, columns, bias = cache
    n, o = dy.shape[:2]
    kernel, half = tuple(w_shape[2:]), tuple(dy.shape[2:])
    depth, pooled = int(np.prod(w_shape[1:])), half[0] * half[1]
    rows = np.ascontiguousarray(channels_last_view(dy)).reshape(n, pooled, o)  # no copy if channels-last

    def work(n0, n1, chunk_winners, cols):
        m = n1 - n0
        taps = np.empty((m, 4, pooled, o), dtype=dy.dtype)  # dy on the winning tap, zero elsewhere
        spread_to_planes(rows[n0:n1], chunk_winners, [taps[:, t] for t in range(4)])
        if cols is None:  # not kept by the forward (evaluation): unfold the chunk again
            cols = _tap_major_columns(xpad[n0:n1], kernel, half, bias)
        return (cols @ taps.reshape(-1, o),)  # (depth [+ 1], O): dW's rows, then db's

    kept = zip(winners, columns)
    (dw,) = sum_parts(map_chunks(np, work, [chunk + chunk_kept for chunk, chunk_kept in zip(chunks, kept)]))
    return np.ascontiguousarray(dw[:depth].T).reshape(w_shape), (dw[depth].copy() if bias else None)
