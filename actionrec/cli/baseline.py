"""``actionrec baseline mnist|cifar10``: the 2D baselines, trained by the same loop as the video nets."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from actionrec.errors import ActionrecError

# Per-dataset defaults: the settings docs/results.md reports (model, schedule, augmentation).
DEFAULTS = {
    # The schedule is applied per batch (fractional epochs): the cosine ends at ~0 on the last batch.
    "mnist": dict(model="mnist-2conv", epochs=8, batch_size=128, optimizer="adam", lr=1e-3,
                  weight_decay=0.0, schedule="cosine", crop_padding=2, flip=False),
    "cifar10": dict(model="cifar-vgg", epochs=30, batch_size=64, optimizer="adam", lr=2e-3,
                    weight_decay=5e-4, schedule="cosine", crop_padding=4, flip=True),
}


def load_dataset(name: str, data_dir=None, download: bool = False, cache_dir=None) -> dict:
    """The dataset dict of ``load_mnist`` / ``load_cifar10``, fetching it first with ``download``."""
    from actionrec.datasets.cifar10 import load_cifar10
    from actionrec.datasets.mnist import load_mnist

    if download:
        from actionrec.datasets.download import default_cache_dir, download as fetch

        data_dir = fetch(name, cache_dir or default_cache_dir())
    if data_dir is None:
        raise ActionrecError(f"baseline {name}: give --data DIR (the folder of the official files) or --download")
    return (load_mnist if name == "mnist" else load_cifar10)(data_dir)


def make_sources(data: dict, crop_padding=0, flip=False, seed=0, limit=None, validation=0):
    """Training source (augmented when asked), validation source (the last ``validation`` training
    images, held out; None when 0) and test source, all with the training images' normalisation."""
    from actionrec.augment import Augment
    from actionrec.datasets.images import ImageArraySource

    x, y = data["train"]
    if limit:
        x, y = x[:limit], y[:limit]
    validation = int(validation or 0)
    if not 0 <= validation < len(x):
        raise ActionrecError(f"--validation {validation}: hold out between 0 and {len(x) - 1} of the "
                             f"{len(x)} training images")
    cut = len(x) - validation
    augment = Augment(crop_padding, flip) if (crop_padding or flip) else None
    train = ImageArraySource(x[:cut], y[:cut], data["classes"], augment=augment, seed=seed)
    held_out = (ImageArraySource(x[cut:], y[cut:], data["classes"], mean=train.mean, std=train.std)
                if validation else None)
    test = ImageArraySource(*data["test"], data["classes"], mean=train.mean, std=train.std)
    return train, held_out, test


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """counts[true, predicted] (num_classes, num_classes)."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def per_class_table(matrix, classes) -> str:
    """One line per class: its test images, recall (accuracy on that class) and precision."""
    width = max(len("class"), *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  images  recall  precision"]
    for k, name in enumerate(classes):
        total, predicted = matrix[k].sum(), matrix[:, k].sum()
        recall = matrix[k, k] / total if total else float("nan")
        precision = matrix[k, k] / predicted if predicted else float("nan")
        lines.append(f"{name:<{width}}  {total:6d}  {recall:6.4f}  {precision:9.4f}")
    return "\n".join(lines)


def settings_for(args) -> dict:
    """The dataset's defaults overridden by the options given on the command line."""
    settings = dict(DEFAULTS[args.dataset])
    for key in ("model", "epochs", "batch_size", "lr", "weight_decay", "crop_padding", "flip"):
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    return settings


