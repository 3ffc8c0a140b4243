"""Tanh followed by trainable subsampling (the Ji nets' C2 -> S3 and C4 -> S5) as one unit of a
``Sequential``'s backward.

Run as layers, the subsampling's backward writes dx, an array of the tanh's size (Ji-KTH's first maps:
26 MB at batch 32), spreading each output gradient over its window, and the tanh's backward then reads
it to multiply by 1 - y^2, which it computes into a third array. The unit computes 1 - y^2 first
(``Tanh.derivative``) and has the subsampling multiply its spread straight into it
(``Subsampling.backward_scaled``): one array of that size fewer written and read, and the same
numbers as the two layers (the same products, element by element). Forward is the two layers'
forwards unchanged.
"""

from __future__ import annotations


class TanhSubsampling:
    """``tanh`` then ``sub`` as one unit (not a layer: parameters and gradients stay in ``sub``).
    Backward falls back to the two layers where the windows do not tile the maps exactly (the dropped
    rows and columns get no gradient there) or y is not laid out in C order."""

    def __init__(self, tanh, sub):
        self.tanh, self.sub = tanh, sub

    def forward(self, x, training: bool = False):
        """x (N, *map_shape, H, W) -> sub(tanh(x)) (N, *map_shape, H // kh, W // kw)."""
        return self.sub.forward(self.tanh.forward(x, training=training), training=training)

    def backward(self, dy):
        """dy (N, *map_shape, H // kh, W // kw) -> dx (N, *map_shape, H, W); fills sub's grads."""
        y = self.tanh._y
        if not (self.sub.tiles_exactly() and y.flags.c_contiguous and dy.dtype == y.dtype):
            return self.tanh.backward(self.sub.backward(dy))
        return self.sub.backward_scaled(dy, self.tanh.derivative())
