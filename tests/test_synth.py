"""Synthetic KTH-style clips: layout, format, determinism, motion differs between classes."""

import numpy as np
import pytest

from actionrec.datasets.kth import parse_name
from actionrec.errors import DataError
from actionrec.synth import ACTIONS, make_synthetic_kth
from actionrec.video import list_videos, read_gray_frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, make_synthetic_kth(out, persons=[1, 2], scenarios=[1, 2, 3, 4], seconds=1.2, seed=3)


def test_layout_and_names(clips):
    out, paths = clips
    assert len(paths) == 6 * 2 * 4
    assert sorted(paths) == list_videos(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(ACTIONS)
    for p in paths:
        m = parse_name(p)
        assert m["action"] == p.parent.name and p.name.endswith("_uncomp.avi")


def test_format_160x120_25fps(clips):
    import cv2

    cap = cv2.VideoCapture(str(clips[1][0]))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 120)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25)
    cap.release()
    assert read_gray_frames(clips[1][0], size=(160, 120)).shape == (30, 120, 160)


def test_deterministic(tmp_path, clips):
    again = make_synthetic_kth(tmp_path, persons=[2], scenarios=[3], actions=["running"], seconds=1.2, seed=3)
    ref = [p for p in clips[1] if p.name == again[0].name][0]
    np.testing.assert_array_equal(read_gray_frames(again[0], (160, 120)), read_gray_frames(ref, (160, 120)))
    other = make_synthetic_kth(tmp_path / "o", persons=[2], scenarios=[3], actions=["running"], seconds=1.2, seed=4)
    assert not np.array_equal(read_gray_frames(other[0], (160, 120)), read_gray_frames(ref, (160, 120)))


def _motion(path):
    frames = read_gray_frames(path, (160, 120)).astype(np.float32)
    return np.abs(np.diff(frames, axis=0)).mean()


def test_locomotion_speeds_ordered(clips):
    out, _ = clips
    energy = {a: np.mean([_motion(out / a / f"person{p:02d}_{a}_d1_uncomp.avi") for p in (1, 2)])
              for a in ("walking", "jogging", "running", "boxing")}
    assert energy["walking"] < energy["jogging"] < energy["running"]
    assert energy["boxing"] < energy["running"]


def test_same_appearance_distribution_for_all_classes(clips):
    """A person's clothing and size do not depend on the action: mean brightness of a still frame is
    as close between two actions of one person as within one action over time."""
    out, _ = clips
    means = {a: read_gray_frames(out / a / "person01_{}_d1_uncomp.avi".format(a), (160, 120))[0].mean()
             for a in ACTIONS}
    assert np.ptp(list(means.values())) < 25


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="scenarios"):
        make_synthetic_kth(tmp_path, scenarios=[5])
    with pytest.raises(DataError, match="unknown actions"):
        make_synthetic_kth(tmp_path, actions=["dancing"])


@pytest.mark.slow
def test_classes_separable_by_motion_not_by_one_frame(tmp_path):
    """A linear probe on pooled |flow| separates the classes on held-out persons; one grey frame does not."""
    from sklearn.linear_model import LogisticRegression

    from actionrec.datasets.cubes import CubeDataset
    from actionrec.preprocess import preprocess_folder

    make_synthetic_kth(tmp_path / "clips", seed=0)
    preprocess_folder(tmp_path / "clips", tmp_path / "d.h5", frames=9, progress=False)
    with CubeDataset(tmp_path / "d.h5") as d:
        x, y, person = d.read_cubes(np.arange(len(d)))[:, 0], d.cube_label, d.cube_person

    def pool(maps):
        n, c, h, w = maps.shape
        return maps.reshape(n, c, 6, h // 6, 8, w // 8).mean((3, 5)).reshape(n, -1)

    motion = np.concatenate([pool(np.abs(x[:, 27:35])), pool(np.abs(x[:, 35:43]))], 1)
    still = pool(x[:, :1])
    train, test = person <= 6, person > 6

    def accuracy(features):
        return LogisticRegression(max_iter=2000).fit(features[train], y[train]).score(features[test], y[test])

    assert accuracy(motion) > 0.5  # chance is 1/6
    assert accuracy(still) < 0.3


def test_one_background_per_person_and_scenario(clips):
    """As in KTH, a person's actions of one scenario share the place: the rows above the figure match
    between two actions of one person, and differ between persons."""
    out, _ = clips

    def top(person, action):
        return read_gray_frames(out / action / f"person{person:02d}_{action}_d1_uncomp.avi", (160, 120))[0, :6]

    same = np.abs(top(1, "boxing").astype(float) - top(1, "walking")).mean()
    other = np.abs(top(1, "boxing").astype(float) - top(2, "boxing")).mean()
    assert same < 5 < other


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_walkers_turn_round_inside_the_lane(direction):
    from actionrec.synth import _back_and_forth

    lo, hi = 10.0, 150.0
    steps = [_back_and_forth(80.0, direction * d, lo, hi) for d in np.arange(0.0, 600.0, 1.0)]
    xs = np.array([x for x, _ in steps])
    headings = np.array([h for _, h in steps])
    assert xs.min() >= lo and xs.max() <= hi
    assert set(headings) == {1.0, -1.0}
    # the heading is the direction the position actually moves in
    moves = np.sign(np.diff(xs))
    agree = moves == headings[1:]
    assert agree.mean() > 0.98  # all but the steps across a turn
