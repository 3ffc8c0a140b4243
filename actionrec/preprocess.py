"""KTH-style video folder -> self-describing HDF5 cube dataset (layout: docs/hdf5-format.md).

Decoding and optical flow run in worker processes (OpenCV can abort a whole process on some files); the
parent alone writes the HDF5 file. Work goes into ``OUT.h5.partial``; each video is committed (counts
updated, file flushed) only after its frames are written, so an interrupted run resumes where it
stopped, and ``OUT.h5`` appears (``os.replace``) only when every video is done: a file that reads as
complete always is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections import deque
from pathlib import Path

import numpy as np

from actionrec.errors import DataError
from actionrec.hardwired import (CHANNELS, FARNEBACK_PARAMS, FLOW_GAIN, FLOW_QUANT, GRAD_GAIN, cube_maps,
                                 farneback_flow, quantise_flow, segments)

FORMAT = "actionrec-cubes"
FORMAT_VERSION = 1
DEFAULT_STRIDE = 4  # frames between cube starts; overlapping cubes cost no storage
CHUNK_FRAMES = 4
COMPRESSION = "lzf"
FILE_TIMEOUT_S = 600.0


# ---------------------------------------------------------------------------------------------- preprocessing


def make_preprocessing(frames=9, size=(80, 60), stride=DEFAULT_STRIDE) -> dict:
    """Every parameter that defines the maps a model sees (stored in datasets and model files)."""
    frames, stride = int(frames), int(stride)
    width, height = int(size[0]), int(size[1])
    if frames < 2:
        raise DataError(f"frames must be >= 2 (got {frames}); Ji et al. use 7 or 9")
    if stride < 1:
        raise DataError(f"stride must be >= 1 (got {stride})")
    return {
        "format_version": FORMAT_VERSION,
        "frames": frames, "width": width, "height": height, "stride": stride,
        "channels": list(CHANNELS), "segments": list(segments(frames)),
        "color": "cv2.COLOR_BGR2GRAY", "resize": "cv2.INTER_AREA",
        "flow": {"method": "cv2.calcOpticalFlowFarneback", "direction": "frame t -> t+1",
                 "params": dict(FARNEBACK_PARAMS)},
        "flow_storage": {"dtype": "int8", "units_per_pixel": FLOW_QUANT},
        "gradient": "numpy.gradient (central differences, one-sided at borders) of gray/255",
        "normalisation": {"gray": "(gray/255 - 0.5) * 2", "grad_gain": GRAD_GAIN, "flow_gain": FLOW_GAIN,
                          "flow": "flow_pixels * flow_gain"},
    }


def decode_and_flow(path, size, flow_params):
    """Worker job: grey frames uint8 (T, H, W) and quantised flow int8 (T-1, 2, H, W)."""
    from actionrec.video import read_gray_frames

    gray = read_gray_frames(path, size=size)
    return gray, quantise_flow(farneback_flow(gray, flow_params))


def clip_cubes(path, preprocessing: dict, stride=None):
    """The exact training preprocessing applied to one clip (used by ``classify``).

    Returns (cubes float32 (n, 1, 5f-2, H, W), start_frames int64 (n,), n_frames). DataError for
    unreadable clips or clips shorter than f frames.
    """
    f = int(preprocessing["frames"])
    size = (int(preprocessing["width"]), int(preprocessing["height"]))
    stride = int(stride or preprocessing["stride"])
    gray, flow_q = decode_and_flow(path, size, preprocessing["flow"]["params"])
    n = len(gray)
    if n < f:
        raise DataError(f"{path}: {n} frames, fewer than the {f} frames one cube needs")
    starts = np.arange(0, n - f + 1, stride, dtype=np.int64)
    cubes = cube_maps(gray[starts[:, None] + np.arange(f)], flow_q[starts[:, None] + np.arange(f - 1)],
                      preprocessing["flow_storage"]["units_per_pixel"])
    return cubes, starts, n


def cube_starts(ranges, frames: int, stride: int) -> list[int]:
    """Start frames of the cubes cut inside each half-open range (cubes never cross a range end)."""
    return [s for a, b in ranges for s in range(a, b - frames + 1, stride)]


# ---------------------------------------------------------------------------------------------- workers


def _worker_main(conn):
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    cv2.setNumThreads(1)
    conn.send("ready")
    while True:
        task = conn.recv()
        if task is None:
            return
        index, path, size, params = task
        try:
            gray, flow_q = decode_and_flow(path, size, params)
            conn.send(("ok", index, gray, flow_q))
        except DataError as exc:
            conn.send(("error", index, str(exc), None))
        except Exception as exc:  # a decoder failure must be a skip, never a dead job
            conn.send(("error", index, f"{path}: {type(exc).__name__}: {exc}", None))


def _exit_cause(code) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.task = None
        self.started = 0.0
        # a worker that cannot even start (e.g. a script without an `if __name__ == "__main__":` guard
        # under the spawn start method) is a setup problem, not a bad video
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            self.proc.kill()
            raise DataError("worker processes could not start; run preprocessing from the `actionrec` command "
                            "or from a script whose main code is under `if __name__ == \"__main__\":`")

    def stop(self, kill=False):
        if kill or not self.proc.is_alive():
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.proc.kill()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_isolated(tasks, size, flow_params, workers=2, timeout=FILE_TIMEOUT_S):
    """Run ``decode_and_flow`` on (index, path) tasks in worker processes, yielding results as they come.

    Yields ("ok", index, gray, flow_q) or ("error", index, cause, None). A worker that dies (OpenCV abort,
    segfault, out of memory) or exceeds ``timeout`` seconds on one file yields an error for that file
    and is replaced; the job goes on.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # fork after OpenCV/h5py initialisation is not safe
    queue = deque(tasks)
    pool = [_Worker(ctx) for _ in range(max(1, min(int(workers), len(queue))))] if queue else []
    try:
        while queue or any(w.task is not None for w in pool):
            for w in pool:
                if w.task is None and queue:
                    w.task = queue.popleft()
                    w.started = time.monotonic()
                    w.conn.send((w.task[0], str(w.task[1]), size, flow_params))
            busy = [w for w in pool if w.task is not None]
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                index, path = w.task
                result = None
                if w.conn.poll():
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                if result is not None:
                    w.task = None
                    yield result
                    continue
                dead = not w.proc.is_alive()
                late = time.monotonic() - w.started > timeout
                if dead or late:
                    w.stop(kill=True)
                    cause = (f"decoder crashed the worker process ({_exit_cause(w.proc.exitcode)})" if dead
                             else f"decoding took longer than {timeout:.0f} s")
                    pool[i] = _Worker(ctx)
                    yield ("error", index, f"{path}: {cause}", None)
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)


