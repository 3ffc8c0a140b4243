"""Evaluation: video-level averaging, top-k, scikit-learn metrics, tables, compatibility checks."""

from __future__ import annotations

import numpy as np
import pytest
from train_fixtures import tiny_data, tiny_model  # noqa: F401

from actionrec.errors import ActionrecError, DataError
from actionrec.evaluation import (check_compatible, evaluate_source, format_report, level_report, load_model_file,
                                  softmax, top_k_accuracy, video_probabilities)


@pytest.mark.parametrize("n,k", [(1, 2), (7, 3), (20, 6)])
def test_video_probabilities_are_means_of_their_cubes(n, k):
    rng = np.random.default_rng(n)
    probs = softmax(rng.standard_normal((n, k)))
    videos = rng.integers(0, 4, n) * 10  # ids need not be contiguous
    labels = videos // 10 % k
    vprobs, vlabels, ids = video_probabilities(probs, labels, videos)
    for row, vid in enumerate(ids):  # plain-loop reference
        np.testing.assert_allclose(vprobs[row], probs[videos == vid].mean(axis=0))
        assert vlabels[row] == labels[videos == vid][0]


def test_top_k_accuracy_against_a_loop():
    rng = np.random.default_rng(1)
    probs = rng.random((50, 5))
    labels = rng.integers(0, 5, 50)
    for k in (1, 2, 5, 9):
        expected = np.mean([labels[i] in np.argsort(-probs[i])[:k] for i in range(50)])
        assert top_k_accuracy(probs, labels, k) == pytest.approx(expected)


def test_level_report_metrics():
    classes = ["a", "b", "c"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    report = level_report(np.eye(3)[pred], labels, classes)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a = report["per_class"][0]
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(0.5), pytest.approx(0.5), 2)
    assert report["per_class"][1]["precision"] == pytest.approx(2 / 3)
    text = format_report({"classes": classes, "cube": report})
    assert "cube-level: 6 cubes, accuracy 0.667" in text and "confusion matrix" in text


def test_evaluate_a_trained_model(tiny_data, tiny_model):
    from actionrec.datasets.cubes import CubeDataset
    from actionrec.datasets.sources import CubeSource

    model = load_model_file(tiny_model)
    with CubeDataset(tiny_data) as ds:
        check_compatible(model, tiny_model, ds, tiny_data)
        idx = ds.select("test", persons={"train": [1, 2], "test": [3]})
        report = evaluate_source(model, CubeSource(ds, idx), ds.classes)
        assert report["cube"]["count"] == len(idx)
        assert report["video"]["count"] == len(np.unique(ds.cube_video[idx])) == 6
        assert np.sum(report["video"]["confusion_matrix"]) == 6
        assert set(report["cube"]["top_k"]) == {"1", "3"}


def test_missing_or_foreign_model_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_model_file(tmp_path / "nope.h5")
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("not hdf5")
    with pytest.raises(ActionrecError, match="bogus.h5"):
        load_model_file(bogus)


def test_a_model_of_another_input_size_is_refused(tiny_data, tiny_model):
    from actionrec.datasets.cubes import CubeDataset

    model = load_model_file(tiny_model)
    model.metadata["input_shape"] = [1, 43, 60, 80]
    with CubeDataset(tiny_data) as ds, pytest.raises(ActionrecError, match="expects inputs of shape"):
        check_compatible(model, tiny_model, ds, tiny_data)
    model = load_model_file(tiny_model)
    model.metadata["classes"] = ["x", "y"]
    with CubeDataset(tiny_data) as ds, pytest.raises(ActionrecError, match="trained on classes"):
        check_compatible(model, tiny_model, ds, tiny_data)
