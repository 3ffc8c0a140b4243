"""Banded (block-Toeplitz) 2D convolution: im2col generalised for layers with few channels.

Plain im2col copies ``C*kh*kw`` values per output position and multiplies by a weight matrix with only
``P`` (output maps) columns. When ``C`` and ``P`` are small, as in the first Ji layer (1 input channel,
2 kernels x 3 temporal taps, 7x9 taps), that copy dominates and the GEMM is too thin to run at speed.

Here each output row is cut into tiles of ``b`` consecutive columns. One row of the unfolded matrix holds
the ``kh`` input rows under a tile, each ``b + kw - 1`` wide (a single strided copy of the input), and
the weight matrix is banded: column ``(p, v)`` holds kernel ``p`` shifted by ``v`` columns::

    A[(m, h, t), (c, i, u)] = x[m, c, h + i, t*b + u]            u < b + kw - 1
    B[(c, i, u), (p, v)]    = w[p, c, i, u - v]   (0 <= u - v < kw, else 0)
    y[m, p, h, t*b + v]     = (A @ B)[(m, h, t), (p, v)]

The copy shrinks by ``b*kw / (b + kw - 1)`` and the GEMM gets ``P*b`` columns, at the cost of
``(b + kw - 1) / kw`` times the multiply-adds. ``b = 1`` is exactly im2col. ``choose_tile`` picks ``b``.

All functions are stride 1 and unpadded ("valid"); callers pad beforehand. numpy and CuPy alike.
"""

from __future__ import annotations

from actionrec.backend import get_array_module

# Rows of the unfolded matrix processed at once: keeps A (and the GEMM output) near the caches.
_ROWS_PER_CHUNK = 4096


def choose_tile(out_maps: int, out_width: int, kw: int) -> int:
    """Tile width ``b``: wide enough that the GEMM has about 48 columns, never wider than the output."""
    if kw == 1:
        return 1
    b = max(1, 48 // max(out_maps, 1))
    return int(min(b, 8, out_width))


def _geometry(x_shape, w_shape, b):
    m, c, h, w_in = x_shape
    p, c_w, kh, kw = w_shape
    if c_w != c:
        raise ValueError(f"banded conv: input has {c} channels but the kernel expects {c_w}")
    ho, wo = h - kh + 1, w_in - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"banded conv: kernel {kh}x{kw} is larger than the input {h}x{w_in}")
    ntile = -(-wo // b)
    u = b + kw - 1
    return m, c, h, w_in, p, kh, kw, ho, wo, ntile, u


def _pad_width(x, width):
    """x (..., W) padded with zeros on the right to ``width`` columns (no copy when already wide)."""
    xp = get_array_module(x)
    if x.shape[-1] == width:
        return xp.ascontiguousarray(x)
    out = xp.zeros(x.shape[:-1] + (width,), dtype=x.dtype)
    out[..., : x.shape[-1]] = x
    return out


def _unfold(xc, kh, ho, ntile, b, u):
    """A for a chunk: xc (m, C, H, Wpad) -> (m*ho*ntile, C*kh*u), one strided copy."""
    xp = get_array_module(xc)
    m, c = xc.shape[:2]
    s_m, s_c, s_h, s_w = xc.strides
    view = xp.lib.stride_tricks.as_strided(
        xc, shape=(m, ho, ntile, c, kh, u), strides=(s_m, s_h, b * s_w, s_c, s_h, s_w)
    )
    return view.reshape(m * ho * ntile, c * kh * u)


def banded_weights(w, b):
    """B (C*kh*u, P*b) from kernels w (P, C, kh, kw): kernel p shifted by v in column (p, v)."""
    xp = get_array_module(w)
    p, c, kh, kw = w.shape
    u = b + kw - 1
    band = xp.zeros((c, kh, u, p, b), dtype=w.dtype)
    wt = w.transpose(1, 2, 3, 0)  # (C, kh, kw, P)
    for v in range(b):
        band[:, :, v : v + kw, :, v] = wt
    return band.reshape(c * kh * u, p * b)


def _chunks(m, rows_per_item):
    step = max(1, _ROWS_PER_CHUNK // max(rows_per_item, 1))
    for start in range(0, m, step):
        yield start, min(m, start + step)


def banded_conv2d(x, w, b: int | None = None):
    """Valid, stride-1 2D convolution (cross-correlation, as every CNN library).

    x (M, C, H, W), w (P, C, kh, kw) -> y (M, P, H - kh + 1, W - kw + 1)
    """
    xp = get_array_module(x)
    b = b or choose_tile(w.shape[0], x.shape[3] - w.shape[3] + 1, w.shape[3])
    m, c, h, w_in, p, kh, kw, ho, wo, ntile, u = _geometry(x.shape, w.shape, b)
    xpad = _pad_width(x, ntile * b + kw - 1)
    band = banded_weights(w, b)
    y = xp.empty((m, p, ho, ntile * b), dtype=x.dtype)
    for s, e in _chunks(m, ho * ntile):
        prod = _unfold(xpad[s:e], kh, ho, ntile, b, u) @ band  # (rows, P*b)
        y[s:e] = prod.reshape(e - s, ho, ntile, p, b).transpose(0, 3, 1, 2, 4).reshape(e - s, p, ho, ntile * b)
    return y[..., :wo] if ntile * b != wo else y


def banded_conv2d_backward(x, w, dy, b: int | None = None, need_dx: bool = True):
    """Gradients of ``y = banded_conv2d(x, w)``: returns (dw (P, C, kh, kw), dx (M, C, H, W) or None).

    dy (M, P, Ho, Wo) is the gradient of the output.
    """
    xp = get_array_module(x)
    b = b or choose_tile(w.shape[0], x.shape[3] - w.shape[3] + 1, w.shape[3])
    m, c, h, w_in, p, kh, kw, ho, wo, ntile, u = _geometry(x.shape, w.shape, b)
    xpad = _pad_width(x, ntile * b + kw - 1)
    band = banded_weights(w, b) if need_dx else None
    d_band = xp.zeros((c * kh * u, p * b), dtype=x.dtype)
    nq = -(-u // b)  # tiles of b columns that one unfolded row spans
    dx = xp.zeros((m, c, h, (ntile + nq) * b), dtype=x.dtype) if need_dx else None
    for s, e in _chunks(m, ho * ntile):
        dyc = _pad_width(dy[s:e], ntile * b)  # (m, P, Ho, ntile*b)
        dyr = dyc.reshape(e - s, p, ho, ntile, b).transpose(0, 2, 3, 1, 4).reshape(-1, p * b)
        d_band += _unfold(xpad[s:e], kh, ho, ntile, b, u).T @ dyr
        if need_dx:
            d_a = (dyr @ band.T).reshape(e - s, ho, ntile, c, kh, u)
            tiles = dx[s:e].reshape(e - s, c, h, ntile + nq, b)
            for q in range(nq):
                width = min(b, u - q * b)
                for i in range(kh):
                    # columns q*b.. of every tile land in tile t+q of the padded gradient
                    tiles[:, :, i : i + ho, q : q + ntile, :width] += d_a[:, :, :, :, i, q * b : q * b + width].transpose(0, 3, 1, 2, 4)
    d_band = d_band.reshape(c, kh, u, p, b)
    dw = xp.zeros((p, c, kh, kw), dtype=x.dtype)
    for v in range(b):
        dw += d_band[:, :, v : v + kw, :, v].transpose(3, 0, 1, 2)
    if need_dx:
        dx = xp.ascontiguousarray(dx[..., :w_in])
    return dw, dx