# ---------------------------------------------------------------------------------------------- the file


def _software() -> dict:
    import cv2
    import h5py

    from actionrec import __version__
    return {"actionrec": __version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}


_VIDEO_FIELDS = {"path": "str", "name": "str", "action": "str", "person": "i4", "scenario": "i4",
                 "offset": "i8", "n_frames": "i4", "label": "i4"}


def _create(f, prep: dict):
    import h5py

    h, w = prep["height"], prep["width"]
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["complete"] = False
    f.attrs["preprocessing"] = json.dumps(prep)
    f.attrs["frames_committed"] = 0
    f.attrs["videos_committed"] = 0
    f.attrs["classes"] = json.dumps([])
    f.attrs["software"] = json.dumps(_software())
    frames = f.create_group("frames")
    frames.create_dataset("gray", (0, h, w), np.uint8, maxshape=(None, h, w), chunks=(CHUNK_FRAMES, h, w),
                          compression=COMPRESSION, shuffle=False)
    frames.create_dataset("flow", (0, 2, h, w), np.int8, maxshape=(None, 2, h, w),
                          chunks=(CHUNK_FRAMES, 2, h, w), compression=COMPRESSION, shuffle=False)
    str_t = h5py.string_dtype()
    for group, fields in (("videos", _VIDEO_FIELDS), ("segments", {"video": "i4", "start": "i4", "stop": "i4"}),
                          ("skipped", {"path": "str", "cause": "str"})):
        g = f.create_group(group)
        for name, dt in fields.items():
            g.create_dataset(name, (0,), str_t if dt == "str" else dt, maxshape=(None,), chunks=(256,))


