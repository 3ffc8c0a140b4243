"""Batch augmentation: shapes, exact flips, crops against a per-image loop reference, determinism."""

import numpy as np
import pytest

from actionrec.augment import Augment, random_crop, random_flip
from actionrec.errors import ShapeError


def _loop_crop(x, padding, top, left):
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        padded = np.zeros((c, h + 2 * padding, w + 2 * padding), x.dtype)
        padded[:, padding:padding + h, padding:padding + w] = x[i]
        out[i] = padded[:, top[i]:top[i] + h, left[i]:left[i] + w]
    return out


@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (4, 1, 6, 9), (1, 2, 5, 5)])
@pytest.mark.parametrize("padding", [1, 2, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_crop_matches_loop_reference(shape, padding, dtype):
    x = np.random.default_rng(1).integers(1, 255, size=shape).astype(dtype)
    out = random_crop(x, padding, np.random.default_rng(7))
    # Replay the generator to know the offsets the function drew.
    replay = np.random.default_rng(7)
    top = replay.integers(0, 2 * padding + 1, size=shape[0])
    left = replay.integers(0, 2 * padding + 1, size=shape[0])
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out, _loop_crop(x, padding, top, left))


def test_crop_moves_content_and_pads_with_zeros():
    x = np.ones((200, 1, 4, 4), np.float32)
    out = random_crop(x, 2, np.random.default_rng(0))
    # Some crop is shifted (zeros appear), some is centred (all ones), none has other values.
    zeros_per_image = (out == 0).reshape(200, -1).sum(axis=1)
    assert zeros_per_image.max() > 0 and zeros_per_image.min() == 0
    assert set(np.unique(out)) <= {0.0, 1.0}


def test_zero_padding_is_identity():
    x = np.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    assert random_crop(x, 0, np.random.default_rng(0)) is x


def test_flip_is_exact_mirror():
    x = np.random.default_rng(2).standard_normal((64, 3, 5, 7))
    out = random_flip(x, np.random.default_rng(3))
    flips = np.random.default_rng(3).random(64) < 0.5
    assert 0 < flips.sum() < 64
    np.testing.assert_array_equal(out[flips], x[flips][..., ::-1])
    np.testing.assert_array_equal(out[~flips], x[~flips])


@pytest.mark.parametrize("p, expected", [(0.0, "same"), (1.0, "mirror")])
def test_flip_probability_extremes(p, expected):
    x = np.random.default_rng(2).standard_normal((6, 1, 3, 4))
    out = random_flip(x, np.random.default_rng(0), p=p)
    np.testing.assert_array_equal(out, x if expected == "same" else x[..., ::-1])


def test_augment_deterministic_with_seed():
    x = np.random.default_rng(4).integers(0, 255, (16, 3, 32, 32)).astype(np.uint8)
    aug = Augment(crop_padding=4, flip=True)
    a = aug(x, np.random.default_rng(11))
    b = aug(x, np.random.default_rng(11))
    c = aug(x, np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert aug.config() == {"crop_padding": 4, "flip": True}


def test_rejects_non_batch_and_bad_padding():
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\), got shape \(3, 32, 32\)"):
        random_crop(np.zeros((3, 32, 32)), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="crop_padding"):
        Augment(crop_padding=-1)


# --- hardwired-channel cubes -------------------------------------------------------------------------
def _cubes(n, frames, h=6, w=9, seed=5):
    return np.random.default_rng(seed).standard_normal((n, 1, 5 * frames - 2, h, w)).astype(np.float32)


def test_horizontal_maps_are_grad_x_and_flow_x():
    from actionrec.hardwired import frames_of_maps, horizontal_maps

    # f = 3: gray 0-2, grad_x 3-5, grad_y 6-8, flow_x 9-10, flow_y 11-12
    np.testing.assert_array_equal(horizontal_maps(3), [3, 4, 5, 9, 10])
    assert frames_of_maps(13) == 3 and frames_of_maps(33) == 7
    for bad in (12, 3):
        with pytest.raises(ShapeError, match="5f-2"):
            frames_of_maps(bad)


@pytest.mark.parametrize("frames", [2, 3, 7])
def test_cube_flip_mirrors_every_map_and_negates_horizontal_ones(frames):
    from actionrec.augment import CubeAugment
    from actionrec.hardwired import horizontal_maps

    x = _cubes(40, frames)
    out = CubeAugment(shift=0, flip=True)(x, np.random.default_rng(3))
    flips = np.random.default_rng(3).random(40) < 0.5
    assert 0 < flips.sum() < 40 and out.shape == x.shape and out.dtype == x.dtype
    sign = np.ones(5 * frames - 2, np.float32)
    sign[horizontal_maps(frames)] = -1
    np.testing.assert_array_equal(out[flips], x[flips][..., ::-1] * sign[:, None, None])
    np.testing.assert_array_equal(out[~flips], x[~flips])


def test_cube_flip_agrees_with_the_hardwired_channels_of_a_mirrored_clip():
    """Mirroring the frames and recomputing H1 gives the flipped cube (up to flow estimation noise)."""
    import cv2

    from actionrec.augment import CubeAugment
    from actionrec.hardwired import hardwired_channels

    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (40, 60)).astype(np.float32), (0, 0), 2.0)
    frames = np.stack([np.roll(scene, 2 * t, axis=1) for t in range(3)]).clip(0, 255).astype(np.uint8)
    frames = frames[:, 4:-4, 8:-8]  # a pattern moving right by 2 px per frame
    direct = hardwired_channels(frames)[None, None]
    mirrored = hardwired_channels(frames[..., ::-1].copy())[None, None]
    flipped = CubeAugment(shift=0)(direct, np.random.default_rng(2))  # generator 2 flips its first cube
    assert np.random.default_rng(2).random(1)[0] < 0.5
    inner = np.s_[..., 8:-8, 8:-8]  # away from the borders, where Farneback and np.gradient differ
    np.testing.assert_allclose(flipped[:, :, :9][inner], mirrored[:, :, :9][inner], atol=1e-5)  # gray, grads
    assert np.mean(flipped[:, :, 9:11][inner]) < -0.5  # flow_x was +2 px (x0.5): now leftwards
    np.testing.assert_allclose(flipped[:, :, 9:][inner], mirrored[:, :, 9:][inner], atol=0.25)


def test_cube_shift_moves_all_maps_of_a_cube_together():
    from actionrec.augment import CubeAugment

    x = _cubes(30, 3)
    out = CubeAugment(shift=2, flip=False)(x, np.random.default_rng(8))
    replay = np.random.default_rng(8)
    top, left = replay.integers(0, 5, size=30), replay.integers(0, 5, size=30)
    ref = _loop_crop(x[:, 0], 2, top, left)[:, None]
    np.testing.assert_array_equal(out, ref)


def test_cube_augment_deterministic_and_validated():
    from actionrec.augment import CubeAugment

    x = _cubes(8, 3)
    aug = CubeAugment(shift=1)
    np.testing.assert_array_equal(aug(x, np.random.default_rng(2)), aug(x, np.random.default_rng(2)))
    assert aug.config() == {"shift": 1, "flip": True}
    with pytest.raises(ShapeError, match=r"\(N, 1, 5f-2, H, W\)"):
        aug(x[:, 0], np.random.default_rng(0))
    with pytest.raises(ShapeError, match="5f-2"):
        aug(np.zeros((2, 1, 12, 4, 4), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="shift"):
        CubeAugment(shift=-1)
