"""CubeDataset: person splits on the stored index, real KTH clips with 00sequences.txt, error cases."""

import os

import h5py
import numpy as np
import pytest

from actionrec.datasets.cubes import CubeDataset
from actionrec.datasets.kth import read_sequences
from actionrec.errors import DataError
from actionrec.preprocess import preprocess_folder
from actionrec.synth import make_synthetic_kth
from conftest import shared_path


@pytest.fixture(scope="module")
def synth_h5(tmp_path_factory):
    base = tmp_path_factory.mktemp("cubes")
    make_synthetic_kth(base / "clips", persons=[1, 2, 11], scenarios=[1], actions=["boxing", "walking"],
                       seconds=1.0, seed=5)
    preprocess_folder(base / "clips", base / "d.h5", frames=9, size=(60, 40), stride=4, progress=False)
    return base / "d.h5"


def test_official_split_select(synth_h5):
    with CubeDataset(synth_h5) as d:
        assert d.split_persons("official") == {"train": [11], "validation": [1], "test": [2]}
        absent = d.absent_persons("official")
        assert 12 in absent["train"] and 1 not in absent["validation"]
        for part, person in (("train", 11), ("validation", 1), ("test", 2)):
            idx = d.select(part)
            assert len(idx) and set(d.cube_person[idx]) == {person}
        assert sorted(np.concatenate([d.select(p) for p in ("train", "validation", "test")])) == list(range(len(d)))
        assert d.read_cubes(d.select("test")[:3]).shape == (3, 1, 43, 40, 60)


def test_cube_source_augments_reproducibly_per_epoch(synth_h5):
    from actionrec.augment import CubeAugment
    from actionrec.datasets.sources import CubeSource

    with CubeDataset(synth_h5) as d:
        idx = d.select("train")
        plain = CubeSource(d, idx).batch([0, 1, 2])[0]
        source = CubeSource(d, idx, augment=CubeAugment(shift=2))
        source.set_epoch(0, 1)
        a, y = source.batch([0, 1, 2])
        source.set_epoch(0, 1)
        np.testing.assert_array_equal(source.batch([0, 1, 2])[0], a)
        source.set_epoch(0, 2)
        assert not np.array_equal(source.batch([0, 1, 2])[0], a)
        assert a.shape == plain.shape and a.dtype == np.float32 and not np.array_equal(a, plain)
        np.testing.assert_array_equal(y, d.cube_label[idx[:3]])


def test_ji_and_explicit_split(synth_h5):
    with CubeDataset(synth_h5) as d:
        parts = d.split_persons("ji", trial=2)
        assert sorted(sum(parts.values(), [])) == [1, 2, 11]
        idx = d.select("train", persons={"train": [1, 2], "test": [11]})
        assert set(d.cube_person[idx]) == {1, 2}
        assert len(d.select("validation", persons={"train": [1, 2], "test": [11]})) == 0
        with pytest.raises(DataError, match="unknown part"):
            d.select("dev")
        with pytest.raises(IndexError):
            d.read_cubes([len(d)])


def test_incomplete_file_refused(synth_h5, tmp_path):
    broken = tmp_path / "d.h5"
    broken.write_bytes(synth_h5.read_bytes())
    with h5py.File(broken, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(DataError, match="incomplete.*rerun"):
        CubeDataset(broken)


@pytest.mark.parametrize("kind", ["missing", "garbage", "other_h5", "truncated"])
def test_bad_dataset_files(synth_h5, tmp_path, kind):
    p = tmp_path / "x.h5"
    if kind == "garbage":
        p.write_text("not hdf5")
    elif kind == "other_h5":
        with h5py.File(p, "w") as f:
            f["x"] = 1
    elif kind == "truncated":
        p.write_bytes(synth_h5.read_bytes()[: os.path.getsize(synth_h5) // 3])
    with pytest.raises(DataError) as err:
        CubeDataset(p)
    assert str(p) in str(err.value)


def test_real_kth_with_sequences(tmp_path):
    kth = shared_path("kth")
    root = tmp_path / "kth"
    for action, name in (("boxing", "person01_boxing_d1_uncomp.avi"), ("walking", "person11_walking_d2_uncomp.avi")):
        (root / action).mkdir(parents=True)
        os.symlink(kth / action / name, root / action / name)
    s = preprocess_folder(root, tmp_path / "k.h5", sequences=kth / "00sequences.txt", frames=9, stride=8,
                          progress=False)
    assert s["skipped"] == [] and s["not_annotated"] == []
    seq = read_sequences(kth / "00sequences.txt")
    with CubeDataset(tmp_path / "k.h5") as d:
        assert d.persons == [1, 11]
        for v, video in enumerate(d.videos):
            ranges = seq[video["name"]]
            starts = d.cube_start[d.cube_video == v]
            assert len(starts) > 10
            assert all(any(a <= st and st + 9 <= b for a, b in ranges) for st in starts)
        x = d.read_cubes(np.arange(0, len(d), 7))
        assert x.dtype == np.float32 and np.isfinite(x).all()
        # real content: grey spans the range, flow is not all zero
        assert x[:, 0, :9].std() > 0.2 and np.abs(x[:, 0, 27:]).max() > 0.1
        assert "validation" in d.summary() and d.split_persons()["train"] == [11]
