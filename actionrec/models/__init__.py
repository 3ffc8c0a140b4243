"""Model architectures by name: the Ji et al. 3D CNNs (``ji``) and the 2D baselines (``baselines``).

``build_model(name, num_classes, **options)`` returns a ``Sequential``; ``MODELS`` maps each name to
its ``ModelSpec`` (builder, input shape, description). Modules register their models on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable  # builder(num_classes, **options) -> Sequential
    input_shape: tuple  # per-sample input shape, e.g. (1, 33, 60, 40) or (1, 28, 28)
    description: str
    kind: str  # "video" or "image"


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


def build_model(name: str, num_classes: int, **options):
    from actionrec.errors import ActionrecError

    _load_all()
    if name not in MODELS:
        raise ActionrecError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name].builder(num_classes, **options)


def _load_all():
    """Import the modules that register models (kept lazy so ``import actionrec`` stays light)."""
    import importlib

    for mod in ("actionrec.models.ji", "actionrec.models.baselines"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
