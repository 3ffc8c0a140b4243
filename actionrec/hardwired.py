"""Ji et al.'s hardwired layer H1: gray, gradient-x, gradient-y, optical-flow-x, optical-flow-y.

Conventions (tested in tests/test_hardwired.py):
- Images are arrays indexed [row, column]; x is the column axis (increasing to the right), y is the row
  axis (increasing downwards).
- Gradients are central differences, ``numpy.gradient`` (one-sided at the borders), of the grey level
  scaled to [0, 1]: grad_x[y, x] = (g[y, x+1] - g[y, x-1]) / 2. A dark-to-bright vertical edge gives
  positive grad_x and zero grad_y.
- Flow is OpenCV's Farnebäck flow from frame t to frame t+1 in pixels per frame: a pattern moving right
  by k pixels per frame gives flow_x = +k, flow_y = 0 (and moving down gives flow_y > 0).
- From f frames: gray (f), grad_x (f), grad_y (f), flow_x (f-1), flow_y (f-1): 5f-2 maps in that order.

Storage and reading (``actionrec.preprocess``, ``actionrec.datasets.cubes``) share ``cube_maps`` so that
training and classification apply the identical computation.
"""

from __future__ import annotations

import numpy as np

CHANNELS = ("gray", "grad_x", "grad_y", "flow_x", "flow_y")

# OpenCV's Farnebäck parameters (as recommended in OpenCV's documentation); recorded in every dataset.
FARNEBACK_PARAMS = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3,
                    "poly_n": 5, "poly_sigma": 1.2, "flags": 0}

# Flow is stored as int8 in units of 1/FLOW_QUANT pixel: resolution 1/16 px, range ±7.9 px per frame.
FLOW_QUANT = 16.0

# Fixed, data-independent scales bringing each map to roughly unit range (see docs/hdf5-format.md).
NORMALISATION = {"gray": "(g / 255 - 0.5) * 2", "grad": "4 * central_difference(g / 255)",
                 "flow": "flow_pixels / 2"}
GRAD_GAIN = 4.0
FLOW_GAIN = 0.5


def segments(frames: int) -> tuple[int, int, int, int, int]:
    """Time lengths of the five hardwired streams for ``frames`` input frames."""
    return (frames, frames, frames, frames - 1, frames - 1)


def frames_of_maps(maps: int) -> int:
    """f from the 5f-2 maps of a cube; ShapeError when ``maps`` is not of that form."""
    from actionrec.errors import ShapeError

    if maps < 8 or (maps + 2) % 5:
        raise ShapeError(f"{maps} maps is not a hardwired cube (5f-2 maps for f >= 2 frames)")
    return (maps + 2) // 5


def horizontal_maps(frames: int) -> np.ndarray:
    """Indices of the grad_x and flow_x maps among the 5f-2: the maps a left-right mirror negates."""
    starts = np.concatenate([[0], np.cumsum(segments(frames))])
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in (CHANNELS.index("grad_x"),
                                                                        CHANNELS.index("flow_x"))])


def farneback_flow(frames: np.ndarray, params=None) -> np.ndarray:
    """Optical flow between adjacent frames.

    frames: uint8 (T, H, W) -> float32 (T-1, 2, H, W) with [:, 0] = flow_x, [:, 1] = flow_y (pixels).
    """
    import cv2

    p = dict(FARNEBACK_PARAMS if params is None else params)
    t, h, w = frames.shape
    out = np.empty((max(t - 1, 0), 2, h, w), np.float32)
    for i in range(t - 1):
        flow = cv2.calcOpticalFlowFarneback(
            frames[i], frames[i + 1], None, p["pyr_scale"], p["levels"], p["winsize"],
            p["iterations"], p["poly_n"], p["poly_sigma"], p["flags"])
        out[i, 0] = flow[..., 0]
        out[i, 1] = flow[..., 1]
    return out


def quantise_flow(flow: np.ndarray, quant: float = FLOW_QUANT) -> np.ndarray:
    """float pixels -> int8 in units of 1/quant pixel, saturating at ±127."""
    return np.clip(np.rint(flow * quant), -127, 127).astype(np.int8)


def cube_maps(gray: np.ndarray, flow_q: np.ndarray, quant: float = FLOW_QUANT) -> np.ndarray:
    """Normalised hardwired maps of a batch of cubes: the single function used for training and
    classification.

    gray: uint8 (N, f, H, W); flow_q: int8 (N, f-1, 2, H, W) from ``quantise_flow``
    -> float32 (N, 1, 5f-2, H, W) in H1 order gray, grad_x, grad_y, flow_x, flow_y.
    """
    n, f, h, w = gray.shape
    if flow_q.shape != (n, f - 1, 2, h, w):
        raise ValueError(f"flow shape {flow_q.shape} does not match gray shape {gray.shape}")
    out = np.empty((n, 1, 5 * f - 2, h, w), np.float32)
    g = out[:, 0, :f]
    np.multiply(gray, np.float32(1.0 / 255.0), out=g)
    _central_difference(g, -1, out[:, 0, f:2 * f], GRAD_GAIN)
    _central_difference(g, -2, out[:, 0, 2 * f:3 * f], GRAD_GAIN)
    g -= 0.5
    g *= 2.0
    scale = np.float32(FLOW_GAIN / quant)
    np.multiply(flow_q[:, :, 0], scale, out=out[:, 0, 3 * f:4 * f - 1])
    np.multiply(flow_q[:, :, 1], scale, out=out[:, 0, 4 * f - 1:])
    return out


def _central_difference(g, axis, out, gain):
    """out = gain * numpy.gradient(g, axis=axis), written in place (central inside, one-sided at borders)."""
    n = g.shape[axis]

    def sl(a, b):
        idx = [slice(None)] * g.ndim
        idx[axis] = slice(a, b)
        return tuple(idx)

    np.subtract(g[sl(2, n)], g[sl(0, n - 2)], out=out[sl(1, n - 1)])
    out[sl(1, n - 1)] *= np.float32(0.5 * gain)
    np.subtract(g[sl(1, 2)], g[sl(0, 1)], out=out[sl(0, 1)])
    np.subtract(g[sl(n - 1, n)], g[sl(n - 2, n - 1)], out=out[sl(n - 1, n)])
    out[sl(0, 1)] *= np.float32(gain)
    out[sl(n - 1, n)] *= np.float32(gain)


def hardwired_channels(frames: np.ndarray, params=None) -> np.ndarray:
    """H1 of Ji et al. for f consecutive grey frames.

    frames: uint8 (f, H, W) -> float32 (5f-2, H, W): gray (f), grad_x (f), grad_y (f), flow_x (f-1),
    flow_y (f-1), normalised exactly as the datasets (flow quantised as stored).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected grey frames (f >= 2, H, W), got shape {frames.shape}")
    frames = frames.astype(np.uint8, copy=False)
    flow_q = quantise_flow(farneback_flow(frames, params))
    return cube_maps(frames[None], flow_q[None])[0, 0]
