"""The 3D CNNs of Ji, Xu, Yang & Yu (TPAMI 2013), built from ``actionrec.nn`` layers.

Input (N, 1, 5f-2, H, W): the five hardwired channels of a cube of f frames stacked along time
(gray f, grad-x f, grad-y f, flow-x f-1, flow-y f-1; see ``CubeDataset.segments``). Every layer up to
C6 keeps the five channels apart, as in the paper:

    H1 -> C2 SegmentConv3D, 2 kernel sets -> S3 subsampling -> C4 SegmentConv3D, 3 kernels per set
       -> S5 subsampling -> C6 (a "convolution" whose kernel covers the whole map: a Dense layer
       over all maps, one bias per (feature, input map)) -> 128 features -> linear output (no bias)

Paper-faithful by default (tanh, trainable subsampling, per-channel kernels, no dropout). The modern
variants are options: ``activation="relu"``, ``pooling="max"``, ``kernels="shared"``, ``dropout=p``.
Shapes use (T, H, W) with H the image height: a "7x4" kernel in the paper's TRECVID text is (kh, kw) =
(7, 4); the KTH net's frames are 80 wide and 60 high, so its "9x7" kernel is (kh, kw) = (7, 9).
See docs/models.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actionrec.errors import ActionrecError
from actionrec.models import ModelSpec, register_model

ACTIVATIONS = ("tanh", "relu")
POOLINGS = ("subsampling", "max")
KERNELS = ("per-channel", "shared")


@dataclass(frozen=True)
class JiGeometry:
    """Everything that fixes a Ji-style net's shapes (the paper gives one per data set)."""

    frames: int          # f: frames per cube
    height: int          # H of the input maps
    width: int           # W of the input maps
    c2_kernel: tuple     # (kh, kw) of C2 (temporal extent is always 3)
    s3: int | tuple      # S3 window: k (k x k) or (kh, kw)
    c4_kernel: tuple     # (kh, kw) of C4
    s5: int | tuple      # S5 window
    c2_sets: int = 2     # kernel sets applied to each hardwired channel in C2
    c4_per_set: int = 3  # C4 kernels per C2 set
    features: int = 128  # C6 feature count
    temporal: int = 3    # temporal kernel extent of C2 and C4

    @property
    def segments(self) -> tuple:
        f = self.frames
        return (f, f, f, f - 1, f - 1)

    @property
    def input_shape(self) -> tuple:
        return (1, sum(self.segments), self.height, self.width)


TRECVID = JiGeometry(frames=7, height=60, width=40, c2_kernel=(7, 7), s3=2, c4_kernel=(7, 6), s5=3)
KTH = JiGeometry(frames=9, height=60, width=80, c2_kernel=(7, 9), s3=3, c4_kernel=(7, 7), s5=3)
# Not in the paper: the Ji architecture at a quarter of KTH's frame size (40x30) for the offline demo. S5
# pools the 10x14 C4 maps down to 2x2 and C6 has 32 features, so C6 has ~5k instead of ~175k weights: with
# a handful of training persons the full-size C6 memorises who is in the clip instead of how they move.
SMALL = JiGeometry(frames=7, height=30, width=40, c2_kernel=(5, 5), s3=2, c4_kernel=(4, 5), s5=(5, 7),
                   features=32)


def _window(k) -> tuple:
    return (int(k), int(k)) if np.isscalar(k) else (int(k[0]), int(k[1]))


def _check_choice(value, choices, option):
    if value not in choices:
        raise ActionrecError(f"{option}={value!r} is not supported: use one of {', '.join(choices)}")


def build_ji(geometry: JiGeometry, num_classes: int, *, activation: str = "tanh",
             pooling: str = "subsampling", kernels: str = "per-channel", dropout: float = 0.0,
             init: str | None = None, seed=0, dtype: str = "float32", name: str = "ji"):
    """A Sequential Ji net for ``geometry``; x (N, 1, 5f-2, H, W) -> logits (N, num_classes)."""
    from actionrec.nn import (Dense, Dropout, Flatten, MaxPool3D, ReLU, SegmentConv3D, Sequential,
                              Subsampling, Tanh)

    _check_choice(activation, ACTIVATIONS, "activation")
    _check_choice(pooling, POOLINGS, "pooling")
    _check_choice(kernels, KERNELS, "kernels")
    if not 0.0 <= float(dropout) < 1.0:
        raise ActionrecError(f"dropout={dropout!r} must be in [0, 1)")
    if int(num_classes) < 2:
        raise ActionrecError(f"a classifier needs at least 2 classes, got {num_classes}")
    g = geometry
    rng = np.random.default_rng(seed)
    init = init or ("he" if activation == "relu" else "lecun")
    shared = kernels == "shared"
    act = Tanh if activation == "tanh" else ReLU
    kt = g.temporal
    common = dict(init=init, rng=rng, dtype=dtype)

    def pool(k, channels, frames, lname):
        if pooling == "max":
            return [MaxPool3D((1,) + _window(k), name=lname)]
        # LeNet-style trainable subsampling is followed by a squashing function in the paper.
        return [Subsampling(k, map_shape=(channels, frames), name=lname, **common), act()]

    c2 = SegmentConv3D(g.segments, 1, g.c2_sets, (kt,) + tuple(g.c2_kernel), shared=shared,
                       input_grad=False, name="C2", **common)
    seg2 = tuple(c2.output_segments)
    c4_out = g.c2_sets * g.c4_per_set
    c4 = SegmentConv3D(seg2, g.c2_sets, c4_out, (kt,) + tuple(g.c4_kernel), groups=g.c2_sets,
                       shared=shared, name="C4", **common)
    seg4 = tuple(c4.output_segments)
    s3, s5 = _window(g.s3), _window(g.s5)
    h = (g.height - g.c2_kernel[0] + 1) // s3[0]
    w = (g.width - g.c2_kernel[1] + 1) // s3[1]
    h = (h - g.c4_kernel[0] + 1) // s5[0]
    w = (w - g.c4_kernel[1] + 1) // s5[1]
    if min(seg4) < 1 or h < 1 or w < 1:
        raise ActionrecError(f"input {g.input_shape} is too small for the kernels of this net")
    maps = c4_out * sum(seg4)  # C6 sees every (channel, frame) map of S5
    layers = [c2, act()]
    layers += pool(s3, g.c2_sets, sum(seg2), "S3")
    layers += [c4, act()]
    layers += pool(s5, c4_out, sum(seg4), "S5")
    layers += [Flatten()]
    if dropout:
        layers += [Dropout(float(dropout), seed=int(rng.integers(2**31)))]
    layers += [Dense(maps * h * w, g.features, bias_groups=maps, name="C6", **common), act()]
    if dropout:
        layers += [Dropout(float(dropout), seed=int(rng.integers(2**31)))]
    layers += [Dense(g.features, int(num_classes), bias=False, name="output", **common)]
    return Sequential(layers, name=name)


def _register(name, geometry, description):
    def builder(num_classes, **options):
        return build_ji(geometry, num_classes, name=name, **options)

    register_model(ModelSpec(name=name, builder=builder, input_shape=geometry.input_shape,
                             description=description, kind="video"))


_register("ji-trecvid", TRECVID, "Ji et al. TRECVID 3D CNN: 7 frames of 60x40 (H x W), 2x2 and 3x3 subsampling")
_register("ji-kth", KTH, "Ji et al. KTH 3D CNN: 9 frames of 80x60 (W x H), 3x3 subsampling twice")
_register("ji-small", SMALL, "not in the paper: a quarter-size KTH-style net, 7 frames of 40x30 (W x H), for the demo")
