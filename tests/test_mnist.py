"""MNIST IDX reader: round trips on files written in the official format, error cases, real data."""

import gzip

import numpy as np
import pytest

from actionrec.datasets.mnist import load_mnist, read_idx, write_idx, IMAGES_MAGIC, LABELS_MAGIC
from actionrec.errors import DataError
from conftest import shared_path


def _write_set(folder, rng, n_train=7, n_test=3, gz=True):
    ext = ".gz" if gz else ""
    data = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
        data[split] = (x, y)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path, rng, gz):
    written = _write_set(tmp_path, rng, gz=gz)
    loaded = load_mnist(tmp_path)
    assert loaded["classes"] == [str(d) for d in range(10)]
    for split in ("train", "test"):
        x, y = loaded[split]
        assert x.dtype == np.uint8 and x.shape == written[split][0].shape
        np.testing.assert_array_equal(x, written[split][0])
        np.testing.assert_array_equal(y, written[split][1])
        assert y.dtype == np.int64


def test_dotted_file_names_accepted(tmp_path, rng):
    written = _write_set(tmp_path, rng, gz=False)
    for path in list(tmp_path.iterdir()):
        path.rename(tmp_path / path.name.replace("-idx", ".idx"))
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "t10k-images.idx3-ubyte"
    np.testing.assert_array_equal(load_mnist(tmp_path)["train"][0], written["train"][0])


def test_header_bytes_are_official(tmp_path):
    # Hand-written header: magic 0x00000803, then N, rows, cols big-endian.
    path = tmp_path / "img"
    write_idx(path, np.zeros((2, 28, 28), np.uint8))
    raw = path.read_bytes()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
    assert len(raw) == 16 + 2 * 784


def test_wrong_magic_names_file(tmp_path, rng):
    _write_set(tmp_path, rng)
    # Labels where images are expected.
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: magic number 2049"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("cut", [1, 100])
def test_truncated_file(tmp_path, rng, cut):
    _write_set(tmp_path, rng, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: header announces shape \(3, 28, 28\)"):
        load_mnist(tmp_path)


def test_trailing_bytes_rejected(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.arange(5, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="holds 14 bytes"):
        read_idx(path, LABELS_MAGIC)


def test_short_header(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="too short for its 16-byte IDX header"):
        read_idx(path, IMAGES_MAGIC)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\0" * 100)[:20])
    with pytest.raises(DataError, match="x.gz: cannot read MNIST file"):
        read_idx(path, IMAGES_MAGIC)


def test_count_mismatch(tmp_path, rng):
    _write_set(tmp_path, rng)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    with pytest.raises(DataError, match="holds 6 labels but train-images-idx3-ubyte.gz holds 7 images"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path, rng):
    _write_set(tmp_path, rng)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 10], np.uint8))
    with pytest.raises(DataError, match="label 10 is outside 0..9"):
        load_mnist(tmp_path)


def test_missing_file_and_folder(tmp_path, rng):
    with pytest.raises(DataError, match="MNIST folder not found"):
        load_mnist(tmp_path / "nope")
    _write_set(tmp_path, rng)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\(.gz\) found"):
        load_mnist(tmp_path)


def test_real_mnist():
    data = load_mnist(shared_path("mnist"))
    x, y = data["train"]
    assert x.shape == (60000, 28, 28) and y.shape == (60000,)
    assert data["test"][0].shape == (10000, 28, 28)
    assert np.bincount(y, minlength=10).min() > 5000
    # The first training digit of MNIST is a 5, the first test digit a 7.
    assert y[0] == 5 and data["test"][1][0] == 7
