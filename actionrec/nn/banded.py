"""Banded (block-Toeplitz) frame-wise convolution: the core behind Conv3D, Conv2D's thin layers and
SegmentConv3D wherever the FFT core (``actionrec.nn.fftconv``) does not run (CuPy, small kernels).

Plain im2col copies ``C*k`` values per output position and multiplies them by a weight matrix with only
``P`` (output maps) columns. When ``C`` and ``P`` are small, as in the first Ji layer (1 input channel,
2 kernels x 3 temporal taps, 7x9 taps), that copy dominates and the GEMM is too thin to run at speed.

Here each output row is cut into tiles of ``b`` consecutive columns. One row of the unfolded matrix holds
the input under a tile, ``b + kw - 1`` wide along the last axis (a single strided copy of the input), and
the weight matrix is banded: column ``(p, v)`` holds kernel ``p`` shifted by ``v`` columns::

    A[(m, h, t), (c, i, u)] = x[m, c, h + i, t*b + u]            u < b + kw - 1
    B[(c, i, u), (p, v)]    = w[p, c, i, u - v]   (0 <= u - v < kw, else 0)
    y[m, p, h, t*b + v]     = (A @ B)[(m, h, t), (p, v)]

The copy shrinks by ``b*kw / (b + kw - 1)`` and the GEMM gets ``P*b`` columns, at the cost of
``(b + kw - 1) / kw`` times the multiply-adds. ``b = 1`` is exactly im2col (and the only choice when the
last axis is strided). ``choose_tile`` picks ``b``.

Time is handled frame-wise: every input frame is convolved in 2D (or any number of spatial axes) with the
kernels of all (output map, temporal tap) pairs, ``P = O/groups * kt``, and an output frame is the sum
of ``kt`` shifted frames of that product. The time axis may be a concatenation of independent segments,
each with its own kernels (Ji et al.'s hardwired channels), so no output frame straddles two segments.

The unfolded matrix is built per chunk of a few items, small enough to stay near the caches, and is
never kept: backward rebuilds it (one strided copy) instead of holding gigabytes between the passes.
Chunks run on every core (``actionrec.nn.parallel``).
numpy and CuPy alike.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import partial

from actionrec.backend import get_array_module
from actionrec.nn.parallel import map_chunks

# Size of the unfolded matrix built at once (whole items, at least one): at most this many rows and
# elements (about 2 MB of float32), so it and the GEMM product stay near the caches.
_ROWS_PER_CHUNK = 4096
_CHUNK_ELEMENTS = 1 << 19
# Elements of A copied at once inside a chunk (whole frames, at least one): about 1 MB, measured best
# on the Ji layers (256 KB blocks: TRECVID C2 13% slower; whole chunks: ~30% slower).
_BLOCK_ELEMENTS = 1 << 18


def choose_tile(out_maps: int, out_width: int, kw: int) -> int:
    """Tile width ``b``: wide enough that the GEMM has about 48 columns, never wider than the output,
    then as narrow as the same number of tiles allows (34 columns: 5 tiles of 7, not of 8), since the
    columns past the output are wasted work."""
    if kw == 1:
        return 1
    b = int(min(max(1, 48 // max(out_maps, 1)), 8, out_width))
    tiles = -(-out_width // b)
    return -(-out_width // tiles)


@dataclass(frozen=True)
class _Geometry:
    """Sizes shared by forward and backward. Spatial axes S = (*lead, last); the last one is banded."""

    kt: int
    ks: tuple  # spatial kernel
    st: int  # temporal stride
    ss: tuple  # spatial strides
    out: tuple  # spatial output sizes
    b: int  # tile width on the last axis
    groups: int
    cg: int  # input channels per group
    og: int  # output maps per group

    @property
    def ntile(self):
        return -(-self.out[-1] // self.b)

    @property
    def u(self):
        return self.b + self.ks[-1] - 1

    @property
    def nq(self):
        """Tiles of b columns that one unfolded row spans along the last axis."""
        return -(-self.u // self.b)

    @property
    def columns_major(self):
        """Store A per frame transposed, (K, rows): with b = 1 its copy then runs along whole output
        rows instead of kw-long pieces (3 floats for a 3x3 kernel), and the GEMMs need no transpose."""
        return self.b == 1

    @property
    def rows_per_frame(self):
        return math.prod(self.out[:-1]) * self.ntile

    @property
    def depth(self):  # K, the GEMM's inner dimension
        return self.cg * math.prod(self.ks[:-1]) * self.u

    def frames_out(self, frames: int) -> int:
        return (frames - self.kt) // self.st + 1

    def frame_slice(self, dt: int, frames_out: int) -> slice:
        """Input frames t' * st + dt for t' < frames_out."""
        return slice(dt, dt + self.st * (frames_out - 1) + 1, self.st)

    def tap_slices(self, taps: tuple) -> tuple:
        """Slices of the leading spatial axes that kernel tap ``taps`` reads for every output position."""
        return tuple(slice(t, t + s * (o - 1) + 1, s) for t, s, o in zip(taps, self.ss, self.out))


def _geometry(x_shape, w_shape, stride, groups, b=None) -> _Geometry:
    o, cg, kt = w_shape[:3]
    if x_shape[1] != cg * groups:
        raise ValueError(f"banded conv: input has {x_shape[1]} channels but the kernel expects {cg * groups}")
    ks = tuple(w_shape[3:])
    ss = tuple(stride[1:])
    out = tuple((s - k) // st + 1 for s, k, st in zip(x_shape[3:], ks, ss))
    if min(out) < 1 or x_shape[2] < kt:
        raise ValueError(f"banded conv: kernel {tuple(w_shape[2:])} is larger than the input {tuple(x_shape[2:])}")
    og = o // groups
    if b is None:
        b = choose_tile(og * kt, out[-1], ks[-1]) if ss[-1] == 1 else 1
    if b > 1 and ss[-1] != 1:
        raise ValueError("banded conv: tiles wider than 1 need stride 1 on the last axis")
    return _Geometry(kt, ks, stride[0], ss, out, int(b), groups, cg, og)


def _needed_width(g: _Geometry) -> int:
    """Columns the unfolding reads along the last axis (more than the input when the last tile overhangs)."""
    return (g.ntile - 1) * g.b * g.ss[-1] + g.u


def pad_input(x, padding: tuple, width: int):
    """x (N, C, T, *S) zero-padded by ``padding`` (t, *s) on both sides and on the right of the last axis
    to at least ``width`` columns; x itself when nothing is needed."""
    xp = get_array_module(x)
    shape = x.shape[:2] + tuple(s + 2 * p for s, p in zip(x.shape[2:], padding))
    shape = shape[:-1] + (max(shape[-1], width),)
    if shape == x.shape:
        return x
    out = xp.zeros(shape, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(padding, x.shape[2:]))] = x
    return out


def _unfold_view(xc, g: _Geometry):
    """Zero-copy view of A for a chunk: xc (m, C/g, Tc, *S) -> (m, Tc, *out[:-1], ntile, C/g, *ks[:-1], u),
    i.e. per frame (rows_per_frame, K) once the two groups of axes are flattened. Never write to it."""
    xp = get_array_module(xc)
    m, c, t = xc.shape[:3]
    sm, sc, stt = xc.strides[:3]
    sp = xc.strides[3:]
    shape = (m, t) + g.out[:-1] + (g.ntile, c) + g.ks[:-1] + (g.u,)
    strides = ((sm, stt) + tuple(s * k for s, k in zip(sp[:-1], g.ss[:-1])) + (sp[-1] * g.b * g.ss[-1], sc)
               + sp[:-1] + (sp[-1],))
    return xp.lib.stride_tricks.as_strided(xc, shape=shape, strides=strides)


def _unfolded_frames(xc, g: _Geometry):
    """Yield (item, first frame, A) for blocks of consecutive frames of the chunk xc (m, C/g, Tc, *S):
    A (frames, rows_per_frame, K), or (frames, K, rows_per_frame) when ``g.columns_major``.

    A is copied a few frames at a time into a block small enough for the L2 cache, where the GEMM that
    reads it next finds it (measured faster than one chunk-sized copy). The block is reused.
    """
    xp = get_array_module(xc)
    view = _unfold_view(xc, g)
    d = len(g.ks)
    if g.columns_major:  # (m, Tc, C/g, *ks[:-1], u, *out[:-1], ntile)
        view = view.transpose((0, 1) + tuple(range(2 + d, 2 + 2 * d + 1)) + tuple(range(2, 2 + d)))
    m, t = view.shape[:2]
    per_block = max(1, min(t, _BLOCK_ELEMENTS // (g.rows_per_frame * g.depth)))
    block = xp.empty((per_block,) + view.shape[2:], dtype=xc.dtype)
    flat = block.reshape((per_block,) + ((g.depth, g.rows_per_frame) if g.columns_major
                                         else (g.rows_per_frame, g.depth)))
    for item in range(m):
        for f0 in range(0, t, per_block):
            nf = min(per_block, t - f0)
            block[:nf] = view[item, f0:f0 + nf]  # ~8x faster than the copy reshape() would make
            yield item, f0, flat[:nf]


def banded_weights(w, b: int):
    """B (C*prod(ks[:-1])*u, O*kt*b) from kernels w (O, C, kt, *ks): column (o, dt, v) holds kernel
    (o, dt) shifted by v along the last axis."""
    xp = get_array_module(w)
    o, c, kt = w.shape[:3]
    ks = w.shape[3:]
    u = b + ks[-1] - 1
    d = len(ks)
    band = xp.zeros((c,) + tuple(ks[:-1]) + (u, o, kt, b), dtype=w.dtype)
    wt = w.transpose((1,) + tuple(range(3, 3 + d)) + (0, 2))  # (C, *ks, O, kt)
    for v in range(b):
        band[(Ellipsis, slice(v, v + ks[-1]), slice(None), slice(None), v)] = wt
    return band.reshape(-1, o * kt * b)


def _weights_from_band(d_band, w_shape, b: int):
    """Adjoint of ``banded_weights``: sums the b shifted copies back into (O, C, kt, *ks)."""
    xp = get_array_module(d_band)
    o, c, kt = w_shape[:3]
    ks = tuple(w_shape[3:])
    d = len(ks)
    u = b + ks[-1] - 1
    blocks = d_band.reshape((c,) + ks[:-1] + (u, o, kt, b))
    dw = xp.zeros((c,) + ks + (o, kt), dtype=d_band.dtype)
    for v in range(b):
        dw += blocks[(Ellipsis, slice(v, v + ks[-1]), slice(None), slice(None), v)]
    return xp.ascontiguousarray(dw.transpose((d + 1, 0, d + 2) + tuple(range(1, d + 1))))


def _chunks(n: int, frames: int, g: _Geometry):
    rows = frames * g.rows_per_frame
    step = max(1, min(_ROWS_PER_CHUNK // rows, _CHUNK_ELEMENTS // (rows * g.depth)))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _product_order(g: _Geometry):
    """Axes that take a block (m, og, T, *out[:-1], ntile, b) of the output to the per-frame GEMM
    layout (m, T, og, b, *out[:-1], ntile); the inverse is ``_output_order``."""
    d = len(g.ks)
    return (0, 2, 1, 3 + d) + tuple(range(3, 3 + d))


def _output_order(g: _Geometry):
    d = len(g.ks)
    return (0, 2, 1) + tuple(range(4, 4 + d)) + (3,)


def _one_gemm_per_block(g: _Geometry) -> bool:
    """Frames of up to ~1000 rows go one block per GEMM (per-frame calls cost more in overhead than
    the edge frames' unneeded taps: TRECVID C2 77 vs 89 ms); larger frames get one GEMM each, which
    lets edge frames skip the taps they do not feed."""
    return not g.columns_major and g.rows_per_frame < 1024


def _needed_taps(g: _Geometry, frame: int, frames_out: int):
    """Temporal taps [lo, hi) whose product of input frame ``frame`` feeds some output frame: the first
    and last kt - 1 frames of a segment feed fewer outputs (a quarter of Ji's C2 work). All taps when
    strided in time."""
    if g.st != 1:
        return 0, g.kt
    return max(0, frame - frames_out + 1), min(g.kt, frame + 1)


def _tap_runs(g: _Geometry, f0: int, f1: int, frames_out: int):
    """Split input frames [f0, f1) into runs of consecutive frames that feed the same temporal taps:
    yields (r0, r1, lo, hi). Interior frames form one run (one GEMM), edge frames their own."""
    r0 = f0
    while r0 < f1:
        taps = _needed_taps(g, r0, frames_out)
        r1 = r0 + 1
        while r1 < f1 and _needed_taps(g, r1, frames_out) == taps:
            r1 += 1
        yield (r0, r1) + taps
        r0 = r1


def _tap_rows(mat, g: _Geometry, lo: int, hi: int):
    """Rows (o, dt, v) of a (og * kt * b, X) matrix with lo <= dt < hi, as (og * (hi - lo) * b, X)."""
    return mat.reshape(g.og, g.kt, -1)[:, lo:hi].reshape(g.og * (hi - lo) * g.b, mat.shape[-1])


def _tap_sum(prod, g: _Geometry, frames_out: int, tap_axis: int):
    """Sum over temporal taps dt of prod[:, t' * st + dt, ..., dt (on tap_axis), ...]: the frame-wise
    products shifted into output frames."""
    def tap(dt):
        index = [slice(None)] * prod.ndim
        index[1] = g.frame_slice(dt, frames_out)
        index[tap_axis] = dt
        return prod[tuple(index)]
    total = tap(0) if g.kt == 1 else tap(0) + tap(1)
    for dt in range(2, g.kt):
        total += tap(dt)
    return total


def _forward_rows(g, x, buf, band, group, t0, t1, o0, o1, n0, n1):
    """Forward of items n0:n1 with A in rows (rows_per_frame, K): P = A @ B per block of frames, B
    contiguous (K, P). (OpenBLAS runs this form 1.2-1.6x faster than B^T A^T for these thin shapes, and
    the product lands in place.)"""
    xp = get_array_module(x)
    m, p = n1 - n0, band.shape[1]
    prod = xp.empty((m, t1 - t0, g.rows_per_frame, p), dtype=x.dtype)
    part_bands = {}
    for item, f0, block in _unfolded_frames(x[n0:n1, group * g.cg:(group + 1) * g.cg, t0:t1], g):
        runs = _tap_runs(g, f0, f0 + len(block), o1 - o0) if not _one_gemm_per_block(g) else \
            [(f0, f0 + len(block), 0, g.kt)]
        for r0, r1, lo, hi in runs:
            a = block[r0 - f0:r1 - f0].reshape(-1, g.depth)
            if hi - lo == g.kt:
                xp.matmul(a, band, out=prod[item, r0:r1].reshape(-1, p))
                continue
            if (lo, hi) not in part_bands:  # the columns of the taps these frames feed
                part_bands[lo, hi] = xp.ascontiguousarray(_tap_rows(band.T, g, lo, hi).T)
            part = (a @ part_bands[lo, hi]).reshape(r1 - r0, -1, g.og, hi - lo, g.b)
            prod[item, r0:r1].reshape(r1 - r0, -1, g.og, g.kt, g.b)[:, :, :, lo:hi] = part
    prod = prod.reshape((m, t1 - t0) + g.out[:-1] + (g.ntile, g.og, g.kt, g.b))
    total = _tap_sum(prod, g, o1 - o0, prod.ndim - 2)  # (m, T', *out[:-1], ntile, og, b)
    d = len(g.ks)
    order = (0, 2 + d, 1) + tuple(range(2, 2 + d)) + (3 + d,)
    buf[n0:n1, group * g.og:(group + 1) * g.og, o0:o1] = total.transpose(order)


def _forward_columns(g, x, buf, band_t, group, t0, t1, o0, o1, n0, n1):
    """Forward of items n0:n1 with A in columns (K, rows_per_frame) (plain im2col): P^T = B^T A^T per
    frame, skipping the taps an edge frame does not feed."""
    xp = get_array_module(x)
    m = n1 - n0
    prod = xp.empty((m, t1 - t0, g.og * g.kt * g.b, g.rows_per_frame), dtype=x.dtype)
    part_bands = {}
    for item, f0, block in _unfolded_frames(x[n0:n1, group * g.cg:(group + 1) * g.cg, t0:t1], g):
        for j, a in enumerate(block):
            frame = f0 + j
            lo, hi = _needed_taps(g, frame, o1 - o0)
            if hi - lo == g.kt:
                xp.matmul(band_t, a, out=prod[item, frame])
                continue
            if (lo, hi) not in part_bands:  # the rows of the taps this frame needs
                part_bands[lo, hi] = xp.ascontiguousarray(_tap_rows(band_t, g, lo, hi))
            part = part_bands[lo, hi] @ a
            prod[item, frame].reshape(g.og, g.kt, -1)[:, lo:hi] = part.reshape(g.og, hi - lo, -1)
    prod = prod.reshape((m, t1 - t0, g.og, g.kt, g.b) + g.out[:-1] + (g.ntile,))
    total = _tap_sum(prod, g, o1 - o0, 3)
    buf[n0:n1, group * g.og:(group + 1) * g.og, o0:o1] = total.transpose(_output_order(g))


def banded_conv_forward(x, kernels, biases, starts, stride, padding, groups, b=None):
    """Frame-wise grouped convolution of each time segment with its own kernels.

    x (N, C, T, *S); kernels: one W (O, C/g, kt, *ks) per segment; biases: matching (O,) arrays or
    Nones; starts: frame boundaries [0, t1, ..., T + 2 pt] of the padded input; stride and zero
    padding (t, *s) -> out (N, O, sum of T'_s, *S'), T'_s = (T_s - kt) // st + 1, and the cache.
    """
    xp = get_array_module(x)
    padded = x.shape[:2] + tuple(s + 2 * p for s, p in zip(x.shape[2:], padding))
    g = _geometry(padded[:2] + (starts[1] - starts[0],) + padded[3:], kernels[0].shape, stride, groups, b)
    n, o = x.shape[0], kernels[0].shape[0]
    x_shape = x.shape
    x = pad_input(x, padding, _needed_width(g))
    frames_out = [g.frames_out(e - s) for s, e in zip(starts[:-1], starts[1:])]
    out_starts = [0] + list(itertools.accumulate(frames_out))
    buf = xp.empty((n, o, out_starts[-1]) + g.out[:-1] + (g.ntile, g.b), dtype=x.dtype)
    for seg, W in enumerate(kernels):
        t0, t1, o0, o1 = starts[seg], starts[seg + 1], out_starts[seg], out_starts[seg + 1]
        for group in range(groups):
            band = banded_weights(W[group * g.og:(group + 1) * g.og], g.b)
            if g.columns_major:
                band_t = xp.ascontiguousarray(band.T)
                work = partial(_forward_columns, g, x, buf, band_t, group, t0, t1, o0, o1)
            else:
                work = partial(_forward_rows, g, x, buf, band, group, t0, t1, o0, o1)
            map_chunks(xp, work, _chunks(n, t1 - t0, g))
        if biases[seg] is not None:
            buf[:, :, o0:o1] += biases[seg].reshape((1, o) + (1,) * (buf.ndim - 2))
    out = buf.reshape(buf.shape[:-2] + (g.ntile * g.b,))
    if g.ntile * g.b != g.out[-1]:
        out = xp.ascontiguousarray(out[..., :g.out[-1]])
    cache = (x, x_shape, padding, kernels, starts, out_starts, g)
    return out, cache


def _fold(d_a, dx_tiles, n0, n1, group, t0, t1, g: _Geometry):
    """Add the unfolded gradient d_a (m, Tc, rows_per_frame, K) (or (m, Tc, K, rows_per_frame) when
    ``g.columns_major``) back onto the padded input gradient.

    dx_tiles is the gradient buffer (N, C, T, *S) with its last axis split into (tiles, b) when b > 1.
    One strided add per (leading-axes tap, tile offset q) pair: the adjoint of ``_unfold_view``.
    """
    d = len(g.ks)
    m, tc = n1 - n0, t1 - t0
    # -> (m, C/g, Tc, *out[:-1], ntile, *ks[:-1], u), the layout of the gradient buffer
    if g.columns_major:
        blocks = d_a.reshape((m, tc, g.cg) + g.ks[:-1] + (g.u,) + g.out[:-1] + (g.ntile,))
        blocks = blocks.transpose((0, 2, 1) + tuple(range(3 + d, 3 + 2 * d)) + tuple(range(3, 3 + d)))
    else:
        blocks = d_a.reshape((m, tc) + g.out[:-1] + (g.ntile, g.cg) + g.ks[:-1] + (g.u,))
        blocks = blocks.transpose((0, d + 2, 1) + tuple(range(2, d + 2)) + tuple(range(d + 3, 2 * d + 3)))
    dst = dx_tiles[n0:n1, group * g.cg:(group + 1) * g.cg, t0:t1]
    for taps in itertools.product(*(range(k) for k in g.ks[:-1])):
        lead = g.tap_slices(taps)
        src = blocks[(Ellipsis,) + taps + (slice(None),)]  # (m, C/g, Tc, *out[:-1], ntile, u)
        if g.b == 1:  # plain im2col: column j of tile t lands on t * s + j
            for j in range(g.ks[-1]):
                last = slice(j, j + g.ss[-1] * (g.ntile - 1) + 1, g.ss[-1])
                dst[(slice(None),) * 3 + lead + (last,)] += src[..., j]
        else:  # columns q*b.. of every tile land in tile t + q
            for q in range(g.nq):
                width = min(g.b, g.u - q * g.b)
                dst[(slice(None),) * 3 + lead + (slice(q, q + g.ntile), slice(0, width))] += \
                    src[..., q * g.b:q * g.b + width]


def flipped_kernels(W, groups: int):
    """Kernels of the adjoint convolution: W (O, C/g, kt, *ks) -> (C, O/g, kt, *ks), every axis of the
    kernel reversed and, within each group, input and output channels swapped."""
    xp = get_array_module(W)
    o, cg = W.shape[:2]
    blocks = W.reshape((groups, o // groups, cg) + W.shape[2:]).swapaxes(1, 2)
    flipped = blocks[(Ellipsis,) + (slice(None, None, -1),) * (W.ndim - 2)]
    return xp.ascontiguousarray(flipped.reshape((groups * cg, o // groups) + W.shape[2:]))


def _input_gradient_by_adjoint(dout, cache):
    """dx of the padded input for stride 1: the "full" correlation of dout with the flipped kernels,
    run through ``banded_conv_forward`` (no fold). Each segment of dout is zero-padded by k - 1 on both
    sides of every axis, so its output has exactly the segment's input frames and size.

    Used for plain im2col geometry (b = 1, many channels) on maps large next to the kernel: there the
    fold reads and writes a kh*kw times larger gradient of A, while this costs one forward pass
    (CIFAR-like 3x3 layers: ~1.5-2x faster). On small maps the padding makes it 2-3x the
    multiply-adds, and the fold wins."""
    xp = get_array_module(dout)
    x, _, _, kernels, starts, out_starts, g = cache
    pads = (g.kt - 1,) + tuple(k - 1 for k in g.ks)
    lengths = [o1 - o0 + 2 * pads[0] for o0, o1 in zip(out_starts[:-1], out_starts[1:])]
    padded_starts = [0] + list(itertools.accumulate(lengths))
    spatial = tuple(s + 2 * p for s, p in zip(dout.shape[3:], pads[1:]))
    dpad = xp.zeros(dout.shape[:2] + (padded_starts[-1],) + spatial, dtype=dout.dtype)
    inner = tuple(slice(p, p + s) for p, s in zip(pads[1:], dout.shape[3:]))
    for seg in range(len(kernels)):
        frames = slice(padded_starts[seg] + pads[0], padded_starts[seg + 1] - pads[0])
        dpad[(slice(None), slice(None), frames) + inner] = dout[:, :, out_starts[seg]:out_starts[seg + 1]]
    flipped = [flipped_kernels(W, g.groups) for W in kernels]
    dx, _ = banded_conv_forward(dpad, flipped, [None] * len(kernels), padded_starts, (1,) * len(pads),
                                (0,) * len(pads), g.groups)
    return dx


def banded_conv_backward(dout, cache, need_dx: bool = True):
    """Mirror of ``banded_conv_forward``: dout (N, O, sum T'_s, *S')
    -> (dx (N, C, T, *S) or None, [dW per segment], [db (O,) per segment]).

    Per chunk: dP[(m, t), (o, dt, v)] holds dout[m, o, t'] for t = t' * st + dt (zeros for frames no
    output uses), dB += A^T @ dP with A rebuilt, and dA = dP @ B^T folded back when dx is needed.
    """
    xp = get_array_module(dout)
    x, x_shape, padding, kernels, starts, out_starts, g = cache
    n, o = dout.shape[:2]
    d = len(g.ks)
    tiled = g.ntile * g.b
    dy = xp.ascontiguousarray(dout) if tiled == g.out[-1] else pad_input(dout, (0,) * (d + 1), tiled)
    dy = dy.reshape(dy.shape[:-1] + (g.ntile, g.b))
    dx = dx_tiles = None
    # The adjoint computes every padded input position; the fold every output position (with a kh*kw
    # larger gradient of A to write and read back). Adjoint when that inflation is small.
    inflation = math.prod(x.shape[2:]) / math.prod(dout.shape[2:])
    by_adjoint = need_dx and g.columns_major and g.st == 1 and set(g.ss) == {1} and inflation < 1.5
    fold = need_dx and not by_adjoint
    if by_adjoint:
        dx = _input_gradient_by_adjoint(dout, cache)
    elif need_dx:
        width = max(x.shape[-1], (g.ntile + g.nq) * g.b) if g.b > 1 else x.shape[-1]
        dx = xp.zeros(x.shape[:-1] + (width,), dtype=dout.dtype)
        dx_tiles = dx.reshape(dx.shape[:-1] + (width // g.b, g.b)) if g.b > 1 else dx
    dws, dbs = [], []
    for seg, W in enumerate(kernels):
        t0, t1, o0, o1 = starts[seg], starts[seg + 1], out_starts[seg], out_starts[seg + 1]
        dbs.append(dout[:, :, o0:o1].sum(axis=(0,) + tuple(range(2, dout.ndim))))
        dw = xp.empty(W.shape, dtype=dout.dtype)
        for group in range(g.groups):
            w = W[group * g.og:(group + 1) * g.og]
            band_t = xp.ascontiguousarray(banded_weights(w, g.b).T) if fold else None

            def work(n0, n1, band_t=band_t, group=group, t0=t0, t1=t1, o0=o0, o1=o1):
                # dP^T per frame in the GEMM layout (m, T, o, dt, v, rows): one transposition of dout,
                # then one copy per temporal tap
                m = n1 - n0
                dy_t = xp.ascontiguousarray(
                    dy[n0:n1, group * g.og:(group + 1) * g.og, o0:o1].transpose(_product_order(g)))
                dp = xp.zeros((m, t1 - t0, g.og, g.kt, g.b, g.rows_per_frame), dtype=dout.dtype)
                for dt in range(g.kt):
                    dp[:, g.frame_slice(dt, o1 - o0), :, dt] = dy_t.reshape(dy_t.shape[:4] + (-1,))
                dp = dp.reshape(m, t1 - t0, g.og * g.kt * g.b, g.rows_per_frame)
                d_band = xp.zeros((g.og * g.kt * g.b, g.depth), dtype=dout.dtype)
                cm = g.columns_major
                d_a = xp.empty((m, t1 - t0) + ((g.depth, g.rows_per_frame) if cm else (g.rows_per_frame, g.depth)),
                               dtype=dout.dtype) if fold else None
                for item, f0, block in _unfolded_frames(x[n0:n1, group * g.cg:(group + 1) * g.cg, t0:t1], g):
                    nf = len(block)
                    if nf > 1 and _one_gemm_per_block(g):
                        dp_block = dp[item, f0:f0 + nf].swapaxes(0, 1).reshape(dp.shape[2], -1)
                        a = block.reshape(-1, g.depth)
                        d_band += dp_block @ a
                        if fold:
                            xp.matmul(dp_block.T, band_t, out=d_a[item, f0:f0 + nf].reshape(-1, g.depth))
                        continue
                    for j, a in enumerate(block):
                        frame = f0 + j
                        rhs = a.T if cm else a
                        lo, hi = _needed_taps(g, frame, o1 - o0)
                        if hi - lo == g.kt:
                            d_band += dp[item, frame] @ rhs
                        else:  # the other taps' rows of dP are zero
                            part = _tap_rows(dp[item, frame], g, lo, hi) @ rhs
                            d_band.reshape(g.og, g.kt, -1)[:, lo:hi] += part.reshape(g.og, hi - lo, -1)
                        if fold and cm:
                            xp.matmul(band_t.T, dp[item, frame], out=d_a[item, frame])
                        elif fold:
                            xp.matmul(dp[item, frame].T, band_t, out=d_a[item, frame])
                if fold:
                    _fold(d_a, dx_tiles, n0, n1, group, t0, t1, g)
                return d_band

            d_band_t = sum(map_chunks(xp, work, _chunks(n, t1 - t0, g)))
            dw[group * g.og:(group + 1) * g.og] = _weights_from_band(d_band_t.T, w.shape, g.b)
        dws.append(dw)
    if dx is not None:
        crop = tuple(slice(p, p + s) for p, s in zip(padding, x_shape[2:]))
        if dx.shape != x_shape:
            dx = xp.ascontiguousarray(dx[(slice(None), slice(None)) + crop])
    return dx, dws, dbs


# --- the plain 2D form, kept as the simplest entry point ------------------------------------------
def banded_conv2d(x, w, b: int | None = None):
    """Valid, stride-1 2D convolution (cross-correlation, as every CNN library).

    x (M, C, H, W), w (P, C, kh, kw) -> y (M, P, H - kh + 1, W - kw + 1)
    """
    y, _ = banded_conv_forward(x[:, :, None], [w[:, :, None]], [None], [0, 1], (1, 1, 1), (0, 0, 0), 1, b)
    return y[:, :, 0]


def banded_conv2d_backward(x, w, dy, b: int | None = None, need_dx: bool = True):
    """Gradients of ``y = banded_conv2d(x, w)``: returns (dw (P, C, kh, kw), dx (M, C, H, W) or None).

    dy (M, P, Ho, Wo) is the gradient of the output.
    """
    _, cache = banded_conv_forward(x[:, :, None], [w[:, :, None]], [None], [0, 1], (1, 1, 1), (0, 0, 0), 1, b)
    dx, dws, _ = banded_conv_backward(dy[:, :, None], cache, need_dx)
    return dws[0][:, :, 0], None if dx is None else dx[:, :, 0]
