"""Memory layout of (N, C, *S) arrays: C order, or channels-last as torch's ``channels_last``.

Layers take and return arrays of shape (N, C, *S) and every reader may treat them so; only the strides
say where the values lie. The Winograd core writes its output channels-last (a copy in runs of C
values from its tile-major grid, where C order needs a transpose), and the element-wise layers after
it (BatchNorm, ReLU, max pooling) allocate their outputs and gradients in their input's layout, so
the next Winograd layer reads its input, and the previous one its output gradient, without a
transpose either.
"""

from __future__ import annotations

from actionrec.backend import get_array_module


def channels_last_view(a):
    """a (N, C, *S) seen as (N, *S, C): a view, C-contiguous exactly when ``a`` is channels-last.
    (A transpose, not ``moveaxis``: this runs several times per layer call, and moveaxis costs
    about four times as much.)"""
    return a.transpose((0,) + tuple(range(2, a.ndim)) + (1,))


def channels_last(a) -> bool:
    """Whether the maps of a (N, C, *S) array lie channels-last in memory, as (N, *S, C): its channel
    axis moved last is C-contiguous. (An array with one channel or one position is both.)"""
    return a.ndim >= 3 and channels_last_view(a).flags.c_contiguous


def lies_channels_last(a) -> bool:
    """Whether ``a`` is channels-last and not also C order: the arrays to keep channels-last."""
    return not a.flags.c_contiguous and channels_last(a)


def empty_in_layout(xp, shape: tuple, dtype, last: bool, zero: bool = False):
    """An empty (or zero) (N, C, *S) array of ``shape``, channels-last when ``last``, else C order."""
    make = xp.zeros if zero else xp.empty
    if not last:
        return make(tuple(shape), dtype=dtype)
    return xp.moveaxis(make((shape[0],) + tuple(shape[2:]) + (shape[1],), dtype=dtype), -1, 1)


def empty_like_layout(shape: tuple, like, dtype=None, zero: bool = False):
    """An empty (or zero) (N, C, *S) array of ``shape`` laid out as ``like`` is."""
    xp = get_array_module(like)
    return empty_in_layout(xp, shape, like.dtype if dtype is None else dtype, lies_channels_last(like), zero)