def run(args) -> int:
    from actionrec.backend import resolve_device
    from actionrec.models import MODELS, _load_all, build_model
    from actionrec.nn.optim import make_optimizer, make_schedule
    s = settings_for(args)
    _load_all()
    if s["model"] not in MODELS or MODELS[s["model"]].kind != "image":
        images = sorted(name for name, spec in MODELS.items() if spec.kind == "image")
        raise ActionrecError(f"unknown image model {s['model']!r}: choose one of {', '.join(images)}")
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data, args.download, args.cache)
    train, validation, test = make_sources(data, s["crop_padding"], s["flip"], seed=args.seed, limit=args.limit,
                                           validation=args.validation)
    try:  # imported after the data is validated, so data errors come first
        from actionrec.training import Trainer, predict_logits
    except ModuleNotFoundError as exc:
        if exc.name != "actionrec.training":
            raise
        raise ActionrecError("this build has no training loop (actionrec.training): update actionrec") from None

    out = Path(args.out or Path("models") / f"{s['model']}-{args.dataset}.h5")
    if out.suffix not in (".h5", ".hdf5"):
        raise ActionrecError(f"--out {out} should end in .h5 (models are HDF5 files)")
    checkpoint = out.with_name(out.stem + ".ckpt.h5")
    model = build_model(s["model"], train.num_classes, seed=args.seed, input_shape=train.input_shape)
    optimizer = make_optimizer(s["optimizer"], lr=s["lr"], weight_decay=s["weight_decay"])
    schedule = make_schedule(s["schedule"], s["lr"], s["epochs"])
    metadata = {
        "format": "actionrec-model", "model": s["model"], "model_options": {"input_shape": list(train.input_shape)},
        "classes": train.classes, "input_shape": list(train.input_shape), "dataset": args.dataset,
        "preprocessing": {"normalization": train.normalization,
                          "augmentation": {"crop_padding": s["crop_padding"], "flip": s["flip"]}},
        "seed": int(args.seed), "optimizer": s["optimizer"], "lr": s["lr"], "schedule": s["schedule"],
    }
    trainer = Trainer(model, optimizer, schedule, epochs=s["epochs"], batch_size=s["batch_size"], seed=args.seed,
                      device=device, checkpoint=checkpoint, out=out, log_prefix=out.with_name(out.stem),
                      metadata=metadata, unit="image", schedule_per_step=True)
    print(f"{s['model']}: {model.num_parameters():,} parameters; {len(train)} training images, "
          f"{len(test)} test images; device {device}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    trainer.fit(train, validation, resume=checkpoint.exists() and not args.restart)
    seconds = time.perf_counter() - start
    logits, labels = predict_logits(trainer.model, test, s["batch_size"])
    matrix = confusion_matrix(labels, logits.argmax(axis=1), train.num_classes)
    print(per_class_table(matrix, train.classes))
    try:
        from actionrec.plots import plot_confusion

        png = plot_confusion(matrix, train.classes, out.with_name(out.stem + ".confusion.png"),
                             title=f"{s['model']} on {args.dataset} test")
        print(f"confusion matrix: {png}")
    except ImportError:
        pass
    print(f"model: {out}")
    print(f"test accuracy: {np.trace(matrix) / max(matrix.sum(), 1):.4f}")
    print(f"training time: {seconds:.1f} s ({seconds / 60:.1f} min) for {trainer.completed_epochs} epochs")
    return 0


def register(subparsers):
    """Add ``baseline`` to the ``actionrec`` parser."""
    p = subparsers.add_parser(
        "baseline", help="train a 2D baseline on MNIST or CIFAR-10",
        description="Train a 2D CNN baseline on MNIST (IDX files) or CIFAR-10 (binary version) with the "
        "same layers and training loop as the video models; prints 'test accuracy: 0.XXXX'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", choices=sorted(DEFAULTS))
    p.add_argument("--data", type=Path, help="folder of the official files (MNIST IDX, CIFAR-10 *.bin)")
    p.add_argument("--download", action="store_true", help="fetch the official archives (checksummed) first")
    p.add_argument("--cache", type=Path, help="download cache (default $ACTIONREC_CACHE or ~/.cache/actionrec)")
    p.add_argument("--model", help="model name (default: mnist-2conv / cifar-vgg)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float, default=argparse.SUPPRESS, help="L2 weight decay (default: 0 MNIST, 5e-4 CIFAR-10)")
    p.add_argument("--crop-padding", type=int, metavar="PX", default=argparse.SUPPRESS,
                   help="augmentation: random crops of the image padded by PX zero pixels (default: 0 MNIST, 4 CIFAR-10)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="augmentation: random horizontal flips (default: off for MNIST, on for CIFAR-10)")
    p.add_argument("--limit", type=int, help="use only the first N training images (quick tries)")
    p.add_argument("--validation", type=int, default=0, metavar="N",
                   help="hold out the last N training images as a validation set (for choosing settings "
                        "without looking at the test set); the test accuracy is that of the last epoch")
    p.add_argument("--out", type=Path, help="model file (default models/<model>-<dataset>.h5)")
    p.add_argument("--device", default=None, help="cpu or gpu (default $ACTIONREC_DEVICE or cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start again")
    p.set_defaults(func=run)
