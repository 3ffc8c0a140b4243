"""Hardwired layer H1: channel order and counts, sign and axis conventions of gradients and flow."""

import numpy as np
import pytest

from actionrec.hardwired import (FLOW_GAIN, GRAD_GAIN, cube_maps, farneback_flow, hardwired_channels,
                                 quantise_flow, segments)


def moving_texture(f, k, axis, h=60, w=80, seed=0):
    """Smooth random texture shifted by k pixels per frame along axis (1 = x/right, 0 = y/down)."""
    import cv2

    rng = np.random.default_rng(seed)
    big = rng.uniform(0, 255, (h + 40, w + 40 + 10 * f)).astype(np.float32)
    big = cv2.GaussianBlur(big, (0, 0), 2.0)
    big = (big - big.min()) / (big.max() - big.min()) * 255
    frames = []
    for t in range(f):
        shifted = np.roll(big, k * t, axis=axis)
        frames.append(shifted[20:20 + h, 20:20 + w])
    return np.stack(frames).astype(np.uint8)


@pytest.mark.parametrize("f", [7, 9])
def test_channel_order_and_counts(f):
    frames = moving_texture(f, 1, axis=1)
    maps = hardwired_channels(frames)
    assert maps.shape == (5 * f - 2, 60, 80) and maps.dtype == np.float32
    assert sum(segments(f)) == 5 * f - 2
    # gray block is the frames themselves, normalised
    np.testing.assert_allclose(maps[:f], (frames / 255.0 - 0.5) * 2, atol=1e-6)
    # gradient blocks against a plain-loop central difference
    g = frames[2].astype(np.float64) / 255
    gx = np.zeros_like(g)
    for x in range(1, 79):
        gx[:, x] = (g[:, x + 1] - g[:, x - 1]) / 2
    np.testing.assert_allclose(maps[f + 2][:, 1:-1], GRAD_GAIN * gx[:, 1:-1], atol=1e-5)
    # flow blocks are the quantised Farnebäck flow, x then y
    flow = farneback_flow(frames)
    q = quantise_flow(flow)
    np.testing.assert_allclose(maps[3 * f:4 * f - 1], q[:, 0] * FLOW_GAIN / 16, atol=1e-6)
    np.testing.assert_allclose(maps[4 * f - 1:], q[:, 1] * FLOW_GAIN / 16, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_flow_sign_shift_right(k):
    flow = farneback_flow(moving_texture(5, k, axis=1))
    inner = flow[:, :, 15:-15, 15:-15]
    assert abs(np.median(inner[:, 0]) - k) < 0.15 * k
    assert abs(np.median(inner[:, 1])) < 0.1


def test_flow_sign_shift_down():
    flow = farneback_flow(moving_texture(5, 2, axis=0))
    inner = flow[:, :, 15:-15, 15:-15]
    assert abs(np.median(inner[:, 1]) - 2) < 0.3
    assert abs(np.median(inner[:, 0])) < 0.1


def test_vertical_edge_gives_gradient_x_only():
    frames = np.zeros((3, 20, 30), np.uint8)
    frames[:, :, 15:] = 200  # dark left, bright right: a vertical edge
    maps = hardwired_channels(frames)
    gx, gy = maps[3:6], maps[6:9]
    assert gx[:, :, 14:16].min() > 0.5 and np.abs(gx[:, :, :13]).max() == 0
    assert np.abs(gy).max() == 0


def test_flow_saturates_in_int8():
    q = quantise_flow(np.array([100.0, -100.0, 0.03, 1.5], np.float32))
    assert q.tolist() == [127, -127, 0, 24]


def test_bad_shapes():
    with pytest.raises(ValueError):
        hardwired_channels(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError):
        cube_maps(np.zeros((1, 5, 8, 8), np.uint8), np.zeros((1, 5, 2, 8, 8), np.int8))


@pytest.mark.parametrize("shape", [(2, 5, 12, 16), (1, 7, 9, 3)])
def test_cube_maps_matches_numpy_gradient(shape, rng):
    n, f, h, w = shape
    gray = rng.integers(0, 256, shape).astype(np.uint8)
    flow = rng.integers(-127, 128, (n, f - 1, 2, h, w)).astype(np.int8)
    maps = cube_maps(gray, flow)
    g = gray.astype(np.float64) / 255
    gy, gx = np.gradient(g, axis=(2, 3))
    np.testing.assert_allclose(maps[:, 0, :f], (g - 0.5) * 2, atol=1e-6)
    np.testing.assert_allclose(maps[:, 0, f:2 * f], GRAD_GAIN * gx, atol=1e-5)
    np.testing.assert_allclose(maps[:, 0, 2 * f:3 * f], GRAD_GAIN * gy, atol=1e-5)
    np.testing.assert_allclose(maps[:, 0, 3 * f:4 * f - 1], flow[:, :, 0] * FLOW_GAIN / 16, atol=1e-6)
