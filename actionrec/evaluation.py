"""Evaluate a trained model: cube-level and video-level accuracy, top-k, per-class precision / recall /
F1 and confusion matrices (scikit-learn), as a JSON-able report and as printed tables.

Video-level predictions average the softmax probabilities of all cubes of a video, as in the paper.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actionrec.errors import ActionrecError, DataError
from actionrec.training import predict_logits


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of numpy logits (n, K), computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_model_file(path):
    """Load a model written by ``actionrec train`` (a ``Sequential`` with ``.metadata``)."""
    from actionrec.nn import Sequential

    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file {path} does not exist")
    try:
        model = Sequential.load(str(path))
    except ActionrecError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is not an actionrec model file ({exc}); train one with 'actionrec train'") from None
    model.metadata = dict(getattr(model, "metadata", None) or {})
    return model


def check_compatible(model, model_path, dataset, data_path):
    """Raise a one-line error when the dataset's cubes or classes do not fit the model.

    Returns the class subset to evaluate on: None when the model knows exactly the dataset's classes,
    else the model's class names (it was trained with ``--classes``), all of which the dataset must hold.
    """
    meta = model.metadata
    shape = meta.get("input_shape")
    if shape is not None and tuple(shape) != tuple(dataset.input_shape):
        raise ActionrecError(
            f"model {model_path} expects inputs of shape {tuple(shape)} but {data_path} holds cubes of shape "
            f"{tuple(dataset.input_shape)}: preprocess the data with the model's settings")
    classes = meta.get("classes")
    if classes is None or list(classes) == list(dataset.classes):
        return None
    missing = [c for c in classes if c not in dataset.classes]
    if missing:
        raise ActionrecError(f"model {model_path} was trained on classes {list(classes)} but {data_path} "
                             f"has {list(dataset.classes)} (no {', '.join(missing)})")
    return list(classes)


def top_k_accuracy(probs, labels, k: int) -> float:
    """Fraction of rows whose true label is among the k most probable classes."""
    k = min(int(k), probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def video_probabilities(probs, labels, videos):
    """Average cube probabilities per video: (video_probs (m, K), video_labels (m,), video_ids (m,))."""
    videos = np.asarray(videos)
    ids, inverse = np.unique(videos, return_inverse=True)
    sums = np.zeros((len(ids), probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    video_labels = np.zeros(len(ids), dtype=np.int64)
    video_labels[inverse] = labels
    return sums / counts, video_labels, ids


def level_report(probs, labels, classes, top_k=(1, 3)) -> dict:
    """Accuracy, top-k, per-class precision/recall/F1/support and confusion matrix of one level."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.asarray(labels, dtype=np.int64)
    k_all = list(range(len(classes)))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=k_all, zero_division=0)
    return {
        "count": int(len(labels)),
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "top_k": {str(k): top_k_accuracy(probs, labels, k) for k in top_k if k <= len(classes)},
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)],
        "confusion_matrix": confusion_matrix(labels, pred, labels=k_all).tolist(),
    }


def evaluate_source(model, source, classes, top_k=(1, 3), batch_size: int = 64) -> dict:
    """Report for a ``CubeSource`` (it needs ``videos``): {"classes", "cube": {...}, "video": {...}}."""
    if len(source) == 0:
        raise ActionrecError("the selected split has no cubes: check --split and the person options")
    logits, labels = predict_logits(model, source, batch_size)
    probs = softmax(logits)
    report = {"classes": list(classes), "cube": level_report(probs, labels, classes, top_k)}
    videos = getattr(source, "videos", None)
    if videos is not None:
        vprobs, vlabels, _ = video_probabilities(probs, labels, videos)
        report["video"] = level_report(vprobs, vlabels, classes, top_k)
    return report


def format_report(report: dict) -> str:
    """Human-readable tables: summary, per-class metrics and confusion matrix for each level."""
    classes = report["classes"]
    width = max(8, max(len(c) for c in classes) + 1)
    lines = []
    for level in ("cube", "video"):
        if level not in report:
            continue
        r = report[level]
        topk = ", ".join(f"top-{k} {v:.3f}" for k, v in r["top_k"].items() if k != "1")
        lines.append(f"{level}-level: {r['count']} {level}s, accuracy {r['accuracy']:.3f}"
                     + (f" ({topk})" if topk else ""))
        lines.append(f"  {'class':<{width}} precision  recall      f1  support")
        for row in r["per_class"]:
            lines.append(f"  {row['class']:<{width}} {row['precision']:9.3f} {row['recall']:7.3f} "
                         f"{row['f1']:7.3f} {row['support']:8d}")
        lines.append("  confusion matrix (rows: true, columns: predicted)")
        short = [c[:7] for c in classes]  # "handclapping" and "handwaving" stay distinct
        cell = max(6, max(len(s) for s in short) + 1)
        lines.append("  " + " " * width + "".join(f"{s:>{cell}}" for s in short))
        for c, row in zip(classes, r["confusion_matrix"]):
            lines.append(f"  {c:<{width}}" + "".join(f"{v:>{cell}d}" for v in row))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
