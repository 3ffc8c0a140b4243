"""Winograd F(2x2, 3x3) convolution: the core behind Conv2D's 3x3, stride-1 many-channel layers.

A 2x2 block of outputs of a 3x3 convolution needs the 4x4 input tile under it. Winograd's minimal
filtering computes the block from elementwise products in a transformed 4x4 domain:

    y_tile = A^T [ (G g G^T) * (B^T d B) ] A        (4x4 products instead of 2x2x9 = 36)

so for C input and O output maps the 16 products of every tile become 16 independent GEMMs

    M[xi, nu] (O, T) = U[xi, nu] (O, C) @ V[xi, nu] (C, T),   U = G g G^T,  V = B^T d B,

over the T tiles of a chunk of items: 16 O C T multiply-adds where im2col does 36 O C T, i.e. 2.25
times fewer. What is left are the transforms, a few adds and subtracts over arrays of about the
input's and the output's size (the column matrix of im2col is 9 times the input).

Backward is the exact adjoint of those linear maps, so gradients are those of the forward as computed
(float64 gradient checks hold to rounding):

- dM = A dy_tile A^T (the output gradient taken back into the 4x4 domain, once per chunk);
- dU[xi, nu] = dM[xi, nu] @ V[xi, nu]^T (16 GEMMs over the tiles), dW = G^T dU G;
- dV[xi, nu] = U[xi, nu]^T @ dM[xi, nu], and dx = B dV B^T added onto the overlapping input tiles.

V is rebuilt in backward from the input (cheap next to the GEMMs) rather than kept: the cache holds
the input and U only. The matrices have entries 0, +-1 and 1/2, so the float32 results differ from a
direct convolution by a few ulps, like any reordering of the sums. Chunks of items run on every core
(``actionrec.nn.parallel``); numpy and CuPy alike.

Tiles: output maps of odd size get one more row/column of tiles, computed on zero padding and cropped.
"""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module
from actionrec.nn.parallel import item_chunks, map_chunks, one_blas_thread

# Transformed-domain elements (16 x channels x tiles) per chunk: about 2 MB of float32, so that the
# transform, the GEMMs and the inverse transform of a chunk run near the caches.
_CHUNK_ELEMENTS = 1 << 19

# G maps a 3-tap kernel onto the 4 interpolation points (0, 1, -1, infinity).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_applies(kernel: tuple, stride: tuple, groups: int, in_channels: int, out_channels: int) -> bool:
    """Whether a 2D convolution runs here: 3x3 kernel, stride 1, no groups, and at least 16 input and
    output maps (with fewer, the 16 GEMMs are too thin to pay for the transforms: CIFAR's first layer,
    3 -> 32 maps, is faster as im2col)."""
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and groups == 1
            and min(in_channels, out_channels) >= 16)


def _chunks(xp, n: int, per_item: int):
    """Chunks of whole items of about ``_CHUNK_ELEMENTS`` transformed elements each (``item_chunks``)."""
    return item_chunks(xp, n, per_item, _CHUNK_ELEMENTS)


