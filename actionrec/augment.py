"""Batch augmentation on numpy or CuPy: random crop with zero padding, horizontal flip, for image batches
(``Augment``) and for hardwired-channel video cubes (``CubeAugment``).

All work on whole (N, C, H, W) batches at once (one gather, no per-image loop). Random numbers come
from a numpy ``Generator`` the caller passes, so a seeded run sees the same augmentations on CPU
and GPU; only the small offset/flip arrays move to the device.
"""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module
from actionrec.errors import ShapeError


def _check_batch(x):
    if x.ndim != 4:
        raise ShapeError(f"augmentation expects an image batch (N, C, H, W), got shape {tuple(x.shape)}")


def random_crop(x, padding: int, rng: np.random.Generator):
    """Pad each image with ``padding`` zeros on every side and cut a random H x W window from it.

    x (N, C, H, W) -> (N, C, H, W); the offsets (0..2*padding on each axis) are drawn per image.
    """
    _check_batch(x)
    if padding <= 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    top = rng.integers(0, 2 * padding + 1, size=n)
    left = rng.integers(0, 2 * padding + 1, size=n)
    rows = xp.asarray(top[:, None] + np.arange(h))  # (N, H)
    cols = xp.asarray(left[:, None] + np.arange(w))  # (N, W)
    batch = xp.arange(n)[:, None, None, None]
    channel = xp.arange(c)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x, rng: np.random.Generator, p: float = 0.5, negate=()):
    """Mirror each image left-right with probability ``p``. x (N, C, H, W) -> (N, C, H, W).

    ``negate``: channels holding horizontal components (x-gradients, x-flow); a mirror reverses their
    sign, so they are negated in the mirrored images (signed dtypes only).
    """
    _check_batch(x)
    xp = get_array_module(x)
    flip = xp.asarray(rng.random(len(x)) < p)[:, None, None, None]
    mirrored = x[..., ::-1]
    if len(negate):
        sign = np.ones(x.shape[1], dtype=x.dtype)
        sign[np.asarray(negate, dtype=np.int64)] = -1
        mirrored = mirrored * xp.asarray(sign)[:, None, None]
    return xp.where(flip, mirrored, x)


class Augment:
    """A batch augmentation callable ``augment(x, rng) -> x``: crop with padding, then flip.

    ``crop_padding=0`` or ``flip=False`` turns the corresponding step off.
    """

    def __init__(self, crop_padding: int = 4, flip: bool = True):
        if int(crop_padding) < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)

    def __call__(self, x, rng: np.random.Generator):
        x = random_crop(x, self.crop_padding, rng)
        if self.flip:
            x = random_flip(x, rng)
        return x

    def config(self) -> dict:
        return {"crop_padding": self.crop_padding, "flip": self.flip}

    def __repr__(self):
        return f"Augment(crop_padding={self.crop_padding}, flip={self.flip})"


class CubeAugment:
    """A batch augmentation ``augment(x, rng) -> x`` for hardwired-channel cubes (N, 1, 5f-2, H, W).

    Every map of a cube moves together: a random shift of up to ``shift`` pixels each way (crop with
    zero padding: mid-grey, no gradient, no flow in the normalised maps), then a left-right mirror with
    probability 1/2 that negates grad-x and flow-x (a mirrored motion to the right moves to the left).
    """

    def __init__(self, shift: int = 2, flip: bool = True):
        if int(shift) < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        self.shift = int(shift)
        self.flip = bool(flip)

    def __call__(self, x, rng: np.random.Generator):
        from actionrec.hardwired import frames_of_maps, horizontal_maps

        if x.ndim != 5 or x.shape[1] != 1:
            raise ShapeError(f"cube augmentation expects cubes (N, 1, 5f-2, H, W), got shape {tuple(x.shape)}")
        n, _, maps, h, w = x.shape
        frames = frames_of_maps(maps)
        x = random_crop(x.reshape(n, maps, h, w), self.shift, rng)
        if self.flip:
            x = random_flip(x, rng, negate=horizontal_maps(frames))
        return x.reshape(n, 1, maps, h, w)

    def config(self) -> dict:
        return {"shift": self.shift, "flip": self.flip}

    def __repr__(self):
        return f"CubeAugment(shift={self.shift}, flip={self.flip})"
