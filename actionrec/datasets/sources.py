"""Data sources for ``Trainer``: anything with ``__len__``, ``labels`` and ``batch(positions)``.

``CubeSource`` reads mini-batches of cubes from an HDF5 cube dataset on demand (the file is never loaded
whole); ``ArraySource`` serves in-memory arrays (MNIST, CIFAR). Both take an optional augmentation.
``iterate_batches`` walks a source in a given order, reading the next batch in a background thread
while the caller computes on the current one.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from actionrec.errors import DataError


class _Augmented:
    """``augment(x_batch, rng) -> x_batch`` (optional) applied to every batch; its generator is reseeded
    from (seed, epoch) by ``set_epoch`` (the Trainer calls it) so resumed runs see the same augmentations."""

    def _init_augment(self, augment, seed):
        self.augment = augment
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def set_epoch(self, seed, epoch):
        self._rng = np.random.default_rng([int(seed), int(epoch), 7])

    def _augmented(self, x):
        return self.augment(x, self._rng) if self.augment is not None else x


class CubeSource(_Augmented):
    """The cubes ``indices`` of a ``CubeDataset`` as a data source.

    ``classes``: an optional subset of the dataset's class names (labels become positions in it).
    ``labels`` (n,) int, ``videos`` (n,) int (the video each cube comes from), ``classes``,
    ``input_shape`` (1, 5f-2, H, W). ``batch(positions)`` -> (x float32 (b, 1, 5f-2, H, W), y int (b,)),
    augmented by ``augment`` (e.g. ``actionrec.augment.CubeAugment``) when given: training sources only.
    """

    def __init__(self, dataset, indices, augment=None, seed=0, classes=None):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise DataError("cube indices must be a 1-D integer array")
        labels = np.asarray(dataset.cube_label, dtype=np.int64)[self.indices]
        self.classes = list(dataset.classes) if classes is None else list(classes)
        if classes is not None:
            # A class subset is relabelled 0..k-1 in the order given: the model's outputs.
            lookup = np.full(len(dataset.classes), -1, np.int64)
            lookup[dataset.class_labels(classes)] = np.arange(len(self.classes))
            labels = lookup[labels]
            if (labels < 0).any():
                raise DataError(f"{dataset.path}: the selected cubes include classes outside "
                                f"{', '.join(self.classes)}; select them with the same classes")
        self.labels = labels
        self.videos = np.asarray(dataset.cube_video, dtype=np.int64)[self.indices]
        self.input_shape = tuple(dataset.input_shape)
        self._init_augment(augment, seed)

    @classmethod
    def from_split(cls, dataset, part, split="official", trial=0, persons=None, classes=None):
        indices = dataset.select(part, split=split, trial=trial, persons=persons, classes=classes)
        return cls(dataset, indices, classes=classes)

    def __len__(self):
        return len(self.indices)

    def batch(self, positions):
        positions = np.asarray(positions, dtype=np.int64)
        wanted = self.indices[positions]
        # HDF5 reads fastest in increasing index order; read sorted, then restore the asked order.
        order = np.argsort(wanted, kind="stable")
        x_sorted = self.dataset.read_cubes(wanted[order])
        x = np.empty_like(x_sorted)
        x[order] = x_sorted
        return self._augmented(x.astype(np.float32, copy=False)), self.labels[positions]


class ArraySource(_Augmented):
    """In-memory samples ``x`` (n, ...) with labels ``y`` (n,), augmented by ``augment`` when given."""

    def __init__(self, x, y, augment=None, classes=None, seed=0):
        self.x = np.asarray(x)
        self.labels = np.asarray(y, dtype=np.int64)
        if len(self.x) != len(self.labels):
            raise DataError(f"{len(self.x)} samples but {len(self.labels)} labels")
        n_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
        self.input_shape = tuple(self.x.shape[1:])
        self._init_augment(augment, seed)

    def __len__(self):
        return len(self.labels)

    def batch(self, positions):
        positions = np.asarray(positions, dtype=np.int64)
        return self._augmented(self.x[positions].astype(np.float32, copy=False)), self.labels[positions]


def iterate_batches(source, order, batch_size: int, prefetch: bool = True):
    """Yield ``(positions, x, y)`` for consecutive slices of ``order``.

    With ``prefetch`` the next batch is read by one background thread (HDF5 reads and decompression
    overlap the network's compute); errors in the reader are re-raised in the caller.
    """
    order = np.asarray(order, dtype=np.int64)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if not prefetch or len(chunks) < 2:
        for pos in chunks:
            x, y = source.batch(pos)
            yield pos, x, y
        return
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def reader():
        try:
            for pos in chunks:
                if stop.is_set():
                    return
                put((pos,) + tuple(source.batch(pos)))
            put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=reader, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