def _tiles(x_shape: tuple, padding: tuple) -> tuple:
    """(output size (Ho, Wo), tile counts (th, tw)) of a 3x3 stride-1 convolution of x (N, C, H, W)."""
    ho, wo = x_shape[2] + 2 * padding[0] - 2, x_shape[3] + 2 * padding[1] - 2
    return (ho, wo), (-(-ho // 2), -(-wo // 2))


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
    inner run)."""
    m, c, h, w = chunk.shape
    (ph, pw), (hs, ws) = padding, size
    inner = xp.empty((h * w, m * c), dtype=chunk.dtype)
    transpose_into(inner, chunk.reshape(m * c, h * w))
    if (ph, pw, hs, ws) == (0, 0, h, w):
        return inner.reshape(h, w, m * c)
    out = xp.zeros((hs, ws, m * c), dtype=chunk.dtype)
    out[ph:ph + h, pw:pw + w] = inner.reshape(h, w, m * c)
    return out


def _grid_first(xp, grid, out):
    """Inverse of ``_grid_last``: the (h, w) corner of grid (Hs, Ws, m C) into out (m, C, h, w)."""
    m, c, h, w = out.shape
    corner = grid[:h, :w]
    if not corner.flags.c_contiguous:
        corner = xp.ascontiguousarray(corner)
    transpose_into(out.reshape(m * c, h * w), corner.reshape(h * w, m * c))


def _input_transform(d, v):
    """V = B^T d B for every 4x4 tile (stride 2) of d (2 th + 2, 2 tw + 2, K), written into
    v (4, 4, th, tw, K). B^T rows: (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)."""
    xp = get_array_module(d)
    th, tw = v.shape[2:4]
    rows = [d[r:r + 2 * th:2] for r in range(4)]  # (th, 2 tw + 2, K)
    across = xp.empty((4,) + rows[0].shape, dtype=d.dtype)
    xp.subtract(rows[0], rows[2], out=across[0])
    xp.add(rows[1], rows[2], out=across[1])
    xp.subtract(rows[2], rows[1], out=across[2])
    xp.subtract(rows[1], rows[3], out=across[3])
    cols = [across[:, :, s:s + 2 * tw:2] for s in range(4)]  # (4 xi, th, tw, K)
    xp.subtract(cols[0], cols[2], out=v[:, 0])
    xp.add(cols[1], cols[2], out=v[:, 1])
    xp.subtract(cols[2], cols[1], out=v[:, 2])
    xp.subtract(cols[1], cols[3], out=v[:, 3])


def _output_transform(mm, y):
    """y = A^T M A for every tile: mm (4, 4, th, tw, K) -> y (2 th, 2 tw, K).
    A^T rows: (1, 1, 1, 0), (0, 1, -1, -1)."""
    xp = get_array_module(mm)
    rows = xp.empty((2,) + mm.shape[1:], dtype=mm.dtype)  # (2 a, 4 nu, th, tw, K)
    xp.add(mm[0], mm[1], out=rows[0])
    rows[0] += mm[2]
    xp.subtract(mm[1], mm[2], out=rows[1])
    rows[1] -= mm[3]
    for a in range(2):
        r = rows[a]
        first, second = y[a::2, 0::2], y[a::2, 1::2]  # (th, tw, K)
        xp.add(r[0], r[1], out=first)
        first += r[2]
        xp.subtract(r[1], r[2], out=second)
        second -= r[3]


def _output_gradient_transform(g, dm):
    """dM = A g A^T for every 2x2 tile of g (2 th, 2 tw, K), written into dm (4, 4, th, tw, K): the
    adjoint of ``_output_transform``."""
    xp = get_array_module(g)
    g0, g1 = g[0::2], g[1::2]  # (th, 2 tw, K)
    rows = xp.empty((4,) + g0.shape, dtype=g.dtype)
    rows[0] = g0
    xp.add(g0, g1, out=rows[1])
    xp.subtract(g0, g1, out=rows[2])
    xp.negative(g1, out=rows[3])
    h0, h1 = rows[:, :, 0::2], rows[:, :, 1::2]  # (4 xi, th, tw, K)
    dm[:, 0] = h0
    xp.add(h0, h1, out=dm[:, 1])
    xp.subtract(h0, h1, out=dm[:, 2])
    xp.negative(h1, out=dm[:, 3])


def _signed_taps(q):
    """[(array, sign)] for the four tap rows sum_xi B^T[xi, r] q[xi] (r = 0..3) of q (4 xi, ...):
    q0, q1 - q2 + q3, q1 + q2 - q0, and -q3 (returned as q3 with sign -1, so no negation pass)."""
    first = q[1] - q[2]
    first += q[3]
    second = q[1] + q[2]
    second -= q[0]
    return [(q[0], 1), (first, 1), (second, 1), (q[3], -1)]


def _input_gradient_transform(dv, dd):
    """dd += B dV B^T for every tile, added onto the overlapping 4x4 tiles (stride 2) of
    dd (2 th + 2, 2 tw + 2, K): the adjoint of ``_input_transform``. dv (4, 4, th, tw, K)."""
    th, tw = dv.shape[2:4]
    for r, (q, row_sign) in enumerate(_signed_taps(dv)):  # q (4 nu, th, tw, K)
        for s, (part, col_sign) in enumerate(_signed_taps(q)):
            target = dd[r:r + 2 * th:2, s:s + 2 * tw:2]
            if row_sign * col_sign > 0:
                target += part
            else:
                target -= part


def _kron_g(xp, dtype):
    """G (x) G (16, 9): row (xi, nu), column (a, b) of the kernel, so that vec(G g G^T) = K vec(g)."""
    return xp.asarray(np.kron(_G, _G), dtype=dtype)


def kernel_transform(W):
    """U = G g G^T for every (output, input) kernel g: W (O, C, 3, 3) -> U (16, O, C), as one product
    with G (x) G (a batch of tiny 4x3 products measured 12 times slower for 128 x 128 kernels)."""
    xp = get_array_module(W)
    o, c = W.shape[:2]
    with one_blas_thread(xp):  # OpenBLAS's own threads would spin on the cores the chunks run on next
        return xp.matmul(_kron_g(xp, W.dtype), W.reshape(o * c, 9).T).reshape(16, o, c)


def kernel_gradient(du_t):
    """dW = G^T dU G, the adjoint of ``kernel_transform``: du_t (16, C, O) -> dW (O, C, 3, 3)."""
    xp = get_array_module(du_t)
    _, c, o = du_t.shape
    du = du_t.transpose(0, 2, 1).reshape(16, o * c)  # rows (xi, nu), columns (o, c)
    with one_blas_thread(xp):
        return xp.ascontiguousarray(xp.matmul(du.T, _kron_g(xp, du_t.dtype)).reshape(o, c, 3, 3))


def winograd_conv_forward(x, W, b, padding: tuple):
    """3x3 stride-1 convolution by Winograd F(2x2, 3x3).

    x (N, C, H, W), W (O, C, 3, 3), b (O,) or None, padding (ph, pw)
    -> y (N, O, H + 2 ph - 2, W + 2 pw - 2), and the cache for ``winograd_conv_backward``.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    o = W.shape[0]
    padding = tuple(padding)
    (ho, wo), (th, tw) = _tiles(x.shape, padding)
    u_t = xp.ascontiguousarray(kernel_transform(W).transpose(0, 2, 1))  # (16, C, O)
    y = xp.empty((n, o, ho, wo), dtype=x.dtype)

    def work(n0, n1):
        m = n1 - n0
        tiles = th * tw * m
        v = xp.empty((4, 4, th, tw, m * c), dtype=x.dtype)
        _input_transform(_grid_last(xp, x[n0:n1], padding, (2 * th + 2, 2 * tw + 2)), v)
        mm = xp.matmul(v.reshape(16, tiles, c), u_t)  # (16, tiles, O)
        y_grid = xp.empty((2 * th, 2 * tw, m * o), dtype=x.dtype)
        _output_transform(mm.reshape(4, 4, th, tw, m * o), y_grid)
        _grid_first(xp, y_grid, y[n0:n1])
        if b is not None:
            y[n0:n1] += b.reshape(o, 1, 1)

    map_chunks(xp, work, _chunks(xp, n, 16 * max(c, o) * th * tw))
    return y, (x, u_t, padding)


def winograd_conv_backward(dout, cache, need_dx: bool = True):
    """Mirror of ``winograd_conv_forward``: dout (N, O, Ho, Wo) -> (dx (N, C, H, W) or None,
    dW (O, C, 3, 3), db (O,))."""
    xp = get_array_module(dout)
    x, u_t, padding = cache
    n, c, h, w = x.shape
    o = dout.shape[1]
    _, (th, tw) = _tiles(x.shape, padding)
    grid = (2 * th + 2, 2 * tw + 2)
    u = xp.ascontiguousarray(u_t.transpose(0, 2, 1)) if need_dx else None  # (16, O, C)
    dx = xp.empty(x.shape, dtype=dout.dtype) if need_dx else None

    def work(n0, n1):
        m = n1 - n0
        tiles = th * tw * m
        dm = xp.empty((4, 4, th, tw, m * o), dtype=dout.dtype)
        _output_gradient_transform(_grid_last(xp, dout[n0:n1], (0, 0), (2 * th, 2 * tw)), dm)
        dm = dm.reshape(16, tiles, o)
        v = xp.empty((4, 4, th, tw, m * c), dtype=dout.dtype)
        _input_transform(_grid_last(xp, x[n0:n1], padding, grid), v)
        v = v.reshape(16, tiles, c)
        du_t = xp.matmul(v.transpose(0, 2, 1), dm)  # (16, C, O)
        if need_dx:
            dv = xp.matmul(dm, u, out=v)  # (16, tiles, C); v is spent: reuse its memory
            dd = xp.zeros(grid + (m * c,), dtype=dout.dtype)
            _input_gradient_transform(dv.reshape(4, 4, th, tw, m * c), dd)
            ph, pw = padding
            _grid_first(xp, dd[ph:ph + h, pw:pw + w], dx[n0:n1])
        return du_t

    parts = map_chunks(xp, work, _chunks(xp, n, 16 * max(c, o) * th * tw))
    du_t = parts[0]
    for part in parts[1:]:
        du_t += part
    db = dout.reshape(n, o, -1).sum(axis=2).sum(axis=0)
    return dx, kernel_gradient(du_t), db
