"""Tanh followed by trainable subsampling (the Ji nets' C2 -> S3 and C4 -> S5) as one unit of a
``Sequential``, together with the segment convolution before them when there is one.

Run as layers, the subsampling's backward writes dx, an array of the tanh's size (Ji-KTH's first maps:
26 MB at batch 32), spreading each output gradient over its window, and the tanh's backward then reads
it to multiply by 1 - y^2, which it computes into a third array. The unit computes 1 - y^2 first
(``Tanh.derivative``) and has the subsampling multiply its spread straight into it
(``Subsampling.backward_scaled``): one array of that size fewer written and read. With the
convolution in the unit, its forward applies the tanh as it writes its output
(``SegmentConv3D.forward(..., activation=tanh)``), instead of the tanh reading that output and writing
another array. The same numbers as the layers either way (the same operations, element by element).
"""

from __future__ import annotations

from actionrec.backend import get_array_module


class TanhSubsampling:
    """``tanh`` then ``sub`` as one unit (not a layer: parameters and gradients stay in the layers),
    after ``conv`` (a ``SegmentConv3D``) when one is given. Backward falls back to the layers where the
    windows do not tile the maps exactly (the dropped rows and columns get no gradient there), y is
    not laid out in C order, or dy has another dtype."""

    def __init__(self, tanh, sub, conv=None):
        self.tanh, self.sub, self.conv = tanh, sub, conv

    def forward(self, x, training: bool = False):
        """x -> sub(tanh(conv(x))) (or sub(tanh(x)) without a convolution): (N, *map_shape, H // kh,
        W // kw) for the tanh's maps (N, *map_shape, H, W)."""
        if self.conv is None:
            y = self.tanh.forward(x, training=training)
        else:
            y = self.conv.forward(x, training=training, activation=get_array_module(x).tanh)
            self.tanh._y = y  # the tanh's output, as its own forward would have kept it
        return self.sub.forward(y, training=training)

    def backward(self, dy):
        """dy (N, *map_shape, H // kh, W // kw) -> dx for the unit's input (None when the convolution
        has no input gradient); fills the grads of sub (and conv)."""
        y = self.tanh._y
        if self.sub.scales_into(y) and dy.dtype == y.dtype:  # the derivative is laid out as y
            grad = self.sub.backward_scaled(dy, self.tanh.derivative())
        else:
            grad = self.tanh.backward(self.sub.backward(dy))
        return grad if self.conv is None else self.conv.backward(grad)
