"""``actionrec demo``: a tiny fast run of the whole pipeline, and the real one (slow) that must learn."""

from __future__ import annotations

import pytest

from actionrec.cli import main


def test_quick_demo_runs_the_whole_pipeline(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "d"), "--quick"]) == 0
    out = capsys.readouterr().out
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5", "video accuracy", "chance 0.167"):
        assert step in out, step
    for name in ("cubes.h5", "ji-small.h5", "ji-small.ckpt.h5", "ji-small.curves.png", "confusion.png"):
        assert (tmp_path / "d" / name).exists(), name


@pytest.mark.slow
def test_full_demo_learns_well_above_chance(tmp_path):
    from actionrec.demo import run_demo

    result = run_demo(tmp_path / "demo")
    assert result["video_accuracy"] >= 2.5 * result["chance"]
    assert result["accuracy"] >= 2 * result["chance"]
