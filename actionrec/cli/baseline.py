"""``actionrec baseline mnist|cifar10``: the 2D baselines, trained by the same loop as the video nets."""

from __future__ import annotations

import argparse
from pathlib import Path

from actionrec.errors import ActionrecError

# Per-dataset defaults: the settings docs/results.md reports (model, schedule, augmentation).
DEFAULTS = {
    "mnist": dict(model="mnist-2conv", epochs=4, batch_size=128, optimizer="adam", lr=1e-3,
                  weight_decay=0.0, schedule="cosine", crop_padding=0, flip=False),
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


def make_sources(data: dict, crop_padding=0, flip=False, seed=0, limit=None):
    """Training source (augmented when asked) and test source with the training set's normalisation."""
    from actionrec.augment import Augment
    from actionrec.datasets.images import ImageArraySource

    x, y = data["train"]
    if limit:
        x, y = x[:limit], y[:limit]
    augment = Augment(crop_padding, flip) if (crop_padding or flip) else None
    train = ImageArraySource(x, y, data["classes"], augment=augment, seed=seed)
    test = ImageArraySource(*data["test"], data["classes"], mean=train.mean, std=train.std)
    return train, test


def run(args) -> int:
    try:
        from actionrec.training import Trainer  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "actionrec.training":
            raise
        raise ActionrecError("the training loop (actionrec.training) is not installed in this build") from None
    raise ActionrecError("baseline training is not wired to actionrec.training yet")


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
    p.add_argument("--limit", type=int, help="use only the first N training images (quick tries)")
    p.add_argument("--out", type=Path, help="model file (default models/<model>-<dataset>.h5)")
    p.add_argument("--device", default=None, help="cpu or gpu (default $ACTIONREC_DEVICE or cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
