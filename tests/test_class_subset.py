"""Training and evaluating on a subset of a dataset's classes (``--classes walking,running``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import tiny_data  # noqa: F401

from actionrec.cli import main
from actionrec.datasets.cubes import CubeDataset
from actionrec.datasets.sources import CubeSource
from actionrec.errors import ActionrecError, DataError
from actionrec.evaluation import check_compatible, load_model_file


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_select_keeps_only_the_named_classes_and_relabels_in_the_given_order(tiny_data):
    with CubeDataset(tiny_data) as ds:
        subset = ["walking", "boxing"]  # deliberately not in sorted order
        idx = ds.select("all", classes=subset)
        assert set(ds.cube_label[idx]) == {ds.classes.index("walking"), ds.classes.index("boxing")}
        assert len(idx) == sum((ds.cube_label == ds.classes.index(c)).sum() for c in subset)
        source = CubeSource(ds, idx, classes=subset)
        walking = ds.cube_label[idx] == ds.classes.index("walking")
        assert source.classes == subset
        np.testing.assert_array_equal(source.labels, np.where(walking, 0, 1))
        _, y = source.batch(np.arange(min(4, len(source))))
        np.testing.assert_array_equal(y, source.labels[:len(y)])
        # persons and classes combine
        train = ds.select("train", persons={"train": [1], "validation": [2]}, classes=subset)
        assert set(ds.cube_person[train]) == {1} and set(np.isin(ds.cube_label[train], ds.class_labels(subset))) == {True}


def test_unknown_single_and_unselected_classes_are_clear_errors(tiny_data):
    with CubeDataset(tiny_data) as ds:
        with pytest.raises(DataError, match="no class 'swimming'.*boxing"):
            ds.select("all", classes=["walking", "swimming"])
        with pytest.raises(DataError, match="at least two"):
            ds.class_labels(["walking"])
        with pytest.raises(DataError, match="outside walking, running"):
            CubeSource(ds, ds.select("all"), classes=["walking", "running"])


def test_cli_train_on_two_classes_then_evaluate_and_resume_guard(tiny_data, tmp_path, capsys):
    out = tmp_path / "two.h5"
    common = ["train", tiny_data, "--model", "ji-small", "--out", out, "--train-persons", "1,2",
              "--validation-persons", "3", "--batch-size", "16", "--optimizer", "adam", "--quiet",
              "--classes", "walking,running"]
    code, stdout, err = run(capsys, *common, "--epochs", "1")
    assert code == 0, err
    # no test persons in this split: the suggested next command evaluates the validation persons
    assert f"next: actionrec evaluate {out} {tiny_data} --split validation" in stdout
    model = load_model_file(out)
    assert model.metadata["classes"] == ["walking", "running"]
    assert model.layers[-1].params["W"].shape[0] == 2  # two outputs, not six

    report_path = tmp_path / "report.json"
    code, stdout, err = run(capsys, "evaluate", out, tiny_data, "--split", "validation", "--json", report_path)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["classes"] == ["walking", "running"]
    assert report["video"]["count"] == 2 and np.asarray(report["video"]["confusion_matrix"]).shape == (2, 2)

    # resuming with another class list would mix two different output layers
    code, _, err = run(capsys, *common[:-1], "walking,boxing", "--epochs", "2", "--resume")
    assert code == 2 and "classes" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage plus the reason, exit status 2
        run(capsys, *common[:-1], "walking", "--epochs", "1")
    assert exit_info.value.code == 2 and "name at least two classes" in capsys.readouterr().err


def test_a_subset_model_needs_its_classes_in_the_evaluation_data(tiny_data, tmp_path):
    with CubeDataset(tiny_data) as ds:
        class Model:
            metadata = {"classes": ["walking", "running"], "input_shape": list(ds.input_shape)}

        assert check_compatible(Model, "m.h5", ds, "d.h5") == ["walking", "running"]
        Model.metadata = {"classes": ["walking", "swimming"]}
        with pytest.raises(ActionrecError, match="no swimming"):
            check_compatible(Model, "m.h5", ds, "d.h5")
        Model.metadata = {"classes": list(ds.classes)}
        assert check_compatible(Model, "m.h5", ds, "d.h5") is None
