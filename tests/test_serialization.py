"""HDF5 model files and nested state: round trips, the atomic-write guarantee, clear load errors."""

import json
import os

import h5py
import numpy as np
import pytest

from actionrec.errors import DataError, ShapeError
from actionrec.nn.layers import Dense, Dropout, Flatten, Tanh
from actionrec.nn.normalization import BatchNorm
from actionrec.nn.sequential import Sequential
from actionrec.nn.serialization import atomic_h5, load_model, read_state, write_state


def small_model(dtype="float32"):
    return Sequential([Flatten(), Dense(8, 5, rng=0, dtype=dtype), BatchNorm(5, dtype=dtype), Tanh(),
                       Dropout(0.3, seed=4), Dense(5, 3, bias_groups=2, rng=1, dtype=dtype)], name="toy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_round_trip(tmp_path, dtype, rng):
    model = small_model(dtype)
    model.forward(rng.standard_normal((6, 2, 4)).astype(dtype), training=True)  # non-trivial running stats
    for _, p, _ in model.named_parameters():
        p[...] = rng.standard_normal(p.shape)
    metadata = {"classes": ["boxing", "walking"], "preprocessing": {"frames": 7, "size": [60, 40]},
                "mean": np.arange(3.0), "note": None}
    path = tmp_path / "m.h5"
    model.save(path, metadata=metadata)
    loaded = Sequential.load(path)
    x = rng.standard_normal((4, 2, 4)).astype(dtype)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.name == "toy"
    assert [(type(a), a.config()) for a in loaded.layers] == [(type(b), b.config()) for b in model.layers]
    for (na, a), (nb, b) in zip(loaded.named_buffers(), model.named_buffers()):
        assert na == nb and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert loaded.metadata["classes"] == ["boxing", "walking"]
    assert loaded.metadata["preprocessing"] == {"frames": 7, "size": [60, 40]}
    assert loaded.metadata["note"] is None
    np.testing.assert_array_equal(loaded.metadata["mean"], np.arange(3.0))
    assert loaded.dtype == dtype


def test_file_layout(tmp_path):
    path = tmp_path / "m.h5"
    small_model().save(path)
    with h5py.File(path, "r") as f:
        g = f["model"]
        assert g.attrs["format"] == "actionrec-model" and g.attrs["format_version"] == 1
        arch = json.loads(g.attrs["architecture"])
        assert [a["type"] for a in arch] == ["Flatten", "Dense", "BatchNorm", "Tanh", "Dropout", "Dense"]
        assert set(g["batchnorm"]) == {"W", "b", "running_mean", "running_var"}
        assert g["dense_1"]["b"].shape == (3, 2) and g["dense"]["W"].dtype == np.float32


def test_state_round_trip(tmp_path):
    gen = np.random.default_rng(123)
    state = {"epoch": 3, "lr": 0.01, "name": "adam", "flag": True, "betas": (0.9, 0.999),
             "history": {"loss": [1.5, 1.0, 0.7]}, "rng": gen.bit_generator.state,
             "params": {"dense.W": {"m": np.ones((2, 3), np.float32), "step": np.int64(4)}}, "empty": {}}
    path = tmp_path / "s.h5"
    with atomic_h5(path) as f:
        write_state(f.create_group("state"), state)
    with h5py.File(path, "r") as f:
        back = read_state(f["state"])
    assert back["epoch"] == 3 and back["lr"] == 0.01 and back["name"] == "adam" and back["flag"] is True
    assert back["betas"] == [0.9, 0.999] and back["history"] == {"loss": [1.5, 1.0, 0.7]} and back["empty"] == {}
    assert back["params"]["dense.W"]["step"] == 4
    np.testing.assert_array_equal(back["params"]["dense.W"]["m"], np.ones((2, 3)))
    restored = np.random.default_rng()
    restored.bit_generator.state = back["rng"]
    assert restored.integers(1 << 30) == gen.integers(1 << 30)  # RNG resumes exactly


def test_state_rejects_unstorable(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        with pytest.raises(ValueError, match="without '/'"):
            write_state(f, {"a/b": 1})
        with pytest.raises(TypeError, match="cannot store 'x'"):
            write_state(f, {"x": object()})


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    path = tmp_path / "m.h5"
    model = small_model()
    model.save(path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_h5(path) as f:
            f.create_dataset("partial", data=np.zeros(1000))
            assert os.path.exists(f"{path}.tmp-{os.getpid()}")  # writing goes to the temp file
            raise RuntimeError("killed")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no temp file left
    Sequential.load(path)


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    path = tmp_path / "m.h5"
    small_model().save(path)
    with h5py.File(path, "r+") as f:
        arch = json.loads(f["model"].attrs["architecture"])
        arch[1]["config"]["out_features"] = 6
        arch[2]["config"]["num_features"] = 6
        f["model"].attrs["architecture"] = json.dumps(arch)
    with pytest.raises(ShapeError) as info:
        load_model(path)
    assert str(info.value) == (f"{path}: layer 'dense' parameter 'W' has shape (5, 8) in the file but the "
                               "architecture expects (6, 8)")


def test_not_a_model_errors(tmp_path):
    with pytest.raises(DataError, match="no such model file"):
        Sequential.load(tmp_path / "absent.h5")
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(DataError, match=f"{text}: not a readable HDF5 file"):
        Sequential.load(text)
    other = tmp_path / "cubes.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("cubes", data=np.zeros(3))
    with pytest.raises(DataError, match=f"{other}: not an actionrec model file"):
        Sequential.load(other)
    with h5py.File(other, "a") as f:
        f.create_group("model").attrs["format"] = "something-else"
    with pytest.raises(DataError, match="not an actionrec model file"):
        Sequential.load(other)


def test_unknown_layer_and_missing_weights(tmp_path):
    path = tmp_path / "m.h5"
    small_model().save(path)
    with h5py.File(path, "r+") as f:
        del f["model"]["batchnorm"]["running_var"]
    with pytest.raises(DataError, match="layer 'batchnorm' buffer 'running_var' is missing"):
        Sequential.load(path)
    with h5py.File(path, "r+") as f:
        f["model"].attrs["architecture"] = json.dumps([{"type": "Warp", "config": {}}])
    with pytest.raises(DataError, match="unknown layer type 'Warp'"):
        Sequential.load(path)