def _append(ds, values):
    if len(values) == 0:
        return
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def _open_partial(partial: Path, final: Path, prep: dict):
    """Open (resuming), copy (appending to a finished dataset) or create the work file."""
    import h5py

    if not partial.exists() and final.exists():
        _check_same(final, prep)
        shutil.copy2(final, partial)  # a finished file is sound: extend a copy of it in place
        f = h5py.File(partial, "r+")
        f.attrs["complete"] = False
        return f
    if partial.exists() and _rebuild_partial(partial, prep):
        return h5py.File(partial, "r+")
    f = h5py.File(partial, "w")
    _create(f, prep)
    return f


def _rebuild_partial(partial: Path, prep: dict) -> bool:
    """Copy the committed part of an interrupted run into a fresh file that replaces it.

    A killed run can leave HDF5 metadata written half-way after its last commit (writing into such a
    file fails later), so the work file is never extended in place: what was committed is copied.
    Returns False (start again) when even the committed part cannot be read.
    """
    import h5py

    try:
        old = h5py.File(partial, "r")
    except OSError as exc:
        if "lock" in str(exc).lower():
            raise DataError(f"{partial}: another `actionrec preprocess` is writing this dataset; wait for it "
                            "or stop it first") from None
        old = None
    fresh = partial.with_name(partial.name + ".rebuild")
    if old is not None:
        try:
            _check_same(partial, prep, old)
            with h5py.File(fresh, "w") as new:
                _create(new, prep)
                _copy_committed(old, new)
            old.close()
            os.replace(fresh, partial)
            return True
        except DataError:
            raise
        except Exception:  # damaged before its commit point; nothing trustworthy to keep
            pass
        finally:
            old.close()
            if fresh.exists():
                fresh.unlink()
    print(f"actionrec: {partial} was damaged when the last run was killed; starting it again")
    partial.unlink()
    return False


def _copy_committed(old, new, block=1024):
    nv, nf = int(old.attrs["videos_committed"]), int(old.attrs["frames_committed"])
    for name, dt in _VIDEO_FIELDS.items():
        values = old["videos"][name][:nv]
        _append(new["videos"][name], [_s(v) for v in values] if dt == "str" else values)
    for name in ("gray", "flow"):
        for a in range(0, nf, block):
            _append(new["frames"][name], old["frames"][name][a:min(a + block, nf)])
    seg_video = old["segments/video"][:]
    keep = int(np.searchsorted(seg_video, nv))
    for name in ("video", "start", "stop"):
        _append(new["segments"][name], old["segments"][name][:keep])
    n_skip = min(old["skipped/path"].shape[0], old["skipped/cause"].shape[0])
    for name in ("path", "cause"):
        _append(new["skipped"][name], [_s(v) for v in old["skipped"][name][:n_skip]])
    new.attrs["frames_committed"], new.attrs["videos_committed"] = nf, nv
    new.flush()


def _check_same(path, prep, f=None):
    import h5py

    try:
        own = f if f is not None else h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc}); delete it or choose another output") from None
    try:
        if own.attrs.get("format") != FORMAT:
            raise DataError(f"{path}: exists and is not an actionrec cube dataset; choose another output file")
        old = json.loads(own.attrs["preprocessing"])
        for key in ("frames", "width", "height", "stride", "flow", "flow_storage"):
            if old.get(key) != prep.get(key):
                raise DataError(f"{path}: was made with {key}={old.get(key)}, not {prep.get(key)}; "
                                f"use the same options or another output file")
    finally:
        if f is None:
            own.close()


