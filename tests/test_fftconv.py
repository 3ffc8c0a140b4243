"""The FFT segment-convolution core against the plain-loop reference, per segment, in float32 and
float64; its gradients against the reference and against finite differences; chunking, routing
and errors."""

import numpy as np
import pytest

import actionrec.nn.fftconv as fftconv
from actionrec.nn import reference
from actionrec.nn.banded import banded_conv_backward, banded_conv_forward
from actionrec.nn.conv import SegmentConv3D
from actionrec.nn.fftconv import fft_conv_backward, fft_conv_forward, fft_pays
from actionrec.nn.gradcheck import check_layer_gradients

CASES = [  # (segments, C, O, groups, kernel (kt, kh, kw), frame (H, W))
    ((4, 3), 1, 2, 1, (3, 5, 4), (9, 8)),      # Ji-like: one input map, two kernel sets
    ((3, 3), 2, 4, 2, (2, 4, 5), (7, 11)),     # groups, sizes that FFT pads (7 -> 8, 11 -> 12)
    ((2,), 2, 3, 1, (1, 4, 4), (17, 6)),       # two maps per group, kt = 1, a prime size
    ((3, 4), 1, 1, 1, (2, 6, 5), (6, 5)),      # kernel as large as the frame: 1x1 output
]


def _inputs(case, dtype, seed=0):
    segments, c, o, groups, kernel, frame = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, sum(segments)) + frame).astype(dtype)
    kernels = [rng.standard_normal((o, c // groups) + kernel).astype(dtype) for _ in segments]
    biases = [rng.standard_normal(o).astype(dtype) for _ in segments]
    starts = np.concatenate([[0], np.cumsum(segments)]).tolist()
    return x, kernels, biases, starts


def _arrays(results):
    """The arrays of a (y, dx, [dW], [db])-like tuple, lists flattened (None for dx kept as is)."""
    for r in results:
        yield from (r if isinstance(r, list) else [r])


def _reference(x, kernels, biases, starts, groups, dy=None):
    """Per segment: the plain-loop 3D convolution, or its gradients (dx, [dW], [db]) for dy."""
    outs, dx, dws, dbs = [], np.zeros(x.shape), [], []
    o0 = 0
    for W, b, t0, t1 in zip(kernels, biases, starts[:-1], starts[1:]):
        xs = x[:, :, t0:t1]
        if dy is None:
            outs.append(reference.conv(xs, W, b, groups=groups))
            continue
        o1 = o0 + t1 - t0 - W.shape[2] + 1
        dxs, dw, db = reference.conv_backward(xs, W, dy[:, :, o0:o1], groups=groups)
        dx[:, :, t0:t1] = dxs
        dws.append(dw)
        dbs.append(db)
        o0 = o1
    return np.concatenate(outs, axis=2) if dy is None else (dx, dws, dbs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_reference(case, dtype):
    x, kernels, biases, starts = _inputs(case, dtype)
    groups = case[3]
    y, _ = fft_conv_forward(x, kernels, biases, starts, groups)
    expected = _reference(x, kernels, biases, starts, groups)
    assert y.dtype == dtype and y.shape == expected.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=0, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_reference(case):
    x, kernels, biases, starts = _inputs(case, np.float64, seed=1)
    groups = case[3]
    y, cache = fft_conv_forward(x, kernels, biases, starts, groups)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx, dws, dbs = fft_conv_backward(dy, cache)
    ref_dx, ref_dws, ref_dbs = _reference(x, kernels, biases, starts, groups, dy)
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=1e-12 * np.abs(ref_dx).max())
    for got, ref in zip(dws + dbs, ref_dws + ref_dbs):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    none, dws_only, _ = fft_conv_backward(dy, cache, need_dx=False)
    assert none is None
    for a, b in zip(dws_only, dws):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("make,x_shape", [
    (lambda: SegmentConv3D((4, 3), 1, 2, (3, 5, 4), rng=1, dtype="float64"), (2, 1, 7, 9, 8)),
    (lambda: SegmentConv3D((3, 3), 2, 4, (2, 4, 5), groups=2, rng=1, dtype="float64"), (1, 2, 6, 7, 11)),
    (lambda: SegmentConv3D((3, 3), 1, 2, (2, 4, 4), shared=True, rng=1, dtype="float64"), (2, 1, 6, 6, 5)),
], ids=["ji-like", "groups", "shared"])
def test_layer_gradients_match_finite_differences(make, x_shape):
    rng = np.random.default_rng(3)
    layer = make()
    assert fft_pays(layer.params["W"].shape[-5:])  # these layers run in the FFT core
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    # linear in x and W: centred differences carry rounding only, which a large step keeps small
    errors = check_layer_gradients(layer, rng.standard_normal(x_shape), eps=1e-3)
    assert set(errors) == {"x", "W", "b"} and max(errors.values()) < 1e-6, errors


def test_segment_layer_runs_fft_and_matches_banded_core():
    rng = np.random.default_rng(4)
    layer = SegmentConv3D((9, 8), 1, 2, (3, 7, 9), rng=0)  # a Ji KTH C2 layer on smaller frames
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    x = rng.standard_normal((3, 1, 17, 20, 24)).astype(np.float32)
    y = layer.forward(x)
    assert layer._cache[0] is fft_conv_backward
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    kernels, biases = layer._segment_kernels()
    y_b, cache = banded_conv_forward(x, kernels, biases, layer._starts(), (1, 1, 1), (0, 0, 0), 1)
    dx_b, dws_b, dbs_b = banded_conv_backward(dy, cache)
    scale = np.abs(y_b).max()
    np.testing.assert_allclose(y, y_b, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(dx, dx_b, rtol=0, atol=2e-6 * np.abs(dx_b).max())
    np.testing.assert_allclose(layer.grads["W"], np.stack(dws_b), rtol=0, atol=2e-6 * np.abs(dws_b).max())
    np.testing.assert_allclose(layer.grads["b"], np.stack(dbs_b), rtol=1e-5)


def test_evaluation_forward_keeps_the_input_not_its_spectra():
    """Without backward in view the cache holds a reference to x (no memory of its own); a backward
    after it transforms x again and gives the training forward's gradients."""
    x, kernels, biases, starts = _inputs(CASES[1], np.float64)
    y_train, train_cache = fft_conv_forward(x, kernels, biases, starts, 2)
    y_eval, eval_cache = fft_conv_forward(x, kernels, biases, starts, 2, keep_spectra=False)
    assert eval_cache[-1] is x and isinstance(train_cache[-1], dict) and train_cache[-1]
    np.testing.assert_array_equal(y_eval, y_train)
    dy = np.cos(y_train)
    for u, v in zip(_arrays(fft_conv_backward(dy, eval_cache)), _arrays(fft_conv_backward(dy, train_cache))):
        np.testing.assert_array_equal(u, v)
    layer = SegmentConv3D((3, 3), 2, 4, (2, 4, 5), groups=2, rng=0, dtype="float64")
    layer.forward(x, training=False)
    assert layer._cache[1][-1] is x


def test_chunking_does_not_change_results(monkeypatch):
    x, kernels, biases, starts = _inputs(CASES[1], np.float64)
    x = np.concatenate([x, x[::-1] * 0.5, x])  # 6 items
    y, cache = fft_conv_forward(x, kernels, biases, starts, 2)
    whole = (y,) + fft_conv_backward(np.cos(y), cache)
    monkeypatch.setattr(fftconv, "_CHUNK_BYTES", 1)  # one item per chunk
    y, cache = fft_conv_forward(x, kernels, biases, starts, 2)
    assert len(cache[-2]) == 6 * 2  # items x segments
    parts = (y,) + fft_conv_backward(np.cos(y), cache)
    for u, v in zip(_arrays(whole), _arrays(parts)):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)


def test_which_kernels_take_the_fft_core():
    assert fft_pays((2, 1, 3, 7, 9)) and fft_pays((2, 1, 3, 7, 7))      # Ji C2 (KTH, TRECVID)
    assert fft_pays((6, 1, 3, 7, 6)) and fft_pays((6, 1, 3, 4, 5))      # Ji C4, ji-small C4
    assert not fft_pays((2, 1, 2, 3, 3))  # small kernels: the banded core
    assert not fft_pays((64, 32, 1, 5, 5))  # many input maps per group: the GEMM cores
    layer = SegmentConv3D((3, 3), 1, 2, (2, 3, 3), rng=0)
    layer.forward(np.zeros((1, 1, 6, 5, 5), np.float32))
    assert layer._cache[0] is banded_conv_backward


def test_errors():
    x, kernels, biases, starts = _inputs(CASES[0], np.float64)
    with pytest.raises(ValueError, match="channels"):
        fft_conv_forward(x[:, [0, 0]], kernels, biases, starts, 1)
    with pytest.raises(ValueError, match="larger than the input"):
        fft_conv_forward(x[..., :4, :], kernels, biases, starts, 1)
    with pytest.raises(ValueError, match="do not cover the 7 frames"):
        fft_conv_forward(x, kernels, biases, [0, 4, 6], 1)
    with pytest.raises(ValueError, match="do not cover"):
        fft_conv_forward(x, kernels[:1], biases, starts, 1)
