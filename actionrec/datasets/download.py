"""Optional download of the official MNIST and CIFAR-10 (binary) archives into a cache folder.

Only ``--download`` calls this; the loaders never need a network. Every file is checked against its
published MD5 sum before it is kept, and written atomically (a temp file in the same folder, then
``os.replace``), so an interrupted download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from actionrec.errors import DataError

CHUNK = 1 << 20

# name -> (mirrors tried in order, files as (file name, md5)). The MD5 sums are the ones the dataset
# pages publish (MNIST: as used by torchvision; CIFAR-10: www.cs.toronto.edu/~kriz/cifar.html).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_FILES = (
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_ARCHIVE = ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
CIFAR10_MEMBERS = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin", "batches.meta.txt")

DATASETS = ("mnist", "cifar10")


def file_md5(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest, md5: str, opener=urllib.request.urlopen) -> Path:
    """Download ``url`` to ``dest`` unless a copy with the right MD5 is already there.

    The bytes go to ``dest.tmp-<pid>`` while their MD5 is computed; only a verified file is moved
    into place. Raises DataError (naming the URL) on a network error or a checksum mismatch.
    """
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    digest = hashlib.md5()
    try:
        with opener(url) as response, open(tmp, "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise DataError(
                f"{url}: downloaded file has MD5 {digest.hexdigest()}, expected {md5} (corrupt or changed"
                " download; try again later or fetch it by hand)"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: download failed ({exc}); the loaders also read files you fetch by hand") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _fetch_from_mirrors(mirrors, name, md5, dest, opener) -> Path:
    errors = []
    for base in mirrors:
        try:
            return fetch(base + name, dest, md5, opener=opener)
        except DataError as exc:
            errors.append(str(exc))
    raise DataError(f"could not download {name}: " + "; ".join(errors))


def extract_members(archive, folder, members) -> Path:
    """Write the named regular files of a tar archive into ``folder`` (flat), each atomically.

    Reads members by base name only and writes the bytes ourselves, so no archive path can escape
    ``folder`` (no ``extractall``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set(members)
    found = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if not info.isfile() or base not in wanted:
                    continue
                tmp = folder / f"{base}.tmp-{os.getpid()}"
                with tar.extractfile(info) as src, open(tmp, "wb") as out:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        out.write(block)
                os.replace(tmp, folder / base)
                found.add(base)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None
    missing = wanted - found
    if missing:
        raise DataError(f"{archive}: archive lacks {', '.join(sorted(missing))}")
    return folder


def download(dataset: str, cache_dir, opener=urllib.request.urlopen) -> Path:
    """Fetch ``dataset`` ("mnist" or "cifar10") into ``cache_dir`` and return the folder to load.

    Verified files already in the cache are not downloaded again.
    """
    cache_dir = Path(cache_dir).expanduser()
    if dataset == "mnist":
        folder = cache_dir / "mnist"
        for name, md5 in MNIST_FILES:
            _fetch_from_mirrors(MNIST_MIRRORS, name, md5, folder / name, opener)
        return folder
    if dataset == "cifar10":
        folder = cache_dir / "cifar-10-batches-bin"
        if all((folder / m).is_file() for m in CIFAR10_MEMBERS):
            return folder
        name, md5 = CIFAR10_ARCHIVE
        archive = _fetch_from_mirrors(CIFAR10_MIRRORS, name, md5, cache_dir / name, opener)
        return extract_members(archive, folder, CIFAR10_MEMBERS)
    raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")


def default_cache_dir() -> Path:
    """``$ACTIONREC_CACHE`` or ``~/.cache/actionrec``."""
    return Path(os.environ.get("ACTIONREC_CACHE", Path.home() / ".cache" / "actionrec"))
