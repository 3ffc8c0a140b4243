"""Forward and backward parity with torch.nn.functional (a test oracle only; skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest

from actionrec.nn.conv import Conv2D, Conv3D
from actionrec.nn.pool import AvgPool2D, AvgPool3D, MaxPool2D, MaxPool3D

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_grads(fn, dy, *arrays):
    """Run ``fn`` on float64 torch leaves made from ``arrays``; return (output, grads) as numpy."""
    leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*leaves)
    out.backward(torch.tensor(dy))
    return out.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.parametrize("cls,x_shape,kernel,stride,padding,groups", [
    (Conv2D, (2, 4, 9, 8), (3, 2), (2, 1), (1, 0), 2),
    (Conv2D, (1, 3, 7, 7), 3, 1, 1, 3),
    (Conv2D, (3, 1, 6, 5), (2, 3), 2, 0, 1),
    (Conv3D, (2, 2, 7, 8, 6), (3, 2, 3), (2, 1, 2), (1, 1, 0), 2),
    (Conv3D, (1, 1, 9, 10, 12), (3, 7, 9), 1, 0, 1),
    (Conv3D, (2, 6, 5, 5, 5), 2, (1, 2, 1), (0, 1, 1), 3),
])
def test_conv_matches_torch(rng, cls, x_shape, kernel, stride, padding, groups):
    layer = cls(x_shape[1], 2 * groups, kernel, stride=stride, padding=padding, groups=groups, rng=0,
                dtype="float64")
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    x = rng.standard_normal(x_shape)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    conv = F.conv2d if cls is Conv2D else F.conv3d
    y_t, (dx_t, dW_t, db_t) = _torch_grads(
        lambda xt, wt, bt: conv(xt, wt, bt, stride=stride, padding=padding, groups=groups),
        dy, x, layer.params["W"], layer.params["b"])
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], dW_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], db_t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls,torch_fn,x_shape,kernel,stride", [
    (MaxPool2D, F.max_pool2d, (2, 3, 9, 8), 2, None),
    (MaxPool2D, F.max_pool2d, (2, 3, 9, 8), 3, 2),
    (AvgPool2D, F.avg_pool2d, (2, 3, 9, 8), (2, 3), (1, 2)),
    (MaxPool3D, F.max_pool3d, (1, 2, 7, 9, 8), (1, 2, 2), None),
    (MaxPool3D, F.max_pool3d, (1, 2, 7, 9, 8), 3, (2, 1, 2)),
    (AvgPool3D, F.avg_pool3d, (1, 2, 7, 9, 8), (2, 3, 3), None),
])
def test_pool_matches_torch(rng, cls, torch_fn, x_shape, kernel, stride):
    layer = cls(kernel, stride)
    x = rng.standard_normal(x_shape)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    y_t, (dx_t,) = _torch_grads(lambda xt: torch_fn(xt, kernel, stride), dy, x)
    np.testing.assert_allclose(y, y_t, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)
