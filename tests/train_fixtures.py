"""A tiny synthetic cube dataset and a model trained on it, built once per test session.

Imported by the train/evaluate/classify/CLI tests: 3 synthetic persons x 6 actions, preprocessed to
ji-small cubes (7 frames of 40x30), one epoch of training.
"""

from __future__ import annotations

import pytest

_CACHE: dict = {}
PERSONS = {"train": [1, 2], "validation": [3], "test": [3]}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Path of the cube dataset; ``clips`` folder next to it."""
    if "data" not in _CACHE:
        from actionrec.preprocess import preprocess_folder
        from actionrec.synth import make_synthetic_kth

        root = tmp_path_factory.mktemp("tiny")
        make_synthetic_kth(root / "clips", persons=[1, 2, 3], scenarios=[1], seconds=1.2, seed=0)
        preprocess_folder(root / "clips", root / "cubes.h5", frames=7, size=(40, 30), stride=4, workers=1,
                          progress=False)
        _CACHE["data"] = root / "cubes.h5"
    return _CACHE["data"]


@pytest.fixture(scope="session")
def tiny_model(tiny_data):
    """Path of a ji-small model trained for one epoch on ``tiny_data``."""
    if "model" not in _CACHE:
        from actionrec.nn import Adam
        from actionrec.training import run_training

        out = tiny_data.parent / "model" / "ji-small.h5"
        run_training(tiny_data, model_name="ji-small", out=out, persons={"train": [1, 2], "validation": [3]},
                     epochs=1, batch_size=16, optimizer=Adam(lr=1e-3), patience=0, seed=0, progress=False)
        _CACHE["model"] = out
    return _CACHE["model"]
