"""One training loop for video cubes and images.

``Trainer(model, optimizer, ...).fit(train, validation)`` trains a ``Sequential`` on data sources
(objects with ``__len__``, ``labels`` and ``batch(positions) -> (x float32, y int)``; see
``actionrec.datasets.sources``) with:

- seeded, exactly resumable runs: the shuffle of epoch e and the dropout masks are drawn from
  generators seeded with (seed, e), so "1 epoch + resume 1 epoch" gives the same weights as 2 epochs;
- a checkpoint after every epoch (atomic HDF5: weights, optimizer state, epoch, seeds, history, early
  stopping state, metadata) and the best-validation model written to ``out`` with everything
  ``classify`` needs;
- early stopping on validation loss, a NaN/inf guard that stops with a clear message and keeps the
  last good checkpoint, a tqdm bar per epoch, a validation line, CSV/JSON logs and PNG curves.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from actionrec.backend import array_module_for, get_array_module, to_device, to_numpy
from actionrec.datasets.sources import iterate_batches
from actionrec.errors import ActionrecError
from actionrec.nn.allocator import keep_freed_memory
from actionrec.nn.parallel import one_blas_thread

HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "samples_per_s")


class TrainingDiverged(ActionrecError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """Inverse-frequency loss weights n / (K * n_c), so every class weighs the same in the loss."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if np.any(counts == 0):
        missing = [int(c) for c in np.flatnonzero(counts == 0)]
        raise ActionrecError(f"--balance: classes {missing} have no training samples; choose another split")
    return (counts.sum() / (num_classes * counts)).astype(np.float32)


def predict_logits(model, source, batch_size: int = 64, positions=None, prefetch: bool = True):
    """Logits (n, K) as numpy and labels (n,) for ``source`` (all of it, or ``positions``)."""
    if positions is None:
        positions = np.arange(len(source))
    xp = model_array_module(model)
    outputs, labels = [], []
    for _, x, y in iterate_batches(source, positions, batch_size, prefetch=prefetch):
        outputs.append(to_numpy(model.forward(to_device(x, xp), training=False)))
        labels.append(np.asarray(y))
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(outputs), np.concatenate(labels)


def model_array_module(model):
    """numpy or cupy: where the model's parameters live."""
    for _, p, _ in model.named_parameters():
        return get_array_module(p)
    return np


