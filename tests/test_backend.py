import numpy as np
import pytest

from actionrec import backend
from actionrec.errors import DeviceError


def test_numpy_arrays_use_numpy():
    assert backend.get_array_module(np.zeros(3)) is np
    assert backend.get_array_module(np.zeros(3), None) is np


def test_cpu_is_default(monkeypatch):
    monkeypatch.delenv("ACTIONREC_DEVICE", raising=False)
    assert backend.resolve_device(None) == "cpu"
    monkeypatch.setenv("ACTIONREC_DEVICE", "CPU")
    assert backend.resolve_device(None) == "cpu"


def test_unknown_device_is_a_one_line_error():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        backend.resolve_device("tpu")


def test_gpu_without_cuda_says_why(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: (False, "CuPy is not installed"))
    with pytest.raises(DeviceError) as info:
        backend.resolve_device("gpu")
    msg = str(info.value)
    assert "CuPy is not installed" in msg and "\n" not in msg and "--device cpu" in msg


def test_to_numpy_roundtrip():
    a = np.arange(4.0)
    assert backend.to_numpy(a) is a
    assert backend.to_device(a, np) is a
