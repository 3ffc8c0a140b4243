"""Winograd F(4x4, 3x3) and F(4x4, 5x5) (F(2x2, 5x5) for small outputs): the core behind Conv2D's 3x3
and 5x5 stride-1 many-channel layers (CIFAR's VGG stacks, MNIST's second convolution).

An m x m block of outputs of an r x r convolution needs the n x n input tile under it (n = m + r - 1).
Winograd's minimal filtering computes the block from elementwise products in a transformed n x n
domain:

    y_tile = A^T [ (G g G^T) * (B^T d B) ] A        (n^2 products instead of m^2 r^2)

so for C input and O output maps the n^2 products of every tile become n^2 independent GEMMs

    M[xi, nu] (T, O) = V[xi, nu] (T, C) @ U[xi, nu]^T (C, O),   U = G g G^T,  V = B^T d B,

over the T tiles of a chunk of items: 36 products per 16 outputs for 3x3 kernels (4 times fewer
multiply-adds than im2col), 64 per 16 for 5x5 (6.25 times fewer; F(2x2, 5x5), 36 per 4, where the
output is too small for 4 x 4 tiles to pay). The transforms are small products
too (n x n matrices applied along the tile rows, then the tile columns) over arrays about the size of
the input and the output, in a tile-major layout (rows, columns, items x maps) whose inner runs are
long and contiguous.

Backward is the exact adjoint of those linear maps, so gradients are those of the forward as computed
(float64 gradient checks hold to rounding):

- dM = A dy_tile A^T (the output gradient taken back into the n x n domain, once per chunk);
- dU[xi, nu] = V[xi, nu]^T @ dM[xi, nu] (n^2 GEMMs over the tiles), dW = G^T dU G;
- dV[xi, nu] = dM[xi, nu] @ U[xi, nu], and dx = B dV B^T added onto the overlapping input tiles.

In training the forward keeps V and U for backward (V costs n^2 / m^2 times the input's memory);
otherwise the cache holds the input, and a backward transforms it again.
Precision: the matrices (Toom-Cook on the points 0, +-1, +-2 and infinity; +-1/2 as well for
F(4x4, 5x5)) have entries up to 8, so in float32 the F(4x4) tiles land within about 1e-5 of the
exact result relative to the largest output (measured 4-8e-6 for 3x3 kernels on 32-128 maps, 3-6e-6
for 5x5 on MNIST's 32 -> 64; im2col 4-9e-7, F(2x2, 3x3) 3-9e-7, F(2x2, 5x5) 1-3e-6): the usual price
of Winograd convolution in single precision, far below what training notices; float64 is exact to
1e-13. Chunks
of items run on every core (``actionrec.nn.parallel``); numpy and CuPy alike.

Tiles: output maps whose size is not a multiple of m get one more row/column of tiles, computed on
zero padding and cropped.
"""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module
from actionrec.nn.layout import empty_in_layout, lies_channels_last
from actionrec.nn.parallel import item_chunks, map_chunks, one_blas_thread, sum_parts

# Transformed-domain elements (n^2 x channels x tiles) per chunk: about 2 MB of float32, so that the
# transform, the GEMMs and the inverse transform of a chunk run near the caches.
_CHUNK_ELEMENTS = 1 << 19

# B^T of the six points 0, 1, -1, 2, -2 and infinity, shared by F(2, 5) and F(4, 3).
_BT6 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)
_G6 = np.array([[1 / 4, 0, 0, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3],
                [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3],
                [0, 0, 0, 0, 1]])  # G of F(2, 5); F(4, 3) takes its first three columns, last row e_3

