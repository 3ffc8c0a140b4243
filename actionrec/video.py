"""Reading video files as grey frames at a working size (OpenCV decoding, area interpolation).

Decoding a file can abort the whole process (OpenCV aborts inside some decoders), so batch jobs call
these functions from worker processes (see ``actionrec.preprocess``); they are plain functions so a
worker can import and run them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from actionrec.errors import DataError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".mpg", ".mpeg", ".m4v", ".wmv", ".webm")

# First bytes of container formats OpenCV's FFmpeg backend reads; anything else with a video
# extension is rejected before it reaches a decoder.
_MAGIC = (
    (0, b"RIFF"),            # AVI
    (4, b"ftyp"),            # MP4 / MOV / M4V
    (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3"),  # MPEG program / elementary stream
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)


def parse_size(text: str) -> tuple[int, int]:
    """'80x60' -> (80, 60) (width, height); DataError-free ValueError for argparse."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 80x60, not {text!r}") from None
    if w < 8 or h < 8:
        raise ValueError(f"size {text!r} is too small (at least 8x8)")
    return w, h


def probe_video(path) -> None:
    """Cheap checks before decoding: the file exists, is not empty and starts like a video container.

    Raises DataError naming the file and the cause.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not any(head[o:o + len(m)] == m for o, m in _MAGIC):
        raise DataError(f"{path}: not a video file (unknown container header {head[:8]!r})")


def read_gray_frames(path, size=(80, 60), max_frames=None) -> np.ndarray:
    """Decode a video to grey frames resized to ``size`` = (width, height) with area interpolation.

    Returns uint8 (T, height, width). Raises DataError when the file cannot be opened or has no
    decodable frame. Colour frames are converted with OpenCV's BGR->GRAY weights.
    """
    import cv2

    probe_video(path)
    width, height = int(size[0]), int(size[1])
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"{path}: OpenCV cannot open this file (corrupt or unsupported codec)")
        frames = []
        while max_frames is None or len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if frame.ndim == 3:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            if frame.shape != (height, width):
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise DataError(f"{path}: no decodable frame (zero-frame or truncated video)")
    return np.stack(frames).astype(np.uint8, copy=False)


def list_videos(root) -> list[Path]:
    """Video files under ``root/<action>/`` (one level of action folders), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected <root>/<action>/<video files>)")
    files = [p for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
             for p in sorted(d.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    return files
