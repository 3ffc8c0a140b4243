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
