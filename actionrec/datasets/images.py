"""In-memory image arrays as a training data source (the protocol ``actionrec.training`` consumes).

A data source has ``len(source)``, ``source.labels`` (int array, one per sample) and
``source.batch(indices) -> (x float32 (B, C, H, W), y int64 (B,))``. Images stay uint8 in memory
(MNIST: 47 MB, CIFAR-10: 150 MB) and are converted and normalised batch by batch; the optional
augmentation runs on the uint8 batch first, so padding added by a crop is black, as in the usual
torchvision pipeline.
"""

from __future__ import annotations

import numpy as np

from actionrec.errors import DataError, ShapeError


def channel_statistics(images) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), in [0, 1] units."""
    images = np.asarray(images)
    mean, std = [], []
    for c in range(images.shape[1]):
        plane = images[:, c].astype(np.float64) / 255.0
        mean.append(float(plane.mean()))
        std.append(float(plane.std()) or 1.0)
    return mean, std


class ImageArraySource:
    """Images and labels held in memory, served as normalised float32 batches.

    images: uint8 (N, H, W) (one channel, as MNIST) or (N, C, H, W); labels: ints in 0..num_classes-1.
    mean, std: per-channel normalisation in [0, 1] units (default: the statistics of these images;
    pass the training set's to the test source). augment: optional callable ``augment(x, rng)`` on
    uint8 (B, C, H, W) batches (``actionrec.augment.Augment``), drawing from this source's generator.
    """

    def __init__(self, images, labels, classes=None, mean=None, std=None, augment=None, seed=0):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4:
            raise ShapeError(f"images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
        if labels.shape != (len(images),):
            raise ShapeError(f"{len(images)} images but labels have shape {labels.shape}")
        if labels.size and labels.min() < 0:
            raise DataError(f"negative label {int(labels.min())} in an image data source")
        self.images = images
        self.labels = labels.astype(np.int64)
        if classes is None:
            classes = [str(i) for i in range(int(self.labels.max()) + 1 if labels.size else 0)]
        self.classes = list(classes)
        if labels.size and self.labels.max() >= len(self.classes):
            raise DataError(f"label {int(self.labels.max())} but only {len(self.classes)} classes")
        if mean is None or std is None:
            mean, std = channel_statistics(images)
        self.mean = [float(m) for m in np.broadcast_to(mean, (images.shape[1],))]
        self.std = [float(s) for s in np.broadcast_to(std, (images.shape[1],))]
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        # Folded scale and shift: x = pixel * scale + shift == (pixel / 255 - mean) / std.
        self._scale = (1.0 / (255.0 * np.asarray(self.std))).astype(np.float32)[:, None, None]
        self._shift = (-np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def input_shape(self) -> tuple:
        """Per-sample shape (C, H, W)."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def normalization(self) -> dict:
        """What a model file must remember to preprocess new images the same way."""
        return {"mean": self.mean, "std": self.std, "scale": "1/255"}

    def batch(self, indices):
        """x float32 (B, C, H, W) normalised (augmented when this source augments), y int64 (B,)."""
        indices = np.asarray(indices)
        x = self.images[indices]
        if self.augment is not None:
            x = self.augment(x, self.rng)
        x = x.astype(np.float32) * self._scale + self._shift
        return x, self.labels[indices]

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Reseed the augmentation from (seed, epoch): the Trainer calls this so resumed runs match."""
        self.rng = np.random.default_rng([int(seed), int(epoch), 7])

    def state_dict(self) -> dict:
        """The augmentation generator's state, so a resumed run draws the same crops and flips."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def subset(self, indices) -> "ImageArraySource":
        """A source over some of these samples, with the same normalisation and augmentation."""
        indices = np.asarray(indices)
        return ImageArraySource(self.images[indices], self.labels[indices], self.classes,
                                self.mean, self.std, self.augment, seed=self.rng.integers(2**31))