def cross_entropy_and_accuracy(logits, labels) -> tuple[float, float]:
    """Mean softmax cross-entropy and accuracy of numpy logits (n, K) against labels (n,)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_p[np.arange(len(labels)), labels].mean())
    acc = float((logits.argmax(axis=1) == labels).mean())
    return loss, acc


def _atomic_write_text(path: Path, text: str):
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


class Trainer:
    """Train ``model`` with ``optimizer`` (and optional ``schedule(epoch) -> lr``).

    ``checkpoint``: HDF5 path rewritten after every epoch (resume with ``fit(..., resume=True)``).
    ``out``: HDF5 path of the best-validation model (the last epoch's without validation data), with
    ``metadata`` (model name/options, preprocessing, classes, split...) stored in it.
    ``log_prefix``: path prefix of ``.history.csv``, ``.history.json`` and ``.curves.png``.
    ``patience``: stop after this many epochs without a lower validation loss (0: never).
    ``class_weights``: per-class loss weights (see ``balanced_class_weights``).
    ``schedule_per_step``: call ``schedule`` before every batch with the fractional epoch
    ``epoch + step / steps_per_epoch`` (a smooth cosine decay that reaches its end at the last batch),
    instead of once per epoch.
    """

    def __init__(self, model, optimizer, schedule=None, *, epochs: int = 10, batch_size: int = 32,
                 seed: int = 0, device: str = "cpu", patience: int = 0, class_weights=None,
                 checkpoint=None, out=None, log_prefix=None, metadata=None, progress: bool = True,
                 prefetch: bool = True, unit: str = "sample", stream=None, schedule_per_step: bool = False):
        if epochs < 1:
            raise ActionrecError(f"--epochs must be at least 1, got {epochs}")
        if batch_size < 1:
            raise ActionrecError(f"--batch-size must be at least 1, got {batch_size}")
        if patience < 0:
            raise ActionrecError(f"--patience must be >= 0, got {patience}")
        from actionrec.nn import SoftmaxCrossEntropy

        self.xp = array_module_for(device)
        self.model = model.to(self.xp)
        self.optimizer = optimizer
        self.schedule = schedule
        self.schedule_per_step = bool(schedule_per_step) and schedule is not None
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.patience = int(patience)
        weights = None if class_weights is None else to_device(np.asarray(class_weights, np.float32), self.xp)
        self.criterion = SoftmaxCrossEntropy(class_weights=weights)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.out = Path(out) if out else None
        self.log_prefix = Path(log_prefix) if log_prefix else None
        self.metadata = dict(metadata or {})
        self.progress = progress
        self.prefetch = prefetch
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.history = {k: [] for k in HISTORY_KEYS}
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.completed_epochs = 0

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, train, validation=None, resume: bool = False) -> dict:
        """Train for the remaining epochs; return the history (lists keyed by ``HISTORY_KEYS``)."""
        if len(train) == 0:
            raise ActionrecError("the training split is empty: check the split options")
        keep_freed_memory()  # every step re-allocates the same large arrays: reuse, do not re-fault
        if resume:
            self.load_checkpoint()
            if self.completed_epochs >= self.epochs:
                self._say(f"all {self.epochs} epochs are already done (raise --epochs to train longer)")
        while self.completed_epochs < self.epochs:
            if self.patience and self.bad_epochs >= self.patience:
                self._say(f"early stopping: validation loss has not improved for {self.bad_epochs} epochs "
                          f"(best {self.best_val_loss:.4f} at epoch {self.best_epoch})")
                break
            self._run_epoch(train, validation, self.completed_epochs)
        return self.history

    def _run_epoch(self, train, validation, epoch: int):
        from tqdm import tqdm

        lr = float(self.schedule(epoch)) if self.schedule is not None else float(self.optimizer.lr)
        self.optimizer.lr = lr
        order = np.random.default_rng([self.seed, epoch]).permutation(len(train))
        reseed_randomness(self.model, train, self.seed, epoch)
        start = time.perf_counter()
        loss_sum = correct = seen = 0.0
        steps = -(-len(train) // self.batch_size)
        bar = tqdm(total=len(train), desc=f"epoch {epoch + 1}/{self.epochs}", unit=self.unit,
                   disable=not self.progress, file=self.stream, leave=True, dynamic_ncols=True)
        try:
            for step, (_, x, y) in enumerate(iterate_batches(train, order, self.batch_size, self.prefetch)):
                if self.schedule_per_step:
                    self.optimizer.lr = float(self.schedule(epoch + step / steps))
                loss, n_correct = self._train_step(x, y, epoch, step)
                n = len(y)
                loss_sum += loss * n
                correct += n_correct
                seen += n
                bar.update(n)
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                **{f"{self.unit}s/s": f"{rate:.1f}"}, refresh=False)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "val_loss": float("nan"), "val_acc": float("nan"), "seconds": seconds,
               "samples_per_s": seen / max(seconds, 1e-9)}
        if validation is not None and len(validation):
            logits, labels = predict_logits(self.model, validation, self.batch_size, prefetch=self.prefetch)
            row["val_loss"], row["val_acc"] = cross_entropy_and_accuracy(logits, labels)
        for k in HISTORY_KEYS:
            self.history[k].append(row[k])
        self.completed_epochs = epoch + 1
        improved = self._update_best(row)
        self._say(self._epoch_line(row, improved))
        if improved and self.out is not None:
            self.save_model(self.out, extra={"epoch": epoch + 1, "val_loss": row["val_loss"]})
        self.save_checkpoint()
        self._write_logs()

    def _train_step(self, x, y, epoch, step):
        xp = self.xp
        x = to_device(x, xp)
        y_dev = to_device(np.asarray(y, dtype=np.int64), xp)
        # BLAS on one thread for the whole step, as the layers want it anyway (they split their work
        # over the cores themselves): their own one-thread blocks, about a hundred, then cost nothing.
        with one_blas_thread(xp):
            # Overflow on the way to a NaN is reported once, by the guard below, not as numpy warnings.
            with np.errstate(over="ignore", invalid="ignore"):
                logits = self.model.forward(x, training=True)
                loss = float(self.criterion.forward(logits, y_dev))
            if not math.isfinite(loss):
                where = f"a checkpoint of epoch {self.completed_epochs} is kept at {self.checkpoint}" \
                    if self.checkpoint and self.checkpoint.exists() and self.completed_epochs else "no epoch had finished"
                raise TrainingDiverged(
                    f"the training loss became {loss} at epoch {epoch + 1}, batch {step + 1}; {where}. "
                    f"Lower the learning rate (now {self.optimizer.lr:g}) or use --optimizer adam")
            self.model.backward(self.criterion.backward())
            self.optimizer.step(self.model)
        n_correct = float((to_numpy(logits).argmax(axis=1) == np.asarray(y)).sum())
        return loss, n_correct

    def _update_best(self, row) -> bool:
        val = row["val_loss"]
        if not math.isfinite(val):  # no validation data: the latest model is the one to keep
            self.best_epoch = row["epoch"]
            return True
        if val < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.bad_epochs = val, row["epoch"], 0
            return True
        self.bad_epochs += 1
        return False

    def _epoch_line(self, row, improved) -> str:
        line = (f"epoch {row['epoch']}/{self.epochs}: train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.3f}")
        if math.isfinite(row["val_loss"]):
            line += f" | validation loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
            line += " (best so far)" if improved else f" (best {self.best_val_loss:.4f} at epoch {self.best_epoch})"
        return line + f" | {row['samples_per_s']:.1f} {self.unit}s/s, lr {row['lr']:.3g}"

    def _say(self, text: str):
        if self.progress:
            print(text, file=self.stream, flush=True)

    # --- files ----------------------------------------------------------------------------------
    def save_model(self, path, extra=None):
        """Write the current model with its metadata (what ``classify`` and ``evaluate`` read)."""
        meta = dict(self.metadata)
        meta.update(extra or {})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.model.save(str(path), metadata=_json_safe(meta))

    def training_state(self) -> dict:
        return {
            "epoch": int(self.completed_epochs),
            "epochs": int(self.epochs),
            "seed": int(self.seed),
            "optimizer_type": type(self.optimizer).__name__,
            "optimizer": self.optimizer.state_dict(),
            "best_val_loss": float(self.best_val_loss),
            "best_epoch": int(self.best_epoch),
            "bad_epochs": int(self.bad_epochs),
            # Generators are reseeded from (seed, epoch) at every epoch; the next one's state is recorded.
            "rng_json": json.dumps(np.random.default_rng([self.seed, self.completed_epochs]).bit_generator.state),
            "history": {k: np.asarray(v, dtype=np.float64) for k, v in self.history.items()},
            "metadata_json": json.dumps(_json_safe(self.metadata)),
        }

    def save_checkpoint(self):
        if self.checkpoint is None:
            return
        from actionrec.nn.serialization import atomic_h5, write_model, write_state

        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_h5(str(self.checkpoint)) as f:
            write_model(f.create_group("model"), self.model)
            write_state(f.create_group("training"), self.training_state())

    def load_checkpoint(self):
        """Restore weights, optimizer and loop state from ``checkpoint`` (no-op when it is absent)."""
        if self.checkpoint is None or not self.checkpoint.exists():
            self._say("no checkpoint to resume from: starting from epoch 1")
            return
        import h5py

        from actionrec.nn.serialization import read_model, read_state

        try:
            with h5py.File(self.checkpoint, "r") as f:
                saved = read_model(f["model"])
                state = read_state(f["training"])
        except ActionrecError:
            raise
        except (OSError, KeyError) as exc:
            raise ActionrecError(f"cannot resume from {self.checkpoint}: not a training checkpoint ({exc})") from None
        saved_meta = json.loads(_as_str(state["metadata_json"]))
        for key in ("model", "model_options", "classes"):
            if key in self.metadata and saved_meta.get(key) != _json_safe(self.metadata.get(key)):
                raise ActionrecError(
                    f"checkpoint {self.checkpoint} was written for {key} {saved_meta.get(key)!r}, not "
                    f"{self.metadata.get(key)!r}: use the same options, or --restart to start again")
        if _as_str(state["optimizer_type"]) != type(self.optimizer).__name__:
            raise ActionrecError(f"checkpoint {self.checkpoint} used optimizer {_as_str(state['optimizer_type'])}, "
                                 f"not {type(self.optimizer).__name__}: use the same --optimizer")
        copy_weights(saved, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.seed = int(state["seed"])
        self.completed_epochs = int(state["epoch"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        hist = state["history"]
        self.history = {k: [float(v) for v in np.asarray(hist[k]).reshape(-1)] for k in HISTORY_KEYS}
        self.history["epoch"] = [int(e) for e in self.history["epoch"]]
        self._say(f"resuming from {self.checkpoint}: {self.completed_epochs} epoch(s) done")

    def _write_logs(self):
        if self.log_prefix is None:
            return
        self.log_prefix.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(HISTORY_KEYS)
        for i in range(len(self.history["epoch"])):
            writer.writerow([self.history[k][i] for k in HISTORY_KEYS])
        _atomic_write_text(self.log_prefix.with_name(self.log_prefix.name + ".history.csv"), buf.getvalue())
        doc = {"history": self.history, "best_epoch": self.best_epoch,
               "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
               "metadata": _json_safe(self.metadata)}
        _atomic_write_text(self.log_prefix.with_name(self.log_prefix.name + ".history.json"),
                           json.dumps(_json_safe(doc), indent=2))
        from actionrec.plots import plot_history

        plot_history(self.history, self.log_prefix.with_name(self.log_prefix.name + ".curves.png"))


def reseed_randomness(model, source, seed: int, epoch: int):
    """Give every random layer (dropout) and the source's augmentation a generator seeded by (seed, epoch),
    so an epoch's masks do not depend on how many epochs ran in this process."""
    for i, layer in enumerate(model.layers):
        if hasattr(layer, "reseed"):
            layer.reseed(int(np.random.default_rng([int(seed), int(epoch), 1000 + i]).integers(2**31 - 1)))
    if hasattr(source, "set_epoch"):
        source.set_epoch(seed, epoch)


def copy_weights(src, dst):
    """Copy parameters and buffers of ``src`` into ``dst`` in place (same architecture)."""
    from actionrec.errors import ShapeError

    if len(src.layers) != len(dst.layers):
        raise ShapeError(f"saved model has {len(src.layers)} layers, this one {len(dst.layers)}")
    for a, b in zip(src.layers, dst.layers):
        for store in ("params", "buffers"):
            sa, sb = getattr(a, store), getattr(b, store)
            for key, value in sa.items():
                if key not in sb or tuple(sb[key].shape) != tuple(value.shape):
                    raise ShapeError(f"layer {b.name}: saved {key} has shape {tuple(value.shape)}, "
                                     f"model expects {tuple(sb[key].shape) if key in sb else 'none'}")
                sb[key][...] = to_device(value, get_array_module(sb[key]))


def _as_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return _as_str(value.item())
    return str(value)


def _json_safe(value):
    """Convert numpy scalars/arrays and tuples to plain JSON types (recursively)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_training(data, *, model_name: str, out, model_options=None, split: str = "official", trial: int = 0,
                 persons=None, epochs: int = 20, batch_size: int = 32, optimizer=None, schedule=None,
                 patience: int = 5, balance: bool = False, seed: int = 0, device=None, resume: bool = False,
                 restart: bool = False, prefetch: bool = True, progress: bool = True, stream=None,
                 augment=None, classes=None) -> dict:
    """Train ``model_name`` on the HDF5 cube dataset ``data``; the wiring behind ``actionrec train``.

    Files: ``out`` (best model), ``<out stem>.ckpt.h5`` (checkpoint), ``<out stem>.history.csv|json``
    and ``<out stem>.curves.png`` next to it. An existing checkpoint is resumed unless ``restart``.
    ``augment``: optional ``augment(x, rng) -> x`` for training batches (``actionrec.augment.CubeAugment``).
    ``classes``: train on these class names only (e.g. ``["walking", "running"]``); default all of them.
    """
    from actionrec.backend import resolve_device
    from actionrec.datasets.cubes import CubeDataset
    from actionrec.datasets.sources import CubeSource
    from actionrec.models import MODELS, _load_all, build_model

    out = Path(out)
    if out.suffix not in (".h5", ".hdf5"):
        raise ActionrecError(f"--out {out} should end in .h5 (models are HDF5 files)")
    checkpoint = out.with_name(out.stem + ".ckpt.h5")
    log_prefix = out.with_name(out.stem)
    if resume and not checkpoint.exists():
        raise ActionrecError(f"--resume: no checkpoint {checkpoint} to continue from (drop --resume to start)")
    resume = checkpoint.exists() and not restart
    device = resolve_device(device)
    _load_all()
    if model_name not in MODELS:
        raise ActionrecError(f"unknown model {model_name!r}: choose one of {', '.join(sorted(MODELS))}")
    spec = MODELS[model_name]
    if spec.kind != "video":
        raise ActionrecError(f"{model_name} is a 2D image model: train it with 'actionrec baseline'")
    options = dict(model_options or {})
    with CubeDataset(data) as ds:
        if tuple(spec.input_shape) != tuple(ds.input_shape):
            raise ActionrecError(
                f"{model_name} expects cubes of shape {tuple(spec.input_shape)} (C, T, H, W) but {data} holds "
                f"{tuple(ds.input_shape)}: preprocess with the model's frame count and size, or pick a model "
                "that fits (actionrec models)")
        subset = list(classes) if classes else None
        classes = subset or list(ds.classes)
        select = dict(split=split, trial=trial, persons=persons, classes=subset)
        train = CubeSource(ds, ds.select("train", **select), augment=augment, classes=subset)
        validation = CubeSource(ds, ds.select("validation", **select), classes=subset)
        if len(train) == 0:
            present = ds.split_persons(split, trial, persons)["train"]
            raise ActionrecError(f"{data}: the training part has no cubes (persons "
                                 f"{', '.join(map(str, present)) or 'none present'}, classes {', '.join(classes)}): "
                                 "check the split and class options")
        model = build_model(model_name, len(classes), seed=seed, **options)
        metadata = {
            "format": "actionrec-model", "model": model_name, "model_options": options, "classes": classes,
            "input_shape": list(ds.input_shape), "preprocessing": ds.preprocessing,
            "split": {"scheme": split, "trial": int(trial), "persons": persons}, "data": str(data),
            "seed": int(seed), "optimizer": type(optimizer).__name__,
            "augment": augment.config() if hasattr(augment, "config") else None,
        }
        weights = balanced_class_weights(train.labels, len(classes)) if balance else None
        trainer = Trainer(model, optimizer, schedule, epochs=epochs, batch_size=batch_size, seed=seed,
                          device=device, patience=patience, class_weights=weights, checkpoint=checkpoint,
                          out=out, log_prefix=log_prefix, metadata=metadata, progress=progress,
                          prefetch=prefetch, unit="cube", stream=stream)
        if progress:
            print(f"{model_name}: {model.num_parameters():,} parameters; {len(train)} training cubes, "
                  f"{len(validation)} validation cubes, {len(classes)} classes; device {device}",
                  file=trainer.stream, flush=True)
        trainer.fit(train, validation if len(validation) else None, resume=resume)
    return {"out": out, "checkpoint": checkpoint, "log_prefix": log_prefix, "history": trainer.history,
            "best_epoch": trainer.best_epoch, "best_val_loss": trainer.best_val_loss}
