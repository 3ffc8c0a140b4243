"""CIFAR-10 from the official *binary* version (Krizhevsky 2009), never from the pickled one.

Each batch file (``data_batch_N.bin``, ``test_batch.bin``) is a plain run of 3073-byte records: one
label byte, then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each a row-major 32 x 32 plane).
Any number of records per file is accepted. ``batches.meta.txt`` lists the class names in label order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from actionrec.errors import DataError

IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32  # 3073
NUM_CLASSES = 10
DEFAULT_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BINARY_ARCHIVE = "cifar-10-binary.tar.gz"

_TRAIN_PATTERN = re.compile(r"data_batch_(\d+)\.bin")


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch file: x uint8 (N, 3, 32, 32), y int64 (N,)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read CIFAR-10 batch ({exc})") from None
    if data.size == 0 or data.size % RECORD_BYTES:
        raise DataError(
            f"{path}: {data.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records"
            " (truncated download, or not the binary version?)"
        )
    records = data.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(
            f"{path}: record {bad} has label {int(labels[bad])}, outside 0..9"
            " (CIFAR-100 or a corrupt file? this reader expects CIFAR-10)"
        )
    images = records[:, 1:].reshape((-1,) + IMAGE_SHAPE)
    return images, labels


def read_class_names(path) -> list[str]:
    """The class names of ``batches.meta.txt``: one per line, blank lines ignored."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read class names ({exc})") from None
    if len(names) != NUM_CLASSES:
        raise DataError(f"{path}: lists {len(names)} class names, CIFAR-10 has {NUM_CLASSES}")
    return names


def _reject_pickle_version(directory: Path) -> None:
    """Say which archive to download when the folder holds the python-pickle version."""
    pickled = [p.name for p in directory.iterdir() if p.name in ("data_batch_1", "test_batch", "batches.meta")
               or p.name == "cifar-10-python.tar.gz"]
    if pickled:
        raise DataError(
            f"{directory}: holds the python-pickle version of CIFAR-10 ({', '.join(sorted(pickled))}),"
            f" which actionrec never unpickles; download the binary version {BINARY_ARCHIVE}"
            " from https://www.cs.toronto.edu/~kriz/cifar.html (or run with --download)"
        )


def load_cifar10(directory) -> dict:
    """Load CIFAR-10 from a ``cifar-10-batches-bin`` folder.

    Returns ``{"train": (x, y), "test": (x, y), "classes": [...]}``: ``x`` uint8 (N, 3, 32, 32),
    ``y`` int64 (N,); train is every ``data_batch_N.bin`` in order of N, test is ``test_batch.bin``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: CIFAR-10 folder not found")
    nested = directory / "cifar-10-batches-bin"
    if nested.is_dir() and not any(directory.glob("*.bin")):
        directory = nested  # the folder the archive extracts into
    train_files = sorted(
        (p for p in directory.iterdir() if _TRAIN_PATTERN.fullmatch(p.name)),
        key=lambda p: int(_TRAIN_PATTERN.fullmatch(p.name).group(1)),
    )
    test_file = directory / "test_batch.bin"
    if not train_files or not test_file.is_file():
        _reject_pickle_version(directory)
        missing = "data_batch_N.bin" if not train_files else "test_batch.bin"
        raise DataError(
            f"{directory}: no {missing} found; expected the binary version of CIFAR-10"
            f" ({BINARY_ARCHIVE}, extracted) or run with --download"
        )
    parts = [read_batch(p) for p in train_files]
    train = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    meta = directory / "batches.meta.txt"
    classes = read_class_names(meta) if meta.is_file() else list(DEFAULT_CLASSES)
    return {"train": train, "test": read_batch(test_file), "classes": classes}


def write_batch(path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write records in the official binary format (for tests and tools)."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(labels), -1)
    records = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], images], axis=1)
    Path(path).write_bytes(records.tobytes())