# (A^T (m, n), G (n, r), B^T (n, n)) of F(m, r), n = m + r - 1, keyed (m, r), by Toom-Cook on the
# points 0, 1, -1 (n = 4), 0, 1, -1, 2, -2 (n = 6) or 0, 1, -1, 2, -2, 1/2, -1/2 (n = 8) and
# infinity: A^T[i, j] = p_j^i, G[j, k] =
# p_j^k / f_j with f_j = prod over l != j of (p_j - p_l), and B^T solves A^T [(G g) * (B^T d)] = the
# correlation of d with g (checked in tests/test_winograd.py).
_MATRICES = {
    (2, 3): (np.array([[1, 1, 1, 0], [0, 1, -1, 1]], dtype=np.float64),
             np.array([[-1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
             np.array([[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], dtype=np.float64)),
    (2, 5): (np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], dtype=np.float64), _G6, _BT6),
    (4, 3): (np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                      dtype=np.float64),
             np.vstack([_G6[:5, :3], [[0, 0, 1]]]), _BT6),
    (4, 5): (np.array([[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0],
                       [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0], [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 1]]),
             np.array([[-1, 0, 0, 0, 0],
                       [-2 / 9, -2 / 9, -2 / 9, -2 / 9, -2 / 9],
                       [-2 / 9, 2 / 9, -2 / 9, 2 / 9, -2 / 9],
                       [1 / 90, 1 / 45, 2 / 45, 4 / 45, 8 / 45],
                       [1 / 90, -1 / 45, 2 / 45, -4 / 45, 8 / 45],
                       [32 / 45, 16 / 45, 8 / 45, 4 / 45, 2 / 45],
                       [32 / 45, -16 / 45, 8 / 45, -4 / 45, 2 / 45],
                       [0, 0, 0, 0, 1]]),
             np.array([[-1, 0, 21 / 4, 0, -21 / 4, 0, 1, 0],
                       [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
                       [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0],
                       [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
                       [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0],
                       [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
                       [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0],
                       [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]])),
}
# Output tiles per kernel size: F(4x4, 3x3) does 36 products per 16 outputs (4 times fewer than
# im2col); for 5x5, F(4x4, 5x5) 64 per 16 and F(2x2, 5x5) 36 per 4. A layer takes the tile with
# the fewest transformed elements for its output size (``output_tile``).
OUTPUT_TILES = {3: (4,), 5: (2, 4)}


def output_tile(r: int, out_size: tuple) -> int:
    """The output tile m for an r x r kernel and output (Ho, Wo): the fewest n^2 x tiles (whole tiles,
    n = m + r - 1), the smaller m on a tie. MNIST's 8 x 8 maps: 64 x 4 against 36 x 16 for m = 2."""
    ho, wo = out_size
    return min(OUTPUT_TILES[r], key=lambda m: ((m + r - 1) ** 2 * -(-ho // m) * -(-wo // m), m))


def winograd_applies(kernel: tuple, stride: tuple, groups: int, in_channels: int, out_channels: int) -> bool:
    """Whether a 2D convolution runs here: a 3x3 or 5x5 kernel, stride 1, no groups, and at least 16
    input and output maps (with fewer, the thin GEMMs do not pay for the transforms: CIFAR's first
    layer, 3 -> 32 maps, is faster as im2col)."""
    return (tuple(kernel) in ((3, 3), (5, 5)) and tuple(stride) == (1, 1) and groups == 1
            and min(in_channels, out_channels) >= 16)


def _chunks(xp, n: int, per_item: int):
    """Chunks of whole items of about ``_CHUNK_ELEMENTS`` transformed elements each (``item_chunks``)."""
    return item_chunks(xp, n, per_item, _CHUNK_ELEMENTS)


def _tiles(x_shape: tuple, m: int, r: int, padding: tuple) -> tuple:
    """(output size (Ho, Wo), tile counts (th, tw)) of an r x r stride-1 convolution of x (N, C, H, W)
    in output tiles of m x m."""
    ho, wo = x_shape[2] + 2 * padding[0] - r + 1, x_shape[3] + 2 * padding[1] - r + 1
    return (ho, wo), (-(-ho // m), -(-wo // m))


def transpose_into(out, x):
    """out (b, a) = x (a, b).T for 2D arrays, copied in blocks of rows of x about 32 KB large.

    numpy's plain strided copy of a transpose reads or writes a whole column per inner loop and runs 2
    to 4 times slower on maps the size of a chunk (measured on (128, 1024) float32: 0.39 against
    0.12 ms); blocks keep the lines in the first-level cache.
    """
    xp = get_array_module(x)
    if xp is not np:
        out[...] = x.T
        return
    rows, cols = x.shape
    block = max(8, 8192 // max(cols, 1))
    for i in range(0, rows, block):
        out[:, i:i + block] = x[i:i + block].T


def _grid_last(xp, chunk, padding: tuple, size: tuple):
    """chunk (m, C, H, W) as (Hs, Ws, m C) with the maps placed at offset ``padding`` on a zero grid of
    ``size`` (Hs, Ws): the tile-major layout the transforms work in (every map a long contiguous
    inner run). A channels-last chunk is copied in runs of C values (no transpose); a C-order one is
    transposed straight into the grid, in blocks of maps about 32 KB large. Only the border is zeroed."""
    if chunk.ndim == 6:  # tap-major (m, C, 2, 2, h/2, w/2) (``pooling_taps``), channels-last in memory
        m, c, _, _, half_h, half_w = chunk.shape
        h, w = 2 * half_h, 2 * half_w
    else:
        m, c, h, w = chunk.shape
    (ph, pw), (hs, ws) = padding, size
    k = m * c
    out = xp.empty((hs, ws, k), dtype=chunk.dtype)
    for rows, cols in (((0, ph), (0, ws)), ((ph + h, hs), (0, ws)), ((ph, ph + h), (0, pw)),
                       ((ph, ph + h), (pw + w, ws))):
        out[rows[0]:rows[1], cols[0]:cols[1]] = 0
    interior = out[ph:ph + h, pw:pw + w]
    if chunk.ndim == 6:
        interior.reshape(half_h, 2, half_w, 2, m, c)[...] = chunk.transpose(4, 2, 5, 3, 0, 1)
        return out
    if lies_channels_last(chunk):
        interior.reshape(h, w, m, c)[...] = chunk.transpose(2, 3, 0, 1)
        return out
    maps = chunk.reshape(k, h, w)
    if xp is not np:
        interior[...] = maps.transpose(1, 2, 0)
        return out
    block = max(8, 8192 // (h * w))
    for i in range(0, k, block):
        interior[:, :, i:i + block] = maps[i:i + block].transpose(1, 2, 0)
    return out


def _grid_first(xp, grid, out):
    """Inverse of ``_grid_last``: the (h, w) corner of grid (Hs, Ws, m C) into out (m, C, h, w), in
    runs of C values when ``out`` is channels-last, by a blocked transpose otherwise."""
    if out.ndim == 6:  # tap-major (m, C, 2, 2, h/2, w/2), channels-last in memory
        m, c, _, _, half_h, half_w = out.shape
        out.transpose(4, 2, 5, 3, 0, 1)[...] = grid[:2 * half_h, :2 * half_w].reshape(half_h, 2, half_w, 2, m, c)
        return
    m, c, h, w = out.shape
    corner = grid[:h, :w]
    if lies_channels_last(out):
        out.transpose(2, 3, 0, 1)[...] = corner.reshape(h, w, m, c)
        return
    if not corner.flags.c_contiguous:
        corner = xp.ascontiguousarray(corner)
    transpose_into(out.reshape(m * c, h * w), corner.reshape(h * w, m * c))


def _overlapping_rows(a, count: int, n: int, step: int):
    """View (count, n, *rest) of a (step count + n - step, *rest): entry [i, r] is row step i + r (the
    n rows of tile i; neighbouring tiles share n - step rows). Read-only: never write to it."""
    xp = get_array_module(a)
    return xp.lib.stride_tricks.as_strided(a, shape=(count, n) + a.shape[1:],
                                           strides=(step * a.strides[0],) + a.strides)


def _input_transform(d, bt, m: int, v):
    """V = B^T d B for every n x n tile (stride m) of d (m th + n - m, m tw + n - m, K), written into
    v (n, n, th, tw, K): two stages of small products (rows, then columns)."""
    xp = get_array_module(d)
    n, th, tw, k = v.shape[1:]
    rows = _overlapping_rows(d.reshape(d.shape[0], -1), th, n, m)  # (th, n r, (m tw + n - m) K)
    across = xp.matmul(bt, rows).reshape(th, n, d.shape[1], k)  # (th, n xi, m tw + n - m, K)
    cols = _overlapping_rows(across.transpose(2, 0, 1, 3), tw, n, m)  # (tw, n s, th, n xi, K)
    xp.matmul(bt, cols.transpose(2, 3, 0, 1, 4), out=v.transpose(2, 0, 3, 1, 4))  # (th, xi, tw, nu, K)


def _left_product(a, x):
    """a (p, q) @ x (q, s, R) -> (p, s, R), as s products (p, q) @ (q, R) over the middle axis.

    One (p, q) @ (q, s R) product is the same arithmetic, but with s R in the hundreds of thousands
    OpenBLAS ran it 1.7-2.2x slower than the s narrower ones (6 x 6 and 4 x 6 matrices, R = 10240,
    one thread, Intel Xeon; equal at R = 2560)."""
    xp = get_array_module(x)
    out = xp.empty((a.shape[0],) + x.shape[1:], dtype=x.dtype)
    xp.matmul(a, x.transpose(1, 0, 2), out=out.transpose(1, 0, 2))
    return out


def _output_transform(mm, at, y):
    """y = A^T M A for every tile: mm (n, n, th, tw, K) -> y (m th, m tw, K), A^T (m, n)."""
    xp = get_array_module(mm)
    n, _, th, tw, k = mm.shape
    m = at.shape[0]
    rows = _left_product(at, mm.reshape(n, n, -1))  # (m a, n nu, th tw K)
    both = xp.matmul(at, rows).reshape(m, m, th, tw, k)  # (a, b, th, tw, K)
    y.reshape(th, m, tw, m, k)[...] = both.transpose(2, 0, 3, 1, 4)


def _output_gradient_transform(g, at, dm):
    """dM = A g A^T for every m x m tile of g (m th, m tw, K), written into dm (n, n, th, tw, K): the
    adjoint of ``_output_transform``."""
    xp = get_array_module(g)
    n, _, th, tw, k = dm.shape
    m = at.shape[0]
    tiles = g.reshape(th, m, tw, m, k).transpose(1, 3, 0, 2, 4)  # (a, b, th, tw, K)
    a_mat = xp.ascontiguousarray(at.T)  # (n, m)
    rows = xp.matmul(a_mat, xp.ascontiguousarray(tiles).reshape(m, -1)).reshape(n, m, -1)  # (xi, b, ...)
    xp.matmul(a_mat, rows, out=dm.reshape(n, n, -1))


def stacked_products(a, b):
    """a (s, M, K) @ b (s, K, N) -> (s, M, N): the n^2 products of a chunk. On the CPU, products with
    at least 64 inner terms run in blocks of at most 64 x 64 outputs: OpenBLAS ran (64, 128) @ (128,
    128) at 65 GFLOP/s and its four 64 x 64 blocks at 106 (one thread, AMD EPYC family 25; CIFAR's
    128-map layers: 1.14-1.26x on each of the three products); with 32 inner terms one product was
    as fast or faster."""
    xp = get_array_module(a)
    s, rows, inner = a.shape
    cols = b.shape[2]
    if xp is not np or inner < 64 or rows * cols <= _PRODUCT_BLOCK**2:
        return xp.matmul(a, b)
    out = np.empty((s, rows, cols), dtype=np.result_type(a, b))
    for r0 in range(0, rows, _PRODUCT_BLOCK):
        for c0 in range(0, cols, _PRODUCT_BLOCK):
            np.matmul(a[:, r0:r0 + _PRODUCT_BLOCK], b[:, :, c0:c0 + _PRODUCT_BLOCK],
                      out=out[:, r0:r0 + _PRODUCT_BLOCK, c0:c0 + _PRODUCT_BLOCK])
    return out


_PRODUCT_BLOCK = 64


def _gradient_grid(th: int, tw: int, m: int, n: int) -> tuple:
    """(rows, columns) of the grid ``_input_gradient_transform`` adds into: the tiles' extent
    (m th + n - m, likewise) rounded up to a multiple of m."""
    blocks = -(-n // m)
    return m * (th + blocks - 1), m * (tw + blocks - 1)


def _input_gradient_transform(dv, bt, m: int, dd):
    """dd = B dV B^T for every tile, summed over the overlapping n x n tiles (stride m) of
    dd (``_gradient_grid``, K; its contents are overwritten): the adjoint of ``_input_transform``.
    dv (n, n, th, tw, K).

    Tile row r = m a + p lands on grid row m (i + a) + p: seen as (rows / m, m, cols / m, m, K), the
    grid takes the tile rows of one block a (and columns of one block b) for every tile in one add,
    ceil(n / m)^2 adds in all instead of n^2 (numpy's per-call cost dominated the n^2 small adds).
    """
    xp = get_array_module(dv)
    n, _, th, tw, k = dv.shape
    b_mat = xp.ascontiguousarray(bt.T)
    cols = xp.matmul(b_mat, dv.reshape(n, n, -1))  # (xi, s, th tw K)
    tiles = _left_product(b_mat, cols).reshape(n, n, th, tw, k)  # (r, s, th, tw, K)
    blocks = -(-n // m)
    grid = dd.reshape(th + blocks - 1, m, tw + blocks - 1, m, k)  # rows and columns in blocks of m
    # block (0, 0) of every tile covers the first th x tw blocks of the grid exactly once: it is
    # assigned, and only the grid past them is zeroed before the other blocks add onto it
    grid[:th, :, :tw] = tiles[:m, :m].transpose(2, 0, 3, 1, 4)
    grid[th:] = 0
    grid[:th, :, tw:] = 0
    for a in range(blocks):
        rows = min(m, n - m * a)
        for b in range(blocks):
            if a == b == 0:
                continue
            cols_b = min(m, n - m * b)
            part = tiles[m * a:m * a + rows, m * b:m * b + cols_b].transpose(2, 0, 3, 1, 4)  # (th, p, tw, q, K)
            grid[a:a + th, :rows, b:b + tw, :cols_b] += part


def kernel_transform(W, m: int, transposed: bool = False):
    """U = G g G^T for every (output, input) kernel g of F(m, r): W (O, C, r, r) -> U (n^2, O, C), or
    (n^2, C, O) when ``transposed`` (the layout the products read).

    Two stages of products with G (n, r), the kernels taps-first (r, r, C O): G @ (r, r C O) applies G
    along the kernels' rows, then n products (n, r) @ (r, C O) along their columns, writing U in its
    layout. On one thread for CIFAR's 128 x 128 kernels: 0.32 ms, where (G (x) G) (n^2, r^2) @ the
    kernels took 1.0-1.4 ms (OpenBLAS runs a product with 9 or 36 inner terms at a fifth of its speed)."""
    xp = get_array_module(W)
    o, c, r = W.shape[:3]
    if not transposed:
        return xp.ascontiguousarray(kernel_transform(W, m, transposed=True).transpose(0, 2, 1))
    g = xp.asarray(_MATRICES[(m, r)][1], dtype=W.dtype)  # (n, r)
    n = g.shape[0]
    kernels = _taps_first(W)  # (r a, r b, C O)
    u = xp.empty((n, n, c * o), dtype=W.dtype)
    with one_blas_thread(xp):  # OpenBLAS's own threads would spin on the cores the chunks run on next
        rows = xp.matmul(g, kernels.reshape(r, -1)).reshape(n, r, c * o)  # (xi, b, C O)
        xp.matmul(g, rows, out=u)  # (xi, nu, C O)
    return u.reshape(n * n, c, o)


def kernel_gradient(du_t, m: int, r: int):
    """dW = G^T dU G, the adjoint of ``kernel_transform``: du_t (n^2, C, O) -> dW (O, C, r, r), its two
    stages in reverse order."""
    xp = get_array_module(du_t)
    _, c, o = du_t.shape
    g_t = xp.asarray(_MATRICES[(m, r)][1].T, dtype=du_t.dtype)  # (r, n), C order
    n = g_t.shape[1]
    with one_blas_thread(xp):
        rows = xp.matmul(g_t, du_t.reshape(n, n, c * o))  # (xi, b, C O)
        taps = xp.matmul(g_t, rows.reshape(n, -1)).reshape(r, r, c, o)  # (a, b, C, O)
    return xp.ascontiguousarray(taps.transpose(3, 2, 0, 1))


def _taps_first(W):
    """W (O, C, r, r) as (r, r, C, O) in C order. Copied in blocks of output maps (a block's kernels
    stay in the first-level cache): 2x faster than one strided copy for 128 x 128 3x3 kernels."""
    xp = get_array_module(W)
    o, c, r = W.shape[:3]
    out = xp.empty((r * r, c, o), dtype=W.dtype)
    per_tap = W.reshape(o, c, r * r)
    block = o if xp is not np else _TAPS_BLOCK
    for s in range(0, o, block):
        out[:, :, s:s + block] = per_tap[s:s + block].transpose(2, 1, 0)
    return out.reshape(r, r, c, o)


# Output maps per block of ``_taps_first``'s copy (128 x 128 3x3 kernels: 69 us in blocks of 32, 132
# us in one copy; 76-105 us in blocks of 8 to 64).
_TAPS_BLOCK = 32


def winograd_conv_forward(x, W, b, padding: tuple, keep_transformed: bool = True, pooling_taps: bool = False):
    """r x r stride-1 convolution (r = 3 or 5) by Winograd F(m x m, r x r), m = ``output_tile(...)``.

    x (N, C, H, W), W (O, C, r, r), b (O,) or None, padding (ph, pw)
    -> y (N, O, H + 2 ph - r + 1, W + 2 pw - r + 1), laid out channels-last in memory (see
    ``actionrec.nn.layout``), and the cache for ``winograd_conv_backward``. x may be laid out either way.
    With ``pooling_taps`` (an even output size) y is instead (N, O, 2, 2, Ho/2, Wo/2) with
    y[n, o, r, s, i, j] the output at (2 i + r, 2 j + s): the four taps of 2x2 pooling windows as
    whole planes (``actionrec.nn.conv_pool``); backward then takes dout in that shape too.

    With ``keep_transformed`` (training) the cache keeps the transformed input V of every chunk (n^2 / m^2
    times the input's size: 2.25x for 3x3 kernels, 4x for 5x5) and the transformed kernels, which
    backward needs again, instead of x: its input transform is the costliest of the small products
    (tiny n x n GEMMs), and reading V back costs less than recomputing it. Without, the cache keeps x
    and backward transforms it again.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    o, r = W.shape[0], W.shape[2]
    padding = tuple(padding)
    m = output_tile(r, _tiles(x.shape, 1, r, padding)[0])
    at, _, bt = (xp.asarray(a, dtype=x.dtype) for a in _MATRICES[(m, r)])
    size = m + r - 1
    (ho, wo), (th, tw) = _tiles(x.shape, m, r, padding)
    u_t = kernel_transform(W, m, transposed=True)  # (n^2, C, O)
    # y is written channels-last: from the tile-major grid that is a copy in runs of O values, where
    # C order needs a transpose; the layers after it keep the layout (BatchNorm, ReLU, pooling), and
    # the next Winograd layer reads it the same cheap way.
    if pooling_taps and (ho % 2 or wo % 2):
        raise ValueError(f"pooling_taps needs an even output size, got {ho} x {wo}")
    y_shape = (n, o, 2, 2, ho // 2, wo // 2) if pooling_taps else (n, o, ho, wo)
    y = empty_in_layout(xp, y_shape, x.dtype, last=True)

    def work(n0, n1):
        items = n1 - n0
        tiles = th * tw * items
        v = xp.empty((size, size, th, tw, items * c), dtype=x.dtype)
        grid = _grid_last(xp, x[n0:n1], padding, (m * th + r - 1, m * tw + r - 1))
        _input_transform(grid, bt, m, v)
        mm = stacked_products(v.reshape(size * size, tiles, c), u_t)  # (n^2, tiles, O)
        y_grid = xp.empty((m * th, m * tw, items * o), dtype=x.dtype)
        _output_transform(mm.reshape(size, size, th, tw, items * o), at, y_grid)
        _grid_first(xp, y_grid, y[n0:n1])
        if b is not None:
            y[n0:n1] += b.reshape((o,) + (1,) * (y.ndim - 2))
        return v if keep_transformed else None

    transformed = map_chunks(xp, work, _chunks(xp, n, size * size * max(c, o) * th * tw))
    geometry = (x.shape, lies_channels_last(x), padding, m)
    if keep_transformed:
        return y, (None, transformed, u_t, W, geometry)
    return y, (x, None, u_t, W, geometry)


def winograd_conv_backward(dout, cache, need_dx: bool = True, need_db: bool = True):
    """Mirror of ``winograd_conv_forward``: dout (N, O, Ho, Wo), either layout, or tap-major
    (N, O, 2, 2, Ho/2, Wo/2) channels-last -> (dx (N, C, H, W) laid out as x was, or None; dW (O, C,
    r, r), db (O,), or None without ``need_db``: a layer without a bias skips a pass over dout)."""
    xp = get_array_module(dout)
    x, transformed, u_t, W, (x_shape, x_last, padding, m) = cache
    n, c, h, w = x_shape
    o, r = dout.shape[1], W.shape[2]
    at, _, bt = (xp.asarray(a, dtype=dout.dtype) for a in _MATRICES[(m, r)])
    size = m + r - 1
    _, (th, tw) = _tiles(x_shape, m, r, padding)
    grid = (m * th + r - 1, m * tw + r - 1)
    # (n^2, O, C): the forward's transformed kernels, transposed once (a small copy): the dV products
    # with a transposed operand ran 1.3-1.4x slower (Intel Xeon, 32 maps at 32 x 32)
    u = xp.ascontiguousarray(u_t.transpose(0, 2, 1))
    dx = empty_in_layout(xp, x_shape, dout.dtype, last=x_last) if need_dx else None  # x's layout
    chunks = _chunks(xp, n, size * size * max(c, o) * th * tw)

    def work(n0, n1, v):
        items = n1 - n0
        tiles = th * tw * items
        dm = xp.empty((size, size, th, tw, items * o), dtype=dout.dtype)
        dy = _grid_last(xp, dout[n0:n1], (0, 0), (m * th, m * tw))
        # here, while the chunk is in the cache; einsum's column sums, then over the items
        db = xp.einsum("ij->j", dy.reshape(-1, items * o)).reshape(items, o).sum(axis=0) if need_db else None
        _output_gradient_transform(dy, at, dm)
        dm = dm.reshape(size * size, tiles, o)
        if v is None:  # not kept by the forward: transform the chunk's input again
            v = xp.empty((size, size, th, tw, items * c), dtype=dout.dtype)
            _input_transform(_grid_last(xp, x[n0:n1], padding, grid), bt, m, v)
        v = v.reshape(size * size, tiles, c)
        du_t = stacked_products(v.transpose(0, 2, 1), dm)  # (n^2, C, O)
        if need_dx:
            dv = stacked_products(dm, u)  # (n^2, tiles, C); a new array: a kept V may serve another backward
            dd = xp.empty(_gradient_grid(th, tw, m, size) + (items * c,), dtype=dout.dtype)
            _input_gradient_transform(dv.reshape(size, size, th, tw, items * c), bt, m, dd)
            ph, pw = padding
            _grid_first(xp, dd[ph:ph + h, pw:pw + w], dx[n0:n1])
        return du_t, db

    kept = transformed if transformed is not None else [None] * len(chunks)
    parts = map_chunks(xp, work, [chunk + (v,) for chunk, v in zip(chunks, kept)])
    du_t = sum_parts([part[:1] for part in parts])[0]
    db = sum_parts([part[1:] for part in parts])[0] if need_db else None
    return dx, kernel_gradient(du_t, m, r), db
