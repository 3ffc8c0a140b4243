"""ImageArraySource: the data-source protocol over in-memory uint8 images."""

import numpy as np
import pytest

from actionrec.augment import Augment
from actionrec.datasets.images import ImageArraySource, channel_statistics
from actionrec.errors import DataError, ShapeError


@pytest.mark.parametrize("shape", [(20, 28, 28), (20, 3, 8, 8)])
def test_batches_are_normalised_float32(rng, shape):
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, 10, 20)
    src = ImageArraySource(images, labels, classes=list("abcdefghij"))
    assert len(src) == 20 and src.num_classes == 10
    x, y = src.batch([3, 0, 7])
    four_d = images if images.ndim == 4 else images[:, None]
    assert x.dtype == np.float32 and x.shape == (3,) + four_d.shape[1:] == (3,) + src.input_shape
    np.testing.assert_array_equal(y, labels[[3, 0, 7]])
    mean, std = channel_statistics(four_d)
    expected = (four_d[[3, 0, 7]] / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    full, _ = src.batch(np.arange(20))
    np.testing.assert_allclose(full.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(full.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_test_source_uses_given_statistics(rng):
    images = rng.integers(0, 256, (4, 1, 5, 5), dtype=np.uint8)
    src = ImageArraySource(images, np.zeros(4, int), classes=["a"], mean=[0.5], std=[0.25])
    x, _ = src.batch([1])
    np.testing.assert_allclose(x, (images[[1]] / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
    assert src.normalization["mean"] == [0.5]


def test_augmentation_reproducible_and_resumable(rng):
    images = rng.integers(0, 256, (8, 3, 12, 12), dtype=np.uint8)
    src = ImageArraySource(images, np.arange(8) % 2, augment=Augment(2), seed=5)
    state = src.state_dict()
    a, _ = src.batch(np.arange(8))
    b, _ = src.batch(np.arange(8))
    assert not np.array_equal(a, b)
    src.load_state_dict(state)
    np.testing.assert_array_equal(src.batch(np.arange(8))[0], a)
    src.set_epoch(0, 3)
    c, _ = src.batch(np.arange(8))
    src.set_epoch(0, 3)
    np.testing.assert_array_equal(src.batch(np.arange(8))[0], c)


def test_subset_keeps_normalisation(rng):
    images = rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    src = ImageArraySource(images, np.arange(10) % 3)
    sub = src.subset([0, 1, 2])
    assert len(sub) == 3 and sub.mean == src.mean and sub.classes == ["0", "1", "2"]
    np.testing.assert_array_equal(sub.batch([1])[0], src.batch([1])[0])


def test_bad_inputs():
    with pytest.raises(ShapeError, match="got shape"):
        ImageArraySource(np.zeros((2, 3)), np.zeros(2, int))
    with pytest.raises(ShapeError, match="2 images but labels"):
        ImageArraySource(np.zeros((2, 3, 3)), np.zeros(3, int))
    with pytest.raises(DataError, match="label 5 but only 2 classes"):
        ImageArraySource(np.zeros((2, 3, 3)), np.array([0, 5]), classes=["a", "b"])
