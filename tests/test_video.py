"""Video decoding: real KTH clips, broken files give one-line DataErrors."""

import numpy as np
import pytest

from actionrec.errors import DataError
from actionrec.video import list_videos, parse_size, read_gray_frames
from conftest import shared_path


@pytest.mark.parametrize("size", [(80, 60), (60, 40)])
def test_read_real_kth_clip(size):
    path = shared_path("kth", "boxing", "person01_boxing_d1_uncomp.avi")
    frames = read_gray_frames(path, size=size, max_frames=30)
    assert frames.shape == (30, size[1], size[0]) and frames.dtype == np.uint8
    assert frames.std() > 5  # real content, not a blank frame
    assert np.abs(np.diff(frames.astype(int), axis=0)).mean() > 0.1  # it moves


def test_list_real_kth_folder():
    files = list_videos(shared_path("kth"))
    assert len(files) == 54 and all(p.suffix == ".avi" for p in files)


@pytest.mark.parametrize("content,cause", [(b"", "empty file"), (b"hello world, not a video" * 10, "not a video"),
                                          (b"RIFF\x00\x00\x00\x00AVI LIST" + b"\x00" * 100, "cannot open|no decodable")])
def test_broken_files_raise_data_error(tmp_path, content, cause):
    p = tmp_path / "walking" / "bad.avi"
    p.parent.mkdir()
    p.write_bytes(content)
    with pytest.raises(DataError, match=cause) as err:
        read_gray_frames(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_gray_frames(tmp_path / "nope.avi")


def test_parse_size():
    assert parse_size("80x60") == (80, 60)
    with pytest.raises(ValueError):
        parse_size("80")
