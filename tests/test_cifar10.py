"""CIFAR-10 binary reader: round trips on files in the official record format, errors, real data."""

import numpy as np
import pytest

from actionrec.datasets.cifar10 import DEFAULT_CLASSES, load_cifar10, read_batch, write_batch
from actionrec.errors import DataError
from conftest import shared_path


def _write_set(folder, rng, train_sizes=(5, 3), n_test=4, meta=True):
    written = {}
    xs, ys = [], []
    for i, n in enumerate(train_sizes, start=1):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        write_batch(folder / f"data_batch_{i}.bin", x, y)
        xs.append(x)
        ys.append(y)
    written["train"] = (np.concatenate(xs), np.concatenate(ys))
    x = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=n_test)
    write_batch(folder / "test_batch.bin", x, y)
    written["test"] = (x, y)
    if meta:
        (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    return written


@pytest.mark.parametrize("train_sizes", [(5,), (5, 3), (1, 2, 3)])
def test_round_trip(tmp_path, rng, train_sizes):
    written = _write_set(tmp_path, rng, train_sizes)
    loaded = load_cifar10(tmp_path)
    assert loaded["classes"] == [f"c{i}" for i in range(10)]
    for split in ("train", "test"):
        np.testing.assert_array_equal(loaded[split][0], written[split][0])
        np.testing.assert_array_equal(loaded[split][1], written[split][1])
        assert loaded[split][0].shape[1:] == (3, 32, 32)


def test_record_layout_is_label_then_rgb_planes(tmp_path):
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 + 1024 + 32 * 2 + 5] = 200  # green plane, row 2, column 5
    (tmp_path / "b.bin").write_bytes(record.tobytes())
    x, y = read_batch(tmp_path / "b.bin")
    assert y.tolist() == [7]
    assert x[0, 1, 2, 5] == 200 and x.sum() == 200


def test_batches_sorted_numerically(tmp_path, rng):
    for i in (10, 2):
        write_batch(tmp_path / f"data_batch_{i}.bin", np.full((1, 3072), i, np.uint8), [i % 10])
    write_batch(tmp_path / "test_batch.bin", np.zeros((1, 3072), np.uint8), [0])
    loaded = load_cifar10(tmp_path)
    assert loaded["train"][1].tolist() == [2, 0]
    assert loaded["classes"] == DEFAULT_CLASSES  # no batches.meta.txt


def test_extracted_archive_folder_is_found(tmp_path, rng):
    inner = tmp_path / "cifar-10-batches-bin"
    inner.mkdir()
    _write_set(inner, rng)
    assert len(load_cifar10(tmp_path)["train"][0]) == 8


@pytest.mark.parametrize("extra", [1, 3072, -5])
def test_bad_length_names_file_and_bytes(tmp_path, rng, extra):
    _write_set(tmp_path, rng)
    path = tmp_path / "data_batch_2.bin"
    raw = path.read_bytes()
    raw = raw + b"\0" * extra if extra > 0 else raw[:extra]
    path.write_bytes(raw)
    with pytest.raises(DataError, match=f"data_batch_2.bin: {len(raw)} bytes is not a whole number of 3073-byte"):
        load_cifar10(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(DataError, match="e.bin: 0 bytes"):
        read_batch(tmp_path / "e.bin")


def test_label_out_of_range(tmp_path):
    write_batch(tmp_path / "b.bin", np.zeros((2, 3072), np.uint8), [3, 42])
    with pytest.raises(DataError, match="record 1 has label 42"):
        read_batch(tmp_path / "b.bin")


@pytest.mark.parametrize("name", ["data_batch_1", "cifar-10-python.tar.gz"])
def test_pickle_version_refused_with_advice(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(DataError, match="python-pickle version.*download the binary version cifar-10-binary.tar.gz"):
        load_cifar10(tmp_path)


def test_missing_pieces(tmp_path, rng):
    with pytest.raises(DataError, match="CIFAR-10 folder not found"):
        load_cifar10(tmp_path / "nope")
    _write_set(tmp_path, rng)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="no test_batch.bin found"):
        load_cifar10(tmp_path)


def test_bad_meta(tmp_path, rng):
    _write_set(tmp_path, rng, meta=False)
    (tmp_path / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="batches.meta.txt: lists 2 class names"):
        load_cifar10(tmp_path)


def test_real_subset():
    data = load_cifar10(shared_path("cifar-10-batches-bin"))
    assert data["train"][0].shape == (4000, 3, 32, 32)
    assert data["test"][0].shape == (1000, 3, 32, 32)
    assert data["classes"][0] == "airplane" and data["classes"][9] == "truck"
    # The first official training image is a frog (6), the first test image a cat (3).
    assert data["train"][1][0] == 6 and data["test"][1][0] == 3
    assert np.bincount(data["train"][1], minlength=10).min() > 300
