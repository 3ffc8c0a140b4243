"""The models / train / evaluate / classify commands, including their error paths (one line, exit 2)."""

from __future__ import annotations

import json

from train_fixtures import tiny_data, tiny_model  # noqa: F401

from actionrec.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actionrec: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_models_lists_architectures_with_shapes_and_counts(capsys):
    code, out, _ = run(capsys, "models", "--classes", "3")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("ji-trecvid"))
    assert "1x33x60x40" in line and "295,458" in line
    assert any(line.startswith("ji-kth") and "1x43x60x80" in line for line in out.splitlines())


def test_models_summary_prints_the_layer_table(capsys):
    code, out, _ = run(capsys, "models", "--summary", "ji-trecvid", "--classes", "3")
    assert code == 0
    assert "295,458" in out and "C6" in out and "289,536" in out
    code, _, err = run(capsys, "models", "--summary", "ji-nothing")
    assert_one_line_error(code, err, "ji-nothing")


def test_train_then_resume_then_evaluate_and_classify(tiny_data, tmp_path, capsys):
    out = tmp_path / "m" / "net.h5"
    common = ["train", tiny_data, "--model", "ji-small", "--out", out, "--train-persons", "1,2",
              "--validation-persons", "3", "--batch-size", "16", "--optimizer", "adam", "--balance", "--quiet"]
    code, stdout, _ = run(capsys, *common, "--epochs", "1")
    assert code == 0 and str(out) in stdout
    for suffix in (".h5", ".ckpt.h5", ".history.csv", ".history.json", ".curves.png"):
        assert (tmp_path / "m" / f"net{suffix}").exists(), suffix
    code, _, _ = run(capsys, *common, "--epochs", "2", "--resume")
    assert code == 0
    history = json.loads((tmp_path / "m" / "net.history.json").read_text())["history"]
    assert history["epoch"] == [1, 2]

    report_path = tmp_path / "report.json"
    code, stdout, _ = run(capsys, "evaluate", out, tiny_data, "--split", "validation", "--json", report_path,
                          "--plot", tmp_path / "confusion.png")
    assert code == 0 and "video-level" in stdout
    report = json.loads(report_path.read_text())
    assert report["video"]["count"] == 6 and len(report["cube"]["confusion_matrix"]) == 6
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    clip = sorted((tiny_data.parent / "clips" / "boxing").glob("*"))[0]
    code, stdout, _ = run(capsys, "classify", out, clip, "--json")
    assert code == 0
    result = json.loads(stdout)
    assert result["clip"] == str(clip) and result["windows"]


def test_train_error_paths(tiny_data, tmp_path, capsys):
    code, _, err = run(capsys, "train", tmp_path / "absent.h5", "--out", tmp_path / "x.h5")
    assert_one_line_error(code, err, "absent.h5")
    code, _, err = run(capsys, "train", tiny_data, "--model", "ji-kth", "--out", tmp_path / "x.h5")
    assert_one_line_error(code, err, "ji-kth", "(1, 43, 60, 80)", "(1, 33, 30, 40)")
    code, _, err = run(capsys, "train", tiny_data, "--model", "ji-small", "--out", tmp_path / "y.h5", "--resume")
    assert_one_line_error(code, err, "--resume", "y.ckpt.h5")
    code, _, err = run(capsys, "train", tiny_data, "--model", "ji-small", "--out", tmp_path / "z.txt")
    assert_one_line_error(code, err, ".h5")
    code, _, err = run(capsys, "train", tiny_data, "--model", "ji-small", "--out", tmp_path / "w.h5",
                       "--device", "tpu")
    assert_one_line_error(code, err, "tpu")


def test_evaluate_and_classify_error_paths(tiny_data, tiny_model, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", tmp_path / "none.h5", tiny_data)
    assert_one_line_error(code, err, "none.h5")
    code, _, err = run(capsys, "evaluate", tiny_model, tmp_path / "nodata.h5")
    assert_one_line_error(code, err, "nodata.h5")
    code, _, err = run(capsys, "classify", tiny_model, tmp_path / "missing.avi")
    assert_one_line_error(code, err, "missing.avi")
    code, _, err = run(capsys, "classify", tiny_data, tmp_path / "missing.avi")  # a dataset, not a model
    assert_one_line_error(code, err, "cubes.h5")
