"""From-scratch neural-network layers, losses and optimizers on numpy / CuPy.

See ``actionrec.nn.base`` for the layer contract. Importing this package registers every layer type,
so saved models can be rebuilt by name.
"""

from actionrec.nn.base import LAYER_TYPES, Layer, build_layer, register_layer  # noqa: F401
from actionrec.nn.conv import Conv2D, Conv3D, SegmentConv3D  # noqa: F401
from actionrec.nn.layers import Dense, Dropout, Flatten, ReLU, Tanh  # noqa: F401
from actionrec.nn.losses import SoftmaxCrossEntropy, log_softmax, softmax  # noqa: F401
from actionrec.nn.normalization import BatchNorm  # noqa: F401
from actionrec.nn.optim import (  # noqa: F401
    SGD,
    Adam,
    ConstantLR,
    CosineLR,
    RMSProp,
    StepLR,
    make_optimizer,
    make_schedule,
)
from actionrec.nn.pool import AvgPool2D, AvgPool3D, MaxPool2D, MaxPool3D, Subsampling  # noqa: F401
from actionrec.nn.sequential import Sequential  # noqa: F401
