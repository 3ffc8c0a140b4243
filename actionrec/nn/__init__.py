"""From-scratch neural-network layers, losses and optimizers on numpy / CuPy.

See ``actionrec.nn.base`` for the layer contract.
"""

from actionrec.nn.base import LAYER_TYPES, Layer, build_layer, register_layer  # noqa: F401
