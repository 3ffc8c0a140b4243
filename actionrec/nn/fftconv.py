"""FFT core for frame-wise segment convolutions (the Ji layers) on the CPU.

Ji et al.'s first convolution sees one input map per hardwired channel and has large kernels (7x7 and
9x7 spatial taps, 3 temporal). As a GEMM it is thin and the unfolded input is 13-14x the frames, so
both the banded and the im2col cores spend most of their time moving memory. In the frequency domain
every input frame is transformed once, every output frame transformed back once, and each (output map,
temporal tap) pair costs one product of spectra, whatever the kernel's size.

By the correlation theorem, with frames zero-padded to F = (Hf, Wf) >= (H, W) and spectra over the
last two axes (K, X, DY the spectra of kernel, input and output gradient)::

    y[h, w]  = sum_ij x[h + i, w + j] k[i, j]  = irfft2(X . conj(K))[h, w]    h <= H - kh, w <= W - kw
    dk[i, j] = sum_hw dy[h, w] x[h + i, w + j] = irfft2(X . conj(DY))[i, j]   i < kh, j < kw
    dx[p, q] = sum_hw dy[h, w] k[p - h, q - w] = irfft2(DY . K)[p, q]        p < H, q < W

exactly: the circular products wrap around only at the positions that are cut away. Time is handled as
in ``actionrec.nn.banded``: output frame t' of a segment sums its kt taps dt over input frames t' + dt,
here as sums of spectra, and each segment has its own kernels.

float32 inputs stay float32 (scipy.fft computes in single precision, about 2.4x faster than numpy.fft
here); float64 gives the float64 results the gradient checks need. numpy only: CuPy keeps the banded
core (cuBLAS runs it at speed).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from actionrec.nn.parallel import item_chunks, map_chunks

# Spectra handled per work unit (items of one segment): about 16 MB. Few large transforms and
# products beat cache-sized ones here (pocketfft's and numpy's per-call costs outweigh the cache
# misses): units of 0.5, 1, 4, 16 MB measured 0.8x, 0.95x, 1.1x, 1.2x the speed of 2 MB ones.
_CHUNK_BYTES = 1 << 24


def _fft():
    import scipy.fft  # noqa: PLC0415 (loaded when the first FFT layer runs)

    return scipy.fft


def spectrum_shape(spatial: tuple) -> tuple:
    """FFT sizes (Hf, Wf) for frames of ``spatial`` size: the next sizes with small prime factors only."""
    return tuple(_fft().next_fast_len(int(s), real=True) for s in spatial)


def _rfft(a, shape):
    """Spectrum of the last len(shape) axes of a, zero-padded to ``shape``."""
    return _fft().rfftn(a, s=shape, axes=tuple(range(-len(shape), 0)))


def _irfft(a, shape, keep):
    """Real inverse of the last len(shape) axes, cropped to the leading ``keep`` positions of each."""
    full = _fft().irfftn(a, s=shape, axes=tuple(range(-len(shape), 0)))
    return full[(Ellipsis,) + tuple(slice(0, k) for k in keep)]


def fft_pays(w_shape) -> bool:
    """Whether kernels W (O, C/g, kt, *ks) go to this core: spatial kernels of 16 taps and more, at most
    4 input maps per group. Every Ji layer (one input map per group, 4x5 to 9x7 taps) measured 1.8-2.1x
    faster here than in the banded core at batch 32; the products of spectra grow with the input maps
    per group while the GEMM cores get better, and more than one has not been measured."""
    return math.prod(w_shape[3:]) >= 16 and w_shape[1] <= 4


def _check(x_shape, kernels, starts, groups):
    o, cg, kt = kernels[0].shape[:3]
    ks = tuple(kernels[0].shape[3:])
    if x_shape[1] != cg * groups or o % groups:
        raise ValueError(f"fft conv: input has {x_shape[1]} channels, {groups} groups, kernel {kernels[0].shape}")
    if starts[0] != 0 or starts[-1] != x_shape[2] or len(kernels) != len(starts) - 1:
        raise ValueError(f"fft conv: segment starts {starts} ({len(kernels)} kernels) do not cover "
                         f"the {x_shape[2]} frames")
    if any(k > s for k, s in zip(ks, x_shape[3:])) or min(e - s for s, e in zip(starts[:-1], starts[1:])) < kt:
        raise ValueError(f"fft conv: kernel {kernels[0].shape[2:]} is larger than the input {x_shape[2:]}")


def _units(n: int, starts, maps_in: int, maps_out: int, spectrum_elements: int):
    """Work units (n0, n1, segment): items of one segment, about _CHUNK_BYTES of spectra each (the
    segment's input and output maps, counted over its input frames), split by
    ``parallel.item_chunks`` into as many per segment as a multiple of the workers when the batch
    allows, so that no core idles through the last unit."""
    units = []
    for seg, (t0, t1) in enumerate(zip(starts[:-1], starts[1:])):
        per_item = 8 * spectrum_elements * (maps_in + maps_out) * (t1 - t0)  # complex64 bytes
        units += [(n0, n1, seg) for n0, n1 in item_chunks(np, n, per_item, _CHUNK_BYTES)]
    return units


def fft_conv_forward(x, kernels, biases, starts, groups, keep_spectra: bool = True, activation=None):
    """Stride-1, unpadded frame-wise grouped convolution of each time segment with its own kernels.

    x (N, C, T, *S); kernels: one W (O, C/g, kt, *ks) per segment; biases: matching (O,) arrays or
    Nones; starts: frame boundaries [0, t1, ..., T] -> out (N, O, sum of T_s - kt + 1, *(S - ks + 1)),
    and the cache for the backward pass: the input's spectra with ``keep_spectra`` (training), else a
    reference to x only (evaluation holds no extra memory; a backward after it transforms x again).
    ``activation`` (a ufunc such as ``np.tanh``, or None): out is activation(convolution), applied as
    each chunk's inverse transform is cropped into out (the crop is a copy anyway); backward still
    takes the gradient with respect to the convolution's output.
    """
    _check(x.shape, kernels, starts, groups)
    n, c = x.shape[:2]
    o, cg, kt = kernels[0].shape[:3]
    ks = tuple(kernels[0].shape[3:])
    shape = spectrum_shape(x.shape[3:])
    out_spatial = tuple(s - k + 1 for s, k in zip(x.shape[3:], ks))
    out_starts = [0] + list(itertools.accumulate(e - s - kt + 1 for s, e in zip(starts[:-1], starts[1:])))
    conj_k = [np.conj(_rfft(W, shape)) for W in kernels]  # (O, C/g, kt, *F)
    plan = _Plan(starts, out_starts, kt, cg, o // groups, groups)
    dc = (Ellipsis,) + (0,) * len(shape)
    out = np.empty((n, o, out_starts[-1]) + out_spatial, dtype=x.dtype)
    spectra = {}

    def work(n0, n1, seg):
        xf = _rfft(x[n0:n1, :, starts[seg]:starts[seg + 1]], shape)  # (m, C, T_s, *F)
        if keep_spectra:
            spectra[n0, seg] = xf
        yf = np.empty((n1 - n0, o, plan.frames_out[seg]) + xf.shape[3:], dtype=xf.dtype)
        tmp = np.empty_like(yf[:, :plan.og])
        for maps, ci, dt, src, dst in plan.products(xf, yf, seg):  # all maps of a group at once
            k = conj_k[seg][maps, ci, dt][:, None]
            if ci == 0 and dt == 0:
                np.multiply(src, k, out=dst)
            else:  # into a buffer, not a new temporary each time: 2x faster here
                dst += np.multiply(src, k, out=tmp)
        if biases[seg] is not None:  # a constant is its DC coefficient: no pass over the output
            yf[dc] += (biases[seg] * math.prod(shape)).astype(x.dtype)[:, None]
        target = out[n0:n1, :, out_starts[seg]:out_starts[seg + 1]]
        if activation is None:
            target[...] = _irfft(yf, shape, out_spatial)
        else:
            activation(_irfft(yf, shape, out_spatial), out=target)

    units = _units(n, starts, c, o, math.prod(shape[:-1]) * (shape[-1] // 2 + 1))
    map_chunks(np, work, units)
    cache = (x.shape, x.dtype, shape, ks, conj_k, plan, units, spectra if keep_spectra else x)
    return out, cache


def fft_conv_backward(dout, cache, need_dx: bool = True):
    """Mirror of ``fft_conv_forward``: dout (N, O, sum T'_s, *S')
    -> (dx (N, C, T, *S) or None, [dW per segment], [db (O,) per segment])."""
    x_shape, dtype, shape, ks, conj_k, plan, units, kept = cache  # kept: the spectra, or x
    dx = np.empty(x_shape, dtype=dtype) if need_dx else None

    def work(n0, n1, seg):
        if isinstance(kept, dict):
            xf = kept[n0, seg]
        else:  # an evaluation forward kept x only
            xf = _rfft(kept[n0:n1, :, plan.starts[seg]:plan.starts[seg + 1]], shape)
        o0, o1 = plan.out_starts[seg], plan.out_starts[seg + 1]
        d = np.conj(_rfft(dout[n0:n1, :, o0:o1], shape))  # conj(DY), zero-padded
        dk = np.empty_like(conj_k[seg])
        dxf = np.zeros_like(xf) if need_dx else None
        tmp = np.empty_like(d[:, :plan.og])
        for maps, ci, dt, src, dy in plan.products(xf, d, seg):
            prod = np.multiply(src, dy, out=tmp)
            dk[maps, ci, dt] = prod.sum(axis=(0, 2))
            if need_dx:  # conj(DY . K) = conj(DY) . conj(K), conjugated once below
                np.multiply(dy, conj_k[seg][maps, ci, dt][:, None], out=prod)
                plan.source(dxf, seg, maps, ci, dt)[:, 0] += prod.sum(axis=1)
        if need_dx:
            dx[n0:n1, :, plan.starts[seg]:plan.starts[seg + 1]] = _irfft(np.conj(dxf, out=dxf), shape, x_shape[3:])
        return seg, dk

    dks = [0] * len(conj_k)
    for seg, dk in map_chunks(np, work, units):
        dks[seg] = dks[seg] + dk
    dws = [np.ascontiguousarray(_irfft(dk, shape, ks)).astype(dtype, copy=False) for dk in dks]
    n, o = dout.shape[:2]
    dbs = [np.einsum("nop->o", dout[:, :, o0:o1].reshape(n, o, -1))
           for o0, o1 in zip(plan.out_starts[:-1], plan.out_starts[1:])]
    return dx, dws, dbs


class _Plan:
    """Which input frames and output frames each product of spectra pairs: per segment, group of
    output maps, input channel of the group and temporal tap."""

    def __init__(self, starts, out_starts, kt, cg, og, groups):
        self.starts, self.out_starts, self.kt, self.cg, self.og, self.groups = starts, out_starts, kt, cg, og, groups
        self.frames_out = [o1 - o0 for o0, o1 in zip(out_starts[:-1], out_starts[1:])]

    def source(self, xf, seg, maps, ci, dt):
        """Of a segment's spectra xf (m, C, T_s, *F): frames t' + dt of channel ci of the group of
        ``maps``, (m, 1, T'_s, *F)."""
        channel = (maps.start // self.og) * self.cg + ci
        return xf[:, channel:channel + 1, dt:dt + self.frames_out[seg]]

    def products(self, xf, yf, seg):
        """(maps, ci, dt, input frames (m, 1, T'_s, *F), output frames (m, og, T'_s, *F) of the group's
        maps) for every product of spectra of segment seg."""
        for group in range(self.groups):
            maps = slice(group * self.og, (group + 1) * self.og)
            for ci in range(self.cg):
                for dt in range(self.kt):
                    yield maps, ci, dt, self.source(xf, seg, maps, ci, dt), yf[:, maps]
