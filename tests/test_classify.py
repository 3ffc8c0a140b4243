"""Classifying clips: the JSON schema, sliding windows, annotation, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from train_fixtures import tiny_data, tiny_model  # noqa: F401

from actionrec.classify import annotate_clip, classify_clip, format_result
from actionrec.errors import ActionrecError
from actionrec.evaluation import load_model_file


def a_clip(tiny_data, action="walking"):
    return sorted((tiny_data.parent / "clips" / action).glob("person03_*"))[0]


def write_clip(path, frames, size=(160, 120)):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 20 * i % 255, dtype=np.uint8))
    writer.release()
    return path


def test_classify_returns_the_documented_schema(tiny_data, tiny_model):
    model = load_model_file(tiny_model)
    clip = a_clip(tiny_data)
    result = classify_clip(model, clip)
    assert set(result) == {"clip", "label", "probabilities", "windows"}
    classes = model.metadata["classes"]
    assert list(result["probabilities"]) == classes
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    windows = result["windows"]
    assert len(windows) >= 2
    for w in windows:
        assert set(w) == {"start_frame", "end_frame", "label", "probabilities"}
        assert w["end_frame"] - w["start_frame"] == 7 - 1
        assert sum(w["probabilities"].values()) == pytest.approx(1.0)
    starts = [w["start_frame"] for w in windows]
    assert starts == list(range(0, starts[-1] + 1, model.metadata["preprocessing"]["stride"]))
    mean = np.mean([[w["probabilities"][c] for c in classes] for w in windows], axis=0)
    np.testing.assert_allclose([result["probabilities"][c] for c in classes], mean, rtol=1e-6)
    assert result["label"] in format_result(result)


def test_stride_changes_the_windows(tiny_data, tiny_model):
    model = load_model_file(tiny_model)
    result = classify_clip(model, a_clip(tiny_data), stride=1)
    assert [w["start_frame"] for w in result["windows"]][:3] == [0, 1, 2]


def test_annotate_writes_every_frame(tiny_data, tiny_model, tmp_path):
    import cv2

    model = load_model_file(tiny_model)
    clip = a_clip(tiny_data)
    out = annotate_clip(classify_clip(model, clip), tmp_path / "out.mp4")
    cap_in, cap_out = cv2.VideoCapture(str(clip)), cv2.VideoCapture(str(out))
    assert int(cap_out.get(cv2.CAP_PROP_FRAME_COUNT)) == int(cap_in.get(cv2.CAP_PROP_FRAME_COUNT))
    assert not list(tmp_path.glob("*.tmp-*"))


def test_too_short_and_unreadable_clips_are_clear_errors(tiny_model, tmp_path):
    model = load_model_file(tiny_model)
    short = write_clip(tmp_path / "short.avi", frames=4)
    with pytest.raises(ActionrecError, match="short.avi"):
        classify_clip(model, short)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video")
    with pytest.raises(ActionrecError, match="junk.avi"):
        classify_clip(model, junk)
    with pytest.raises(ActionrecError, match="missing.avi"):
        classify_clip(model, tmp_path / "missing.avi")


def test_models_without_video_preprocessing_or_of_another_size_are_refused(tiny_data, tiny_model):
    model = load_model_file(tiny_model)
    model.metadata.pop("preprocessing")
    with pytest.raises(ActionrecError, match="no video preprocessing"):
        classify_clip(model, a_clip(tiny_data), model_path="m.h5")
    model = load_model_file(tiny_model)
    model.metadata["preprocessing"] = {"normalization": {"mean": [0.1], "std": [0.3]}}  # as 2D baselines store
    with pytest.raises(ActionrecError, match="no video preprocessing"):
        classify_clip(model, a_clip(tiny_data), model_path="m.h5")
    model = load_model_file(tiny_model)
    model.metadata["input_shape"] = [1, 43, 60, 80]
    with pytest.raises(ActionrecError, match="expects cubes of shape"):
        classify_clip(model, a_clip(tiny_data))