def _commit_video(f, meta: dict, gray, flow_q, ranges):
    gd, fd = f["frames/gray"], f["frames/flow"]
    offset = int(f.attrs["frames_committed"])
    n = len(gray)
    flow = np.zeros((n,) + fd.shape[1:], np.int8)  # flow[t] = t -> t+1; the last frame has none
    flow[:n - 1] = flow_q
    gd.resize(offset + n, axis=0)
    gd[offset:] = gray
    fd.resize(offset + n, axis=0)
    fd[offset:] = flow
    video = int(f.attrs["videos_committed"])
    row = dict(meta, offset=offset, n_frames=n, label=-1)
    for name in _VIDEO_FIELDS:
        _append(f["videos"][name], [row[name]])
    ranges = [(a, min(b, n)) for a, b in ranges if a < n]
    if ranges:
        _append(f["segments/video"], [video] * len(ranges))
        _append(f["segments/start"], [a for a, _ in ranges])
        _append(f["segments/stop"], [b for _, b in ranges])
    f.attrs["frames_committed"] = offset + n
    f.attrs["videos_committed"] = video + 1  # the commit point
    f.flush()


def _record_skip(f, path, cause):
    _append(f["skipped/path"], [str(path)])
    _append(f["skipped/cause"], [cause])
    f.flush()


def _finalise(f, prep, classes):
    """Labels from the sorted class list, the cube index, then the file-level complete flag."""
    actions = [a.decode() if isinstance(a, bytes) else a for a in f["videos/action"][:]]
    classes = sorted(set(classes) | set(actions))
    f["videos/label"][:] = np.array([classes.index(a) for a in actions], np.int32)
    seg_v, seg_a, seg_b = (f["segments"][k][:] for k in ("video", "start", "stop"))
    cv, cs = [], []
    for v, a, b in zip(seg_v, seg_a, seg_b):
        starts = cube_starts([(int(a), int(b))], prep["frames"], prep["stride"])
        cv.extend([int(v)] * len(starts))
        cs.extend(starts)
    # Videos are committed in the order the workers finish them (and appended runs come last); the
    # cube index follows the videos' paths instead, so that the same files always give the same cube
    # numbers, and a seeded training run the same batches.
    path_rank = np.argsort(np.argsort([_s(p) for p in f["videos/path"][:]], kind="stable"))
    cv, cs = np.asarray(cv, np.int64), np.asarray(cs, np.int64)
    order = np.argsort(path_rank[cv], kind="stable")
    cv, cs = cv[order], cs[order]
    if "cubes" in f:
        del f["cubes"]
    g = f.create_group("cubes")
    g.create_dataset("video", data=np.asarray(cv, np.int32))
    g.create_dataset("start", data=np.asarray(cs, np.int32))
    f.attrs["classes"] = json.dumps(classes)
    f.flush()
    f.attrs["complete"] = True
    f.flush()
    return classes, len(cv)


