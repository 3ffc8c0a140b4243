"""One code path for numpy and CuPy.

Layers never import cupy: they ask ``get_array_module(x)`` for the module that owns their input and
call it ``xp``. The device is chosen once (``--device cpu|gpu`` or ``ACTIONREC_DEVICE``) and weights
move between devices with ``to_device``; everything saved to disk is numpy.
"""

from __future__ import annotations

import os

import numpy as np

from actionrec.errors import DeviceError

_cupy = None
_cupy_checked = False


def _import_cupy():
    """Import CuPy lazily (it is an optional extra); return the module or None."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: PLC0415

            _cupy = cupy
        except Exception:  # ImportError, or a CUDA library that fails to load
            _cupy = None
    return _cupy


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    cp = _cupy if _cupy_checked else None
    if cp is None:
        # Only look for cupy if some argument is not a numpy array (cheap fast path on CPU).
        if all(isinstance(a, (np.ndarray, np.generic, float, int)) or a is None for a in arrays):
            return np
        cp = _import_cupy()
        if cp is None:
            return np
    for a in arrays:
        if isinstance(a, cp.ndarray):
            return cp
    return np


def gpu_available() -> tuple[bool, str]:
    """Return (available, reason). ``reason`` says why not, in one line."""
    cp = _import_cupy()
    if cp is None:
        return False, "CuPy is not installed (pip install 'actionrec[gpu]', see the README for other CUDA versions)"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device
        return False, f"CuPy found no usable CUDA device ({str(exc).splitlines()[0]})"
    if n < 1:
        return False, "CuPy found no CUDA device"
    return True, ""


def resolve_device(name: str | None = None) -> str:
    """Return ``'cpu'`` or ``'gpu'`` from ``name`` or ``$ACTIONREC_DEVICE`` (default cpu).

    Raises DeviceError with a one-line reason when the GPU is asked for but not usable.
    """
    if name is None:
        name = os.environ.get("ACTIONREC_DEVICE", "cpu")
    name = str(name).strip().lower()
    if name in ("cuda", "gpu"):
        ok, why = gpu_available()
        if not ok:
            raise DeviceError(f"--device gpu was requested but {why}; use --device cpu")
        return "gpu"
    if name == "cpu":
        return "cpu"
    raise DeviceError(f"unknown device {name!r}: use 'cpu' or 'gpu'")


def array_module_for(device: str):
    """The array module (numpy or cupy) for a resolved device name."""
    if resolve_device(device) == "gpu":
        return _import_cupy()
    return np


def to_device(array, xp):
    """Return ``array`` as an array of module ``xp`` (numpy or cupy), copying only if needed."""
    if xp is np:
        return to_numpy(array)
    return xp.asarray(array)


def to_numpy(array):
    """Return ``array`` as a numpy array (from numpy, CuPy or a scalar)."""
    if isinstance(array, np.ndarray):
        return array
    get = getattr(array, "get", None)
    if get is not None:  # cupy.ndarray
        return get()
    return np.asarray(array)
