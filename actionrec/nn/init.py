"""Seeded weight initialisation (LeCun, Xavier/Glorot, He), drawn on numpy so runs are reproducible
on any device; layers move the result to their device afterwards.

``fan_in`` is (input channels per group) x (kernel volume); ``fan_out`` is (output channels) x (kernel
volume) / groups, as in the usual definitions.
"""

from __future__ import annotations

import numpy as np

INITIALIZERS = ("lecun", "xavier", "he", "zeros")


def _rng(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def initial_weights(shape, fan_in: int, fan_out: int, method: str = "lecun", rng=None, dtype=np.float32):
    """Return a numpy array of ``shape`` drawn by ``method``.

    - ``lecun``: uniform on +-sqrt(3 / fan_in) (variance 1/fan_in; LeCun 1998, suited to tanh)
    - ``xavier``: uniform on +-sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)
    - ``he``: normal with std sqrt(2 / fan_in) (He et al. 2015, suited to ReLU)
    - ``zeros``: all zeros
    """
    g = _rng(rng)
    if method == "lecun":
        limit = np.sqrt(3.0 / fan_in)
        w = g.uniform(-limit, limit, size=shape)
    elif method == "xavier":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = g.uniform(-limit, limit, size=shape)
    elif method == "he":
        w = g.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    elif method == "zeros":
        w = np.zeros(shape)
    else:
        raise ValueError(f"unknown initialisation {method!r}: use one of {', '.join(INITIALIZERS)}")
    return w.astype(dtype)
