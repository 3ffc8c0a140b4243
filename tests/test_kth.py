"""KTH names, the official 00sequences.txt with its quirks, and person splits."""

import pytest

from actionrec.datasets.kth import absent_persons, merge_ranges, parse_name, read_sequences, split_persons
from actionrec.errors import DataError
from actionrec.video import list_videos
from conftest import shared_path


def test_parse_real_names():
    files = list_videos(shared_path("kth"))
    meta = [parse_name(p) for p in files]
    assert all(m["action"] == p.parent.name for m, p in zip(meta, files))
    assert {m["person"] for m in meta} == {1, 11, 12, 13, 14, 19, 20}
    assert {m["scenario"] for m in meta} == {1, 2, 3, 4}
    assert parse_name("x/person05_handclapping_d3_uncomp.avi") == {
        "person": 5, "action": "handclapping", "scenario": 3, "name": "person05_handclapping_d3"}


def test_bad_name():
    with pytest.raises(DataError, match="KTH pattern"):
        parse_name("walking/clip.avi")


def test_real_sequences_file():
    seq = read_sequences(shared_path("kth", "00sequences.txt"))
    assert len(seq) == 600  # 599 videos + the *missing* entry
    assert seq["person13_handclapping_d3"] == []
    assert sum(len(v) for v in seq.values()) <= 2391
    assert seq["person01_boxing_d1"] == [(0, 95), (95, 185), (185, 245), (245, 360)]  # 1-based inclusive
    assert seq["person11_boxing_d4"] == [(0, 106), (106, 194), (194, 250)]  # spaces+tabs, 3 ranges
    for ranges in seq.values():
        assert all(a < b for a, b in ranges)
        assert all(r1[1] <= r2[0] for r1, r2 in zip(ranges, ranges[1:]))  # sorted, no overlap


def test_sequences_quirks(tmp_path):
    p = tmp_path / "seq.txt"
    p.write_bytes(b"header text\r\nTraining: person11, 12\r\n"
                  b"person02_running_d1 \t\tframes\t 50-80,1-20, 10-30\r\n"
                  b"person03_running_d2\t*missing*\r\n")
    seq = read_sequences(p)
    assert seq == {"person02_running_d1": [(0, 30), (49, 80)], "person03_running_d2": []}


def test_sequences_not_kth(tmp_path):
    p = tmp_path / "seq.txt"
    p.write_text("nothing here\n")
    with pytest.raises(DataError, match="00sequences"):
        read_sequences(p)


def test_merge_ranges():
    assert merge_ranges([(5, 9), (0, 3), (2, 4), (9, 12)]) == [(0, 4), (5, 9), (9, 12)]


def test_official_split():
    s = split_persons("official")
    assert s["train"] == list(range(11, 19))
    assert s["validation"] == [1, 4, 19, 20, 21, 23, 24, 25]
    assert s["test"] == [2, 3, 5, 6, 7, 8, 9, 10, 22]


@pytest.mark.parametrize("trial", range(5))
def test_ji_split_disjoint_and_seeded(trial):
    s = split_persons("ji", trial=trial)
    assert len(s["train"]) + len(s["validation"]) == 16 and len(s["test"]) == 9
    assert len(s["validation"]) == 3
    assert sorted(s["train"] + s["validation"] + s["test"]) == list(range(1, 26))
    assert s == split_persons("ji", trial=trial)
    if trial:
        assert s != split_persons("ji", trial=0)


def test_explicit_split_and_errors():
    s = split_persons(persons={"train": [3, 1], "test": [2]})
    assert s == {"train": [1, 3], "validation": [], "test": [2]}
    with pytest.raises(DataError, match="one part only"):
        split_persons(persons={"train": [1], "test": [1]})
    with pytest.raises(DataError, match="unknown split"):
        split_persons("random")


def test_absent_persons_on_real_folder():
    present = {parse_name(p)["person"] for p in list_videos(shared_path("kth"))}
    absent = absent_persons(split_persons("official"), present)
    assert absent["train"] == [15, 16, 17, 18] and 1 not in absent["validation"]
