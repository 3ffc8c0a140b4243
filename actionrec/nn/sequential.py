"""A chain of layers: forward in order, backward in reverse, plus the model-level conveniences
(parameter listing, summary table, batched prediction, device/dtype moves, saving and loading).
"""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module, to_device
from actionrec.errors import ShapeError
from actionrec.nn.conv import Conv2D, SegmentConv3D
from actionrec.nn.conv_pool import ConvMaxPool, ConvNormMaxPool
from actionrec.nn.layers import ReLU, Tanh
from actionrec.nn.normalization import BatchNorm, NormReLU
from actionrec.nn.pool import MaxPool2D, MaxPool3D, Subsampling
from actionrec.nn.tanh_subsampling import TanhSubsampling


class Sequential:
    """``Sequential(layers)``: ``y = model.forward(x, training)``, ``dx = model.backward(dy)``.

    Layer names are made unique on construction ("dense", "dense_1", ...) because they qualify
    parameter names ("dense_1.W") in optimizers and model files.
    """

    def __init__(self, layers, name: str | None = None):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        self.name = name or "sequential"
        self.metadata: dict = {}
        taken: set[str] = set()
        for layer in self.layers:
            base, candidate, k = layer.name, layer.name, 0
            while candidate in taken:
                k += 1
                candidate = f"{base}_{k}"
            layer.name = candidate
            taken.add(candidate)

    # --- computation ----------------------------------------------------------------------------
    def run_order(self) -> list:
        """The layers in the order forward runs them (backward runs the reverse): as listed, except that
        a ReLU directly followed by max pooling runs after the pooling.

        max over a window of relu(x) is relu of the max, and the gradient reaches the same element
        (the first maximum of x when it is positive, none otherwise), so outputs and gradients are
        the same numbers; the ReLU then reads and writes a quarter of the elements for a 2x2 pool.
        """
        order, layers, i = [], self.layers, 0
        while i < len(layers):
            if (type(layers[i]) is ReLU and i + 1 < len(layers)
                    and type(layers[i + 1]) in (MaxPool2D, MaxPool3D)):
                order += [layers[i + 1], layers[i]]
                i += 2
            else:
                order.append(layers[i])
                i += 1
        return order

    def _units(self) -> list:
        """``run_order`` with each first convolution (no input gradient) and the max pooling right after
        it as one ``ConvMaxPool`` unit, and each convolution, BatchNorm and max pooling in a row as one
        ``ConvNormMaxPool``: on the CPU the convolution then writes the pooling windows' taps as whole
        planes, which the pooling reads in long runs (``actionrec.nn.conv_pool``; the same results as
        the layers one by one, to rounding); and each Tanh followed by a Subsampling, with the
        SegmentConv3D before them if any, as one ``TanhSubsampling``, whose convolution applies the
        tanh as it writes its output and whose backward multiplies the spread gradient straight into
        1 - y^2 (the same numbers); and each BatchNorm followed by a ReLU as one ``NormReLU``, which
        normalises and clips each block of values in one visit and takes the ReLU's gradient inside
        BatchNorm's backward passes (the same numbers). Built once per model (the units keep their
        caches between forward and backward)."""
        order = self.run_order()
        key = tuple((id(layer), getattr(layer, "input_grad", None)) for layer in order)
        if getattr(self, "_unit_key", None) != key:
            units, i = [], 0
            while i < len(order):
                if (type(order[i]) is Conv2D and not order[i].input_grad and i + 1 < len(order)
                        and type(order[i + 1]) is MaxPool2D):
                    units.append(ConvMaxPool(order[i], order[i + 1]))
                    i += 2
                elif (type(order[i]) is Conv2D and i + 2 < len(order) and type(order[i + 1]) is BatchNorm
                        and type(order[i + 2]) is MaxPool2D):
                    units.append(ConvNormMaxPool(*order[i:i + 3]))
                    i += 3
                elif type(order[i]) is BatchNorm and i + 1 < len(order) and type(order[i + 1]) is ReLU:
                    units.append(NormReLU(*order[i:i + 2]))
                    i += 2
                elif (type(order[i]) is SegmentConv3D and i + 2 < len(order) and type(order[i + 1]) is Tanh
                        and type(order[i + 2]) is Subsampling):
                    units.append(TanhSubsampling(order[i + 1], order[i + 2], conv=order[i]))
                    i += 3
                elif type(order[i]) is Tanh and i + 1 < len(order) and type(order[i + 1]) is Subsampling:
                    units.append(TanhSubsampling(order[i], order[i + 1]))
                    i += 2
                else:
                    units.append(order[i])
                    i += 1
            self._unit_key, self._unit_list = key, units
        return self._unit_list

    def forward(self, x, training: bool = False):
        """x (N, *input_shape) -> logits (N, *output_shape) through every layer (``run_order``)."""
        for unit in self._units():
            x = unit.forward(x, training=training)
        return x

    __call__ = forward

    def backward(self, dy):
        """dy (N, *output_shape) -> dx (N, *input_shape), filling every layer's grads.

        A layer whose backward returns None (a first convolution with ``input_grad=False``) ends the
        chain: the layers before it get no gradient, and None is returned.
        """
        for unit in reversed(self._units()):
            dy = unit.backward(dy)
            if dy is None:
                return None
        return dy

    def predict(self, x, batch_size: int = 64):
        """x (N, *input_shape), numpy or cupy -> logits (N, K) in evaluation mode, on the model's device."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        xp = self.xp
        dtype = self.dtype or np.float32
        outputs = [self.forward(to_device(x[i:i + batch_size], xp).astype(dtype, copy=False), training=False)
                   for i in range(0, len(x), batch_size)]
        if not outputs:
            raise ShapeError("predict got an empty input")
        return xp.concatenate(outputs, axis=0)

    # --- parameters -----------------------------------------------------------------------------
    def named_parameters(self):
        """Yield (qualified_name, param, grad) for every parameter; grad is None before any backward."""
        for layer in self.layers:
            for key, param in layer.params.items():
                yield f"{layer.name}.{key}", param, layer.grads.get(key)

    def named_buffers(self):
        """Yield (qualified_name, buffer) for the non-trainable state (BatchNorm running statistics)."""
        for layer in self.layers:
            for key, buf in layer.buffers.items():
                yield f"{layer.name}.{key}", buf

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers)

    def zero_grads(self):
        for layer in self.layers:
            layer.zero_grads()

    @property
    def xp(self):
        """numpy or cupy: the module holding the parameters (numpy for a parameter-free model)."""
        for _, p, _ in self.named_parameters():
            return get_array_module(p)
        return np

    @property
    def dtype(self):
        for _, p, _ in self.named_parameters():
            return p.dtype
        return None

    def to(self, xp):
        """Move every parameter, gradient and buffer to ``xp`` (numpy or cupy); returns self."""
        for layer in self.layers:
            layer.to(xp)
        return self

    def astype(self, dtype):
        """Cast every parameter, gradient and buffer to ``dtype``; returns self."""
        for layer in self.layers:
            layer.astype(dtype)
        return self

    # --- description ----------------------------------------------------------------------------
    def summary(self, input_shape) -> str:
        """A text table (#, layer, type, output shape, params) for per-sample ``input_shape``, and the total.

        Shapes come from one evaluation forward of a batch of one zero sample.
        """
        xp = self.xp
        x = xp.zeros((1,) + tuple(input_shape), dtype=self.dtype or np.float32)
        rows = [("#", "layer", "type", "output shape", "params")]
        rows.append(("", "input", "", str(tuple(input_shape)), ""))
        for i, layer in enumerate(self.layers):
            try:
                x = layer.forward(x, training=False)
            except ShapeError as exc:
                raise ShapeError(f"summary for input shape {tuple(input_shape)}: {exc}") from None
            rows.append((str(i), layer.name, type(layer).__name__, str(tuple(x.shape[1:])),
                         f"{layer.num_parameters():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        align = ["<", "<", "<", "<", ">"]
        lines = ["  ".join(f"{v:{a}{w}}" for v, a, w in zip(r, align, widths)).rstrip() for r in rows]
        rule = "-" * len(max(lines, key=len))
        lines.insert(1, rule)
        lines += [rule, f"total parameters: {self.num_parameters():,}"]
        return "\n".join(lines)

    def __repr__(self):
        inner = ",\n".join(f"  {layer.name}: {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)"

    # --- files ----------------------------------------------------------------------------------
    def save(self, path, metadata: dict | None = None):
        """Write the model to an HDF5 file atomically (see docs/model-format.md).

        ``metadata`` (default: ``self.metadata``) is any nested dict of JSON values and arrays, e.g.
        class names and preprocessing parameters.
        """
        from actionrec.nn.serialization import save_model

        if metadata is not None:
            self.metadata = dict(metadata)
        save_model(path, self, self.metadata)

    @classmethod
    def load(cls, path) -> "Sequential":
        """Read a model written by ``save`` (on numpy, in the stored dtype), with its ``.metadata``."""
        from actionrec.nn.serialization import load_model

        return load_model(path)
