"""Softmax cross-entropy, the training criterion of every classifier in actionrec."""

from __future__ import annotations

import numpy as np

from actionrec.backend import get_array_module, to_device
from actionrec.errors import ShapeError


def log_softmax(logits, axis: int = -1):
    """log(softmax(logits)) computed with the log-sum-exp shift, so large logits do not overflow."""
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(logits, axis: int = -1):
    """Class probabilities: exp(logits) normalised along ``axis`` (numerically stable)."""
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = xp.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


class SoftmaxCrossEntropy:
    """Mean negative log-likelihood of integer labels under softmax(logits).

    ``loss = crit.forward(logits, labels)`` then ``dlogits = crit.backward()``. With ``class_weights``
    (one per class) the loss is the weighted mean ``sum_i w[y_i] * nll_i / sum_i w[y_i]``, as torch's
    ``CrossEntropyLoss(weight=..., reduction="mean")``: useful for unbalanced classes.
    """

    def __init__(self, class_weights=None):
        if class_weights is not None:
            w = np.asarray(to_device(class_weights, np), dtype=np.float64)
            if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError("class_weights must be a non-empty 1-D list of finite, non-negative numbers")
            class_weights = w
        self.class_weights = class_weights
        self._cache = None

    def config(self) -> dict:
        weights = None if self.class_weights is None else [float(v) for v in self.class_weights]
        return {"class_weights": weights}

    def _validate(self, logits, labels):
        if logits.ndim != 2:
            raise ShapeError(f"cross-entropy expects logits of shape (N, classes), got {tuple(logits.shape)}")
        n, k = logits.shape
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ShapeError(f"cross-entropy expects labels of shape ({n},) for logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise ShapeError(f"cross-entropy labels must be integers (class indices), got dtype {labels.dtype}")
        if n == 0:
            raise ShapeError("cross-entropy got an empty batch")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= k:
            bad = low if low < 0 else high
            raise ShapeError(f"cross-entropy label {bad} is out of range for {k} classes (labels must be 0..{k - 1})")
        if self.class_weights is not None and self.class_weights.size != k:
            raise ShapeError(f"cross-entropy has {self.class_weights.size} class weights but the logits have {k} classes")

    def forward(self, logits, labels) -> float:
        """logits (N, K) float, labels (N,) int in [0, K) -> scalar mean loss (Python float)."""
        xp = get_array_module(logits)
        labels = to_device(labels, xp)
        self._validate(logits, labels)
        n = logits.shape[0]
        log_p = log_softmax(logits, axis=1)
        nll = -log_p[xp.arange(n), labels]
        if self.class_weights is None:
            sample_w = xp.full(n, 1.0 / n, dtype=logits.dtype)
        else:
            w = xp.asarray(self.class_weights, dtype=logits.dtype)[labels]
            total = float(w.sum())
            if total <= 0:
                raise ShapeError("cross-entropy: every label in the batch has class weight 0")
            sample_w = w / total
        self._cache = (log_p, labels, sample_w)
        return float((sample_w * nll).sum())

    def backward(self, dloss: float = 1.0):
        """-> dlogits (N, K): sample_weight * (softmax(logits) - onehot(labels)), times ``dloss``."""
        log_p, labels, sample_w = self._cache
        xp = get_array_module(log_p)
        dlogits = xp.exp(log_p)
        dlogits[xp.arange(labels.shape[0]), labels] -= 1
        dlogits *= (sample_w * dloss)[:, None]
        return dlogits
