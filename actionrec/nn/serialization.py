"""Models and training state in HDF5, written atomically, never pickled.

Layout (documented for users in docs/model-format.md)::

    /model                 attrs: format="actionrec-model", format_version=1, actionrec_version,
                                  name, architecture (JSON list of {"type", "config"})
    /model/<layer name>    one dataset per parameter and buffer ("W", "b", "running_mean", ...)
    /metadata              optional nested state (classes, preprocessing, ...) written by write_state

``write_state``/``read_state`` store a nested dict: sub-dicts become groups, arrays become datasets,
everything else (numbers, strings, booleans, None, lists of those) a JSON attribute.
"""

from __future__ import annotations

import contextlib
import json
import os

import h5py
import numpy as np

import actionrec
from actionrec.backend import to_numpy
from actionrec.errors import DataError, ShapeError
from actionrec.nn.base import build_layer

MODEL_FORMAT = "actionrec-model"
MODEL_FORMAT_VERSION = 1


# --- atomic writes ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary path ``<path>.tmp-<pid>`` in the same folder; on success it is fsynced and
    renamed over ``path`` (``os.replace`` is atomic), on error removed. A crash at any moment leaves
    either the previous file or the complete new one, never a partial file.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def _fsync_folder(folder):
    """Make the rename itself durable (not possible on every platform: ignored there)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_h5(path):
    """``with atomic_h5(path) as f:`` write into the open ``h5py.File`` f; see ``atomic_file``."""
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f
            f.flush()


# --- nested state -------------------------------------------------------------------------------
def _check_key(group, key):
    if not isinstance(key, str) or not key or "/" in key or key == ".":
        raise ValueError(f"cannot store key {key!r} in HDF5 group {group.name}: keys must be non-empty "
                         "strings without '/'")


def _jsonable(value):
    """Numpy/CuPy scalars and tuples to plain Python so json.dumps accepts them."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_state(group, state: dict):
    """Store the nested dict ``state`` in ``group`` (arrays as datasets, the rest as JSON attributes)."""
    for key, value in state.items():
        _check_key(group, key)
        if isinstance(value, dict):
            write_state(group.create_group(key), value)
        elif hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:  # numpy or cupy array
            group.create_dataset(key, data=to_numpy(value))
        else:
            try:
                group.attrs[key] = json.dumps(_jsonable(value))
            except TypeError:
                raise TypeError(f"cannot store {key!r} ({type(value).__name__}) in {group.name}: use "
                                "dicts, arrays, numbers, strings, booleans, None or lists of them") from None


def read_state(group) -> dict:
    """The nested dict written by ``write_state`` (arrays come back as numpy, tuples as lists)."""
    state = {key: json.loads(value) for key, value in group.attrs.items()}
    for key, item in group.items():
        state[key] = read_state(item) if isinstance(item, h5py.Group) else item[()]
    return state


# --- models -------------------------------------------------------------------------------------
def write_model(group, model):
    """Write ``model``'s architecture, parameters and buffers into the (empty) HDF5 ``group``."""
    group.attrs["format"] = MODEL_FORMAT
    group.attrs["format_version"] = MODEL_FORMAT_VERSION
    group.attrs["actionrec_version"] = actionrec.__version__
    group.attrs["name"] = model.name
    architecture = [{"type": type(layer).__name__, "config": layer.config()} for layer in model.layers]
    group.attrs["architecture"] = json.dumps(architecture)
    for layer in model.layers:
        layer_group = group.create_group(layer.name)
        for key, array in list(layer.params.items()) + list(layer.buffers.items()):
            layer_group.create_dataset(key, data=to_numpy(array))


def _filename(group) -> str:
    return group.file.filename


def read_model(group):
    """Rebuild the ``Sequential`` stored in ``group`` by ``write_model`` (numpy, stored dtype).

    Raises DataError for a group that is not an actionrec model, ShapeError when a stored array does
    not have the shape the architecture gives it; both name the file.
    """
    from actionrec.nn.sequential import Sequential

    fname = _filename(group)
    if group.attrs.get("format") != MODEL_FORMAT:
        raise DataError(f"{fname}: not an actionrec model file (group {group.name} has no "
                        f"format={MODEL_FORMAT!r} attribute)")
    version = int(group.attrs.get("format_version", 0))
    if version > MODEL_FORMAT_VERSION:
        raise DataError(f"{fname}: model format version {version} is newer than this actionrec reads "
                        f"({MODEL_FORMAT_VERSION}); upgrade actionrec")
    try:
        architecture = json.loads(group.attrs["architecture"])
        layers = [build_layer(spec["type"], spec["config"]) for spec in architecture]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{fname}: the model architecture cannot be rebuilt ({exc})") from None
    for layer in layers:
        if layer.name not in group:
            raise DataError(f"{fname}: layer {layer.name!r} has no weights in the file")
        stored = group[layer.name]
        for kind, arrays in (("parameter", layer.params), ("buffer", layer.buffers)):
            for key, expected in list(arrays.items()):
                if key not in stored:
                    raise DataError(f"{fname}: layer {layer.name!r} {kind} {key!r} is missing from the file")
                data = stored[key]
                if tuple(data.shape) != tuple(expected.shape):
                    raise ShapeError(f"{fname}: layer {layer.name!r} {kind} {key!r} has shape {tuple(data.shape)}"
                                     f" in the file but the architecture expects {tuple(expected.shape)}")
                arrays[key] = np.asarray(data[()])
    return Sequential(layers, name=group.attrs.get("name", None))


def _open_for_reading(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such model file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None


def save_model(path, model, metadata: dict | None = None):
    """Atomically write ``model`` (and nested ``metadata``) to the HDF5 file ``path``."""
    with atomic_h5(path) as f:
        write_model(f.create_group("model"), model)
        write_state(f.create_group("metadata"), metadata or {})


def load_model(path):
    """Read a model file written by ``save_model``; ``model.metadata`` holds its metadata."""
    with _open_for_reading(path) as f:
        if "model" not in f:
            raise DataError(f"{os.fspath(path)}: not an actionrec model file (no 'model' group)")
        model = read_model(f["model"])
        model.metadata = read_state(f["metadata"]) if "metadata" in f else {}
    return model
