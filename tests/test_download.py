"""Download helpers, offline: checksum verification, atomic writes, safe extraction (no network)."""

import hashlib
import io
import tarfile

import pytest

from actionrec.datasets import download as dl
from actionrec.datasets.cifar10 import load_cifar10, write_batch
from actionrec.errors import DataError


def _md5(data):
    return hashlib.md5(data).hexdigest()


def test_fetch_from_file_url_verifies_and_writes(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    dest = tmp_path / "cache" / "f.bin"
    dl.fetch(src.as_uri(), dest, _md5(src.read_bytes()))
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["f.bin"]


def test_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"corrupted")
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(DataError, match="has MD5 .* expected 0{32}"):
        dl.fetch(src.as_uri(), dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []


def test_interrupted_download_keeps_old_file(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")

    class Broken(io.BytesIO):
        def read(self, n=-1):
            raise OSError("connection reset")

    with pytest.raises(DataError, match="download failed .*connection reset"):
        dl.fetch("https://example.invalid/f.bin", dest, "1" * 32, opener=lambda url: Broken())
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_verified_cache_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"cached")

    def no_network(url):
        raise AssertionError("must not download")

    assert dl.fetch("https://example.invalid/f", dest, _md5(b"cached"), opener=no_network) == dest


def test_mirrors_tried_in_order(tmp_path, monkeypatch):
    good = tmp_path / "good"
    good.mkdir()
    (good / "x.gz").write_bytes(b"data")
    mirrors = ((tmp_path / "missing").as_uri() + "/", good.as_uri() + "/")
    out = dl._fetch_from_mirrors(mirrors, "x.gz", _md5(b"data"), tmp_path / "c" / "x.gz", dl.urllib.request.urlopen)
    assert out.read_bytes() == b"data"
    with pytest.raises(DataError, match="could not download x.gz"):
        dl._fetch_from_mirrors(mirrors[:1], "x.gz", _md5(b"data"), tmp_path / "d" / "x.gz", dl.urllib.request.urlopen)


def _cifar_archive(path, rng, evil=False):
    stage = path.parent / "stage"
    stage.mkdir()
    for name in dl.CIFAR10_MEMBERS:
        if name.endswith(".bin"):
            write_batch(stage / name, rng.integers(0, 256, (2, 3072)), rng.integers(0, 10, 2))
        else:
            (stage / name).write_text("\n".join(f"k{i}" for i in range(10)))
    with tarfile.open(path, "w:gz") as tar:
        for name in dl.CIFAR10_MEMBERS:
            tar.add(stage / name, arcname=f"cifar-10-batches-bin/{name}")
        if evil:
            tar.add(stage / "test_batch.bin", arcname="../../escaped.bin")
    return path


def test_download_cifar_with_local_mirror(tmp_path, rng, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    archive = _cifar_archive(server / "cifar-10-binary.tar.gz", rng, evil=True)
    monkeypatch.setattr(dl, "CIFAR10_MIRRORS", (server.as_uri() + "/",))
    monkeypatch.setattr(dl, "CIFAR10_ARCHIVE", ("cifar-10-binary.tar.gz", _md5(archive.read_bytes())))
    cache = tmp_path / "cache"
    folder = dl.download("cifar10", cache)
    data = load_cifar10(folder)
    assert data["train"][0].shape == (10, 3, 32, 32) and data["classes"][0] == "k0"
    assert not (tmp_path / "escaped.bin").exists() and not (cache.parent / "escaped.bin").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(dl.CIFAR10_MEMBERS)


def test_download_mnist_with_local_mirror(tmp_path, rng, monkeypatch):
    from actionrec.datasets.mnist import load_mnist, write_idx

    server = tmp_path / "server"
    server.mkdir()
    files = []
    for name, _ in dl.MNIST_FILES:
        shape = (3, 28, 28) if "images" in name else (3,)
        write_idx(server / name, rng.integers(0, 10, shape))
        files.append((name, _md5((server / name).read_bytes())))
    monkeypatch.setattr(dl, "MNIST_MIRRORS", (server.as_uri() + "/",))
    monkeypatch.setattr(dl, "MNIST_FILES", tuple(files))
    data = load_mnist(dl.download("mnist", tmp_path / "cache"))
    assert data["test"][0].shape == (3, 28, 28)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        dl.download("svhn", tmp_path)


def test_archive_missing_members(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    with pytest.raises(DataError, match="archive lacks batches.meta.txt"):
        dl.extract_members(archive, tmp_path / "out", dl.CIFAR10_MEMBERS)


def test_mnist_checksums_match_the_real_copies():
    # The shared copies of these three files are the official gzip files; the training images were
    # recompressed (only their uncompressed bytes are official), so they are not compared.
    from conftest import shared_path

    folder = shared_path("mnist")
    for name, md5 in dl.MNIST_FILES:
        if name != "train-images-idx3-ubyte.gz":
            assert dl.file_md5(folder / name) == md5, name
