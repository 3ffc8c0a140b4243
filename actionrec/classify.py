"""Classify video clips with a trained model: slide cubes over the clip, average their probabilities.

The clip goes through exactly the preprocessing of the model's training data (stored in the model
file), so a model trained on 80x60 cubes of 9 frames sees 80x60 cubes of 9 frames here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from actionrec.errors import ActionrecError
from actionrec.evaluation import softmax
from actionrec.training import model_array_module
from actionrec.backend import to_device, to_numpy


def model_preprocessing(model, model_path) -> dict:
    """The preprocessing settings stored in a video model, or a one-line error for other models."""
    prep = model.metadata.get("preprocessing")
    if not prep or "frames" not in prep:  # 2D image models store their image normalisation here
        raise ActionrecError(f"{model_path} has no video preprocessing settings (is it a 2D image model?): "
                             "classify needs a 3D model trained with 'actionrec train'")
    return dict(prep)


def classify_clip(model, clip, model_path="model", stride=None, batch_size: int = 64) -> dict:
    """{"clip", "label", "probabilities": {class: p}, "windows": [{"start_frame", "end_frame", "label",
    "probabilities"}]} for one clip; the clip's probabilities are the mean over its windows."""
    from actionrec.preprocess import clip_cubes

    prep = model_preprocessing(model, model_path)
    classes = list(model.metadata.get("classes") or [])
    cubes, starts, _ = clip_cubes(str(clip), prep, stride)
    expected = model.metadata.get("input_shape")
    if expected is not None and tuple(cubes.shape[1:]) != tuple(expected):
        raise ActionrecError(f"model {model_path} expects cubes of shape {tuple(expected)} but its preprocessing "
                             f"gives {tuple(cubes.shape[1:])} for {clip}: the model file is inconsistent")
    if len(cubes) == 0:
        raise ActionrecError(f"{clip} is too short for one cube of {prep.get('frames', '?')} frames")
    xp = model_array_module(model)
    logits = np.concatenate([to_numpy(model.forward(to_device(cubes[i:i + batch_size], xp), training=False))
                             for i in range(0, len(cubes), batch_size)])
    if not classes:
        classes = [str(k) for k in range(logits.shape[1])]
    probs = softmax(logits)
    span = cube_span(prep)
    windows = [{"start_frame": int(s), "end_frame": int(s) + span - 1, "label": classes[int(p.argmax())],
                "probabilities": {c: float(v) for c, v in zip(classes, p)}} for s, p in zip(starts, probs)]
    mean = probs.mean(axis=0)
    return {"clip": str(clip), "label": classes[int(mean.argmax())],
            "probabilities": {c: float(v) for c, v in zip(classes, mean)}, "windows": windows}


def cube_span(prep: dict) -> int:
    """Number of video frames one cube covers (frames, spread by the frame step if any)."""
    frames = int(prep.get("frames", 1))
    step = int(prep.get("frame_step", prep.get("step", 1)) or 1)
    return (frames - 1) * step + 1


def format_result(result: dict, top_k: int = 3) -> str:
    ranked = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])[:max(1, top_k)]
    probs = ", ".join(f"{c} {p:.3f}" for c, p in ranked)
    return f"{result['clip']}: {result['label']}  ({probs}; {len(result['windows'])} windows)"


def annotate_clip(result: dict, out_path) -> Path:
    """Write the clip to ``out_path`` (mp4) with the running label of the latest window drawn on it."""
    import cv2

    out_path = Path(out_path)
    cap = cv2.VideoCapture(result["clip"])
    if not cap.isOpened():
        raise ActionrecError(f"cannot reopen {result['clip']} to annotate it")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    starts = np.array([w["start_frame"] for w in result["windows"]])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.stem}.tmp-{os.getpid()}{out_path.suffix or '.mp4'}")
    writer = None
    index = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
                if not writer.isOpened():
                    raise ActionrecError(f"cannot write {out_path}: OpenCV has no mp4v encoder here")
            k = int(np.clip(np.searchsorted(starts, index, side="right") - 1, 0, len(starts) - 1))
            win = result["windows"][k]
            text = f"{win['label']} {win['probabilities'][win['label']]:.2f}"
            scale = max(0.35, frame.shape[1] / 400)
            org = (4, int(14 * scale / 0.4))
            cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 255), 1, cv2.LINE_AA)
            writer.write(frame)
            index += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise ActionrecError(f"{result['clip']} has no readable frames to annotate")
    os.replace(tmp, out_path)
    return out_path
