"""The contract every layer honours.

``y = layer.forward(x, training=...)`` caches what ``backward`` needs; ``dx = layer.backward(dy)``
fills ``layer.grads`` (same keys and shapes as ``layer.params``) and returns the gradient for the input.
Parameters are updated in place by optimizers, so their array identity never changes during training.
Non-trainable state (running statistics) lives in ``layer.buffers`` and is saved with the model.
``layer.config()`` returns the JSON-serialisable constructor arguments, so a saved model's architecture
can be rebuilt with ``build_layer(type_name, config)`` without pickle.
"""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module, to_device

LAYER_TYPES: dict[str, type] = {}


def register_layer(cls):
    """Class decorator: make a layer type rebuildable from its name (used when loading HDF5 models)."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


def build_layer(type_name: str, config: dict):
    """Instantiate a registered layer type from its ``config()`` dictionary."""
    try:
        cls = LAYER_TYPES[type_name]
    except KeyError:
        known = ", ".join(sorted(LAYER_TYPES))
        raise ValueError(f"unknown layer type {type_name!r} (known: {known})") from None
    return cls(**config)


class Layer:
    """Base class: no parameters, identity ``config``; subclasses override forward/backward."""

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__.lower()
        self.params: dict = {}
        self.grads: dict = {}
        # Non-trainable state saved with the model (BatchNorm running statistics).
        self.buffers: dict = {}

    # --- contract -----------------------------------------------------------------------------
    def forward(self, x, training: bool = False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor arguments as JSON-serialisable values (no arrays)."""
        return {"name": self.name}

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of the output for an input of ``input_shape`` (batch dimension included)."""
        xp_dummy = np.zeros((1,) + tuple(input_shape[1:]), dtype=self.dtype or np.float32)
        return (input_shape[0],) + tuple(self.forward(xp_dummy, training=False).shape[1:])

    # --- helpers shared by all layers ---------------------------------------------------------
    @property
    def dtype(self):
        for p in self.params.values():
            return p.dtype
        return None

    @property
    def xp(self):
        """The array module holding this layer's parameters (numpy when it has none)."""
        for p in self.params.values():
            return get_array_module(p)
        return np

    def num_parameters(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def zero_grads(self):
        for k, p in self.params.items():
            xp = get_array_module(p)
            self.grads[k] = xp.zeros_like(p)

    def to(self, xp):
        """Move parameters (and gradients) to array module ``xp`` (numpy or cupy)."""
        self.params = {k: to_device(v, xp) for k, v in self.params.items()}
        self.grads = {k: to_device(v, xp) for k, v in self.grads.items()}
        self.buffers = {k: to_device(v, xp) for k, v in self.buffers.items()}
        return self

    def astype(self, dtype):
        """Cast parameters to ``dtype`` (float64 for gradient checks)."""
        self.params = {k: v.astype(dtype) for k, v in self.params.items()}
        self.grads = {k: v.astype(dtype) for k, v in self.grads.items()}
        self.buffers = {k: v.astype(dtype) for k, v in self.buffers.items()}
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"