def preprocess_folder(root, out_h5, sequences=None, frames=9, size=(80, 60), stride=DEFAULT_STRIDE, workers=2,
                      progress=True, timeout=FILE_TIMEOUT_S) -> dict:
    """Turn ``root/<action>/personXX_<action>_dY_uncomp.avi`` into the HDF5 cube dataset ``out_h5``.

    sequences: KTH's ``00sequences.txt`` (cubes only inside annotated subsequences) or None (whole
    videos). Resumes an interrupted run of the same command; appends new videos to a finished dataset.
    Returns a summary dict: videos, frames, cubes, skipped [(path, cause)], new_videos, new_frames,
    seconds, frames_per_s, classes, out, and the persons/videos with no annotation.
    """
    from actionrec.datasets.kth import parse_name, read_sequences
    from actionrec.video import list_videos

    prep = make_preprocessing(frames, size, stride)
    out = Path(out_h5)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise DataError(f"{out}: the output must end in .h5 or .hdf5")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent}: output folder does not exist")
    root = Path(root)
    files = list_videos(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no action sub-folders (expected <root>/<action>/<video files>)")
    seq = read_sequences(sequences) if sequences else None
    partial = out.with_name(out.name + ".partial")
    if not partial.exists() and out.exists() and _up_to_date(out, prep, files):
        return _existing_summary(out)
    f = _open_partial(partial, out, prep)
    t0 = time.monotonic()
    new_frames = new_videos = 0
    not_annotated = []
    with contextlib.ExitStack() as stack:
        stack.callback(f.close)
        done = {_s(p) for p in f["videos/path"][:]} | {_s(p) for p in f["skipped/path"][:]}
        todo, metas = [], {}
        for p in files:
            key = os.path.abspath(p)  # symlinks kept: the name is what the user sees
            if key in done:
                continue
            try:
                meta = parse_name(p)
            except DataError as exc:
                _record_skip(f, key, str(exc))
                continue
            meta = {"path": key, "name": meta["name"], "action": p.parent.name, "person": meta["person"],
                    "scenario": meta["scenario"]}
            metas[len(todo)] = meta
            todo.append((len(todo), p))
        bar = _progress_bar(len(todo), progress)
        results = run_isolated(todo, (prep["width"], prep["height"]), prep["flow"]["params"], workers=workers,
                               timeout=timeout)
        stack.enter_context(contextlib.closing(results))  # workers stop on any exit, Ctrl-C included
        for status, index, a, b in results:
            meta = metas[index]
            if status == "ok":
                n = len(a)
                if seq is None:
                    ranges = [(0, n)]
                elif meta["name"] in seq:
                    ranges = seq[meta["name"]]
                else:
                    ranges = [(0, n)]
                    not_annotated.append(meta["name"])
                _commit_video(f, meta, a, b, ranges)
                new_frames += n
                new_videos += 1
            else:
                _record_skip(f, meta["path"], a)
                if bar is not None:
                    bar.write(f"skipped {a}")
            if bar is not None:
                el = max(time.monotonic() - t0, 1e-9)
                bar.set_postfix_str(f"{new_videos / el:.1f} files/s, {new_frames / el:.0f} frames/s")
                bar.update(1)
        if bar is not None:
            bar.close()
        classes, n_cubes = _finalise(f, prep, classes)
        skipped = list(zip((_s(p) for p in f["skipped/path"][:]), (_s(c) for c in f["skipped/cause"][:])))
        summary = {"out": str(out), "videos": int(f.attrs["videos_committed"]),
                   "frames": int(f.attrs["frames_committed"]), "cubes": n_cubes, "classes": classes,
                   "skipped": skipped, "new_videos": new_videos, "new_frames": new_frames,
                   "not_annotated": not_annotated}
    os.replace(partial, out)
    summary["seconds"] = time.monotonic() - t0
    summary["frames_per_s"] = new_frames / max(summary["seconds"], 1e-9)
    return summary


def _up_to_date(out: Path, prep: dict, files) -> bool:
    """True when a finished dataset already holds (or skipped) every file of the folder: nothing to copy."""
    import h5py

    _check_same(out, prep)
    with h5py.File(out, "r") as f:
        if not bool(f.attrs.get("complete", False)):
            return False
        done = {_s(p) for p in f["videos/path"][:]} | {_s(p) for p in f["skipped/path"][:]}
    return all(os.path.abspath(p) in done for p in files)


def _existing_summary(out: Path) -> dict:
    from actionrec.datasets.cubes import CubeDataset

    with CubeDataset(out) as d:
        return {"out": str(out), "videos": len(d.videos), "frames": sum(v["n_frames"] for v in d.videos),
                "cubes": len(d), "classes": list(d.classes), "skipped": list(d.skipped), "new_videos": 0,
                "new_frames": 0, "not_annotated": [], "seconds": 0.0, "frames_per_s": 0.0}


def _s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _progress_bar(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="file", desc="preprocess", dynamic_ncols=True)
