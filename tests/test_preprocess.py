"""preprocess: HDF5 round trip, identical training/classification maps, bad files, resume, append."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from actionrec.datasets.cubes import CubeDataset
from actionrec.errors import DataError
from actionrec.hardwired import hardwired_channels
from actionrec.preprocess import clip_cubes, cube_starts, preprocess_folder
from actionrec.synth import make_synthetic_kth
from actionrec.video import read_gray_frames
from conftest import REPO, shared_path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    make_synthetic_kth(out, persons=[1, 2, 11], scenarios=[1], seconds=1.2, seed=1)
    return out


@pytest.fixture(scope="module")
def dataset(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("h5") / "data.h5"
    summary = preprocess_folder(folder, out, frames=7, stride=3, progress=False)
    return out, summary


def test_round_trip(dataset, folder):
    out, summary = dataset
    assert not out.with_name(out.name + ".partial").exists()
    with CubeDataset(out) as d:
        assert d.classes == ["boxing", "handclapping", "handwaving", "jogging", "running", "walking"]
        assert d.frames == 7 and (d.width, d.height) == (80, 60)
        assert d.segments == (7, 7, 7, 6, 6) and d.input_shape == (1, 33, 60, 80)
        assert len(d.videos) == 18 and summary["videos"] == 18 and summary["skipped"] == []
        assert len(d) == 18 * len(range(0, 30 - 7 + 1, 3)) == summary["cubes"]
        for v in d.videos:
            assert d.classes[v["label"]] == v["action"] == Path(v["path"]).parent.name
            assert v["n_frames"] == 30 and v["person"] in (1, 2, 11) and v["scenario"] == 1
        assert set(d.cube_person) == {1, 2, 11}
        json.dumps(d.preprocessing)
        assert d.preprocessing["flow"]["params"]["winsize"] == 15
        with h5py.File(out) as f:
            assert json.loads(f.attrs["software"])["opencv"]


def test_cubes_equal_classification_path_and_h1(dataset):
    """read_cubes (training) == clip_cubes (classify) == hardwired_channels on the decoded frames."""
    out, _ = dataset
    with CubeDataset(out) as d:
        video = 4
        idx = np.flatnonzero(d.cube_video == video)
        train_maps = d.read_cubes(idx)
        cubes, starts, n = clip_cubes(d.videos[video]["path"], d.preprocessing)
        assert n == 30 and starts.tolist() == d.cube_start[idx].tolist()
        np.testing.assert_array_equal(train_maps, cubes)
        frames = read_gray_frames(d.videos[video]["path"], (80, 60))
        s = int(starts[2])
        np.testing.assert_array_equal(cubes[2, 0], hardwired_channels(frames[s:s + 7]))
        # order of the request is kept
        np.testing.assert_array_equal(d.read_cubes(idx[::-1]), train_maps[::-1])


def test_cube_starts():
    assert cube_starts([(0, 10), (12, 20)], 7, 2) == [0, 2, 12]
    assert cube_starts([(0, 5)], 7, 1) == []


def test_bad_files_are_skipped_with_cause(tmp_path, folder):
    root = tmp_path / "root"
    shutil.copytree(folder / "walking", root / "walking")
    (root / "walking" / "person03_walking_d1_uncomp.avi").write_bytes(b"")
    (root / "walking" / "person04_walking_d1_uncomp.avi").write_text("this is a text file, not a video\n" * 20)
    good = root / "walking" / "person01_walking_d1_uncomp.avi"
    (root / "walking" / "person05_walking_d1_uncomp.avi").write_bytes(good.read_bytes()[:3000])  # truncated
    (root / "walking" / "notes.avi").write_bytes(good.read_bytes())  # not a KTH name
    import cv2
    empty_video = cv2.VideoWriter(str(root / "walking" / "person07_walking_d1_uncomp.avi"),
                                  cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120), False)
    empty_video.release()  # a valid AVI header with zero frames
    (root / "boxing").mkdir()
    os.symlink(shared_path("bad-video", "ido_walk.avi"), root / "boxing" / "person06_boxing_d1_uncomp.avi")
    s = preprocess_folder(root, tmp_path / "d.h5", frames=7, progress=False)
    causes = dict(s["skipped"])
    by_name = {Path(p).name: c for p, c in causes.items()}
    assert "empty file" in by_name["person03_walking_d1_uncomp.avi"]
    assert "not a video" in by_name["person04_walking_d1_uncomp.avi"]
    assert "KTH pattern" in by_name["notes.avi"]
    assert "crashed" in by_name["person06_boxing_d1_uncomp.avi"]
    assert "no decodable frame" in by_name["person07_walking_d1_uncomp.avi"] or \
        "cannot open" in by_name["person07_walking_d1_uncomp.avi"]
    assert "SIGABRT" in by_name["person06_boxing_d1_uncomp.avi"]
    assert s["videos"] == 3 + ("person05_walking_d1_uncomp.avi" not in by_name)
    with CubeDataset(tmp_path / "d.h5") as d:
        assert d.classes == ["boxing", "walking"]
        assert sorted(Path(p).name for p, _ in d.skipped) == sorted(by_name)
        assert "skipped files: " in d.summary()


def test_sequences_restrict_cubes(tmp_path, folder):
    seq = tmp_path / "00sequences.txt"
    seq.write_bytes(b"person01_walking_d1\t\tframes\t3-12, 20-29\r\nperson02_walking_d1\t*missing*\r\n")
    root = tmp_path / "root"
    shutil.copytree(folder / "walking", root / "walking")
    s = preprocess_folder(root, tmp_path / "d.h5", sequences=seq, frames=5, stride=2, progress=False)
    assert s["not_annotated"] == ["person11_walking_d1"]
    with CubeDataset(tmp_path / "d.h5") as d:
        names = [v["name"] for v in d.videos]
        v1, v2, v3 = (names.index(f"person{p}_walking_d1") for p in ("01", "02", "11"))
        assert d.cube_start[d.cube_video == v1].tolist() == [2, 4, 6, 19, 21, 23]
        assert (d.cube_video == v2).sum() == 0
        assert d.cube_start[d.cube_video == v3].tolist() == list(range(0, 26, 2))


def test_append_new_videos(tmp_path, folder):
    root = tmp_path / "root"
    shutil.copytree(folder / "boxing", root / "boxing")
    out = tmp_path / "d.h5"
    preprocess_folder(root, out, frames=7, progress=False)
    with CubeDataset(out) as d:
        before = d.read_cubes(np.arange(len(d)))
        n_before = len(d)
    mtime = out.stat().st_mtime_ns
    again = preprocess_folder(root, out, frames=7, progress=False)  # nothing new: the file is left alone
    assert again["new_videos"] == 0 and again["videos"] == 3 and out.stat().st_mtime_ns == mtime
    shutil.copytree(folder / "running", root / "running")
    s = preprocess_folder(root, out, frames=7, progress=False)
    assert s["new_videos"] == 3 and s["videos"] == 6
    with CubeDataset(out) as d:
        assert d.classes == ["boxing", "running"] and len(d) == 2 * n_before
        np.testing.assert_array_equal(d.read_cubes(np.arange(n_before)), before)
    with pytest.raises(DataError, match="frames=7"):
        preprocess_folder(root, out, frames=9, progress=False)


def _cube_keys(path):
    with CubeDataset(path) as d:
        return [(d.videos[v]["name"], int(s)) for v, s in zip(d.cube_video, d.cube_start)]


def test_cube_order_follows_the_paths_not_the_order_videos_were_written(tmp_path, folder):
    # running first, then boxing appended: boxing's videos sit after running's in the file, but the
    # cube index must read as if the folder had been done in one go (seeded training depends on it)
    root = tmp_path / "root"
    shutil.copytree(folder / "running", root / "running")
    appended = tmp_path / "appended.h5"
    preprocess_folder(root, appended, frames=7, progress=False)
    shutil.copytree(folder / "boxing", root / "boxing")
    preprocess_folder(root, appended, frames=7, progress=False)
    fresh = tmp_path / "fresh.h5"
    preprocess_folder(root, fresh, frames=7, workers=1, progress=False)
    keys = _cube_keys(appended)
    assert keys == _cube_keys(fresh) and keys[0][0].startswith("person01_boxing")
    with CubeDataset(appended) as a, CubeDataset(fresh) as b:
        np.testing.assert_array_equal(a.read_cubes(np.arange(len(a))), b.read_cubes(np.arange(len(b))))
        assert [a.classes[c] for c in a.cube_label] == [b.classes[c] for c in b.cube_label]


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "actionrec", "preprocess", *map(str, args), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_resume_after_kill(tmp_path, sig):
    root = tmp_path / "root"
    make_synthetic_kth(root, persons=[1, 2, 3, 4], scenarios=[1, 2], actions=["walking", "boxing", "running"],
                       seconds=3.0, seed=2)
    out = tmp_path / "d.h5"
    partial = tmp_path / "d.h5.partial"
    proc = _run_cli(root, out, "--frames", "7", "--workers", "1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # wait until some videos are committed
        if partial.exists() and partial.stat().st_size > 1_500_000:  # about 3 videos: some committed
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make the data larger"
    # the whole job, workers included, as `kill -9` or Ctrl-C in a terminal would
    os.killpg(proc.pid, sig)
    proc.wait(timeout=30)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"rerun the same command" in proc.stderr.read()
    assert not out.exists() and partial.exists()
    with pytest.raises(DataError, match="incomplete"):
        CubeDataset(partial)
    with h5py.File(partial) as f:
        done = int(f.attrs["videos_committed"])
    assert 0 < done < 24
    proc = _run_cli(root, out, "--frames", "7")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert f"this run: {24 - done} videos" in stdout.decode()
    clean = tmp_path / "clean.h5"
    preprocess_folder(root, clean, frames=7, progress=False)
    with CubeDataset(out) as a, CubeDataset(clean) as b:
        assert len(a.videos) == len(b.videos) == 24 and len(a) == len(b)
        order_a = np.argsort([v["path"] for v in a.videos])
        order_b = np.argsort([v["path"] for v in b.videos])
        for va, vb in zip(order_a, order_b):
            ia, ib = np.flatnonzero(a.cube_video == va), np.flatnonzero(b.cube_video == vb)
            np.testing.assert_array_equal(a.read_cubes(ia), b.read_cubes(ib))


def test_errors(tmp_path, folder):
    with pytest.raises(DataError, match="not a folder"):
        preprocess_folder(tmp_path / "missing", tmp_path / "d.h5")
    with pytest.raises(DataError, match=".h5"):
        preprocess_folder(folder, tmp_path / "d.txt")
    with pytest.raises(DataError, match="frames must be"):
        preprocess_folder(folder, tmp_path / "d.h5", frames=1)
    with pytest.raises(DataError, match="fewer than"):
        clip_cubes(next((folder / "walking").iterdir()), {"frames": 40, "width": 80, "height": 60, "stride": 1,
                                                          "flow": {"params": None},
                                                          "flow_storage": {"units_per_pixel": 16}})
