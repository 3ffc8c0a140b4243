"""Shared by the tests of Sequential's fused units (``test_conv_pool``, ``test_tanh_subsampling``)."""

from __future__ import annotations

import numpy as np


def units_and_layers(fused, plain, x, mean: bool = False):
    """One training forward and backward (dy = 1, or 1 / its size with ``mean``) through ``fused``
    (its units) and through ``plain`` with its layers run one by one: [(logits, [parameter
    gradients]) for fused, for plain]."""
    plain._units = plain.run_order  # the layers one by one
    outs = []
    for model in (fused, plain):
        y = model.forward(x, training=True)
        model.backward(np.ones_like(y) / (y.size if mean else 1))
        outs.append((y, [g.copy() for _, _, g in model.named_parameters()]))
    return outs
