"""MNIST from the original IDX files (LeCun et al.), gzip-compressed or raw.

IDX layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte), a byte giving the number
of dimensions, one uint32 per dimension, then the data. For MNIST the whole header reads as one
uint32 magic number: 2051 for images (N, 28, 28) and 2049 for labels (N,).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from actionrec.errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_CLASSES = 10
CLASSES = [str(d) for d in range(NUM_CLASSES)]

# Official stems; a file may be stored as `<stem>` or `<stem>.gz` (some copies, as Kaggle's, name
# them `train-images.idx3-ubyte`).
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    """The decompressed bytes of ``path`` (gzip when it starts with the gzip magic)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as gz:
                    return gz.read()
            return f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read MNIST file ({exc})") from None


def read_idx(path, expected_magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes: images (N, rows, cols) or labels (N,), as uint8.

    Checks the magic number, that the header's sizes are positive and that the file holds exactly the
    bytes the header announces; every problem is a one-line DataError naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    ndim = expected_magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{path}: file is {len(data)} bytes long, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise DataError(
            f"{path}: magic number {magic} is not the IDX {kind} magic {expected_magic}"
            " (is this an MNIST file, and is it the right one of images/labels?)"
        )
    if len(data) < header_len:
        raise DataError(f"{path}: file is {len(data)} bytes long, too short for its {header_len}-byte IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if any(d == 0 for d in dims[1:]):
        raise DataError(f"{path}: IDX header gives an empty dimension {dims}")
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected_len:
        raise DataError(
            f"{path}: header announces shape {dims} ({expected_len} bytes) but the file holds"
            f" {len(data)} bytes (truncated or corrupt download?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    """The file for ``stem`` in ``directory``: raw or .gz, with '-' or '.' before 'idx'."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{directory}: no {stem}(.gz) found; put the four official MNIST IDX files there"
        " (or run with --download)"
    )


def load_mnist(directory) -> dict:
    """Load MNIST from a folder holding the four official IDX files (gzip or not).

    Returns ``{"train": (x, y), "test": (x, y), "classes": ["0", ..., "9"]}`` with ``x`` uint8
    (N, 28, 28) and ``y`` int64 (N,) in 0..9.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: MNIST folder not found")
    out = {"classes": list(CLASSES)}
    for split, (image_stem, label_stem) in SPLIT_FILES.items():
        image_path = _find(directory, image_stem)
        label_path = _find(directory, label_stem)
        images = read_idx(image_path, IMAGES_MAGIC)
        labels = read_idx(label_path, LABELS_MAGIC)
        if len(images) != len(labels):
            raise DataError(
                f"{label_path}: holds {len(labels)} labels but {image_path.name} holds {len(images)} images"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise DataError(f"{label_path}: label {int(labels.max())} is outside 0..9")
        out[split] = (images, labels.astype(np.int64))
    return out


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array in IDX format (gzip when ``path`` ends in .gz): for tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
