"""Benchmark the video pipeline: preprocessing frames/s, disk bytes per frame, random-batch read speed.

    python scripts/bench_preprocess.py [ROOT] [--sequences FILE] [--workers 2] [--out /tmp/bench.h5]

ROOT defaults to ../shared/data/kth (with its 00sequences.txt). Prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KTH_TOTAL_FRAMES = 290_000  # the full KTH set (599 clips), for the extrapolation


def farneback_alone(root, seconds=3.0):
    """Frames/s of Farnebäck alone at 80x60 on one core (the ceiling of one worker)."""
    import cv2

    from actionrec.hardwired import farneback_flow
    from actionrec.video import list_videos, read_gray_frames

    cv2.setNumThreads(1)
    frames = read_gray_frames(list_videos(root)[0], (80, 60))
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        farneback_flow(frames)
        done += len(frames) - 1
    return done / (time.perf_counter() - t0)


def read_speed(path, batch=64, batches=50, seed=0):
    from actionrec.datasets.cubes import CubeDataset

    rng = np.random.default_rng(seed)
    with CubeDataset(path) as d:
        d.read_cubes(rng.integers(0, len(d), batch))  # open caches
        t0 = time.perf_counter()
        for _ in range(batches):
            d.read_cubes(rng.integers(0, len(d), batch))
        dt = time.perf_counter() - t0
    return batch * batches / dt, dt / batches * 1000


def main():
    from actionrec.preprocess import preprocess_folder

    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(here / ".." / "shared" / "data" / "kth"))
    ap.add_argument("--sequences", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.root)
    seq = args.sequences or (root / "00sequences.txt" if (root / "00sequences.txt").exists() else None)
    out = Path(args.out or os.path.join(tempfile.mkdtemp(prefix="bench-"), "bench.h5"))
    if out.exists():
        out.unlink()
    import resource

    def cpu():
        return sum(getattr(resource.getrusage(w), k) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for k in ("ru_utime", "ru_stime"))

    c0 = cpu()
    s = preprocess_folder(root, out, sequences=seq, workers=args.workers, progress=False)
    cpu_per_frame = (cpu() - c0) / s["frames"]
    size = os.path.getsize(out)
    per_frame = size / s["frames"]
    cubes_s, ms = read_speed(out)
    flow_s = farneback_alone(root)
    print("| measure | value |\n|---|---|")
    print(f"| preprocess (decode + Farnebäck + write), {args.workers} workers | {s['frames_per_s']:.0f} frames/s "
          f"({s['new_videos']} videos, {s['frames']} frames in {s['seconds']:.1f} s) |")
    print(f"| CPU time per frame (all processes) | {cpu_per_frame * 1000:.2f} ms, i.e. "
          f"{args.workers / cpu_per_frame:.0f} frames/s on {args.workers} otherwise idle cores |")
    print(f"| load average while measuring (1 min) | {os.getloadavg()[0]:.1f} |")
    print(f"| Farnebäck alone, 80x60, one core | {flow_s:.0f} frames/s |")
    print(f"| disk per video frame at 80x60 | {per_frame:.0f} bytes ({size / 2**20:.1f} MiB for {s['frames']} frames) |")
    print(f"| full KTH ({KTH_TOTAL_FRAMES:,} frames), extrapolated | {per_frame * KTH_TOTAL_FRAMES / 2**30:.2f} GiB, "
          f"{KTH_TOTAL_FRAMES / s['frames_per_s'] / 60:.1f} min |")
    print(f"| random batch of 64 cubes (9x80x60, float32 maps) | {ms:.0f} ms ({cubes_s:.0f} cubes/s) |")
    print(f"| cubes / skipped | {s['cubes']} / {len(s['skipped'])} |")


if __name__ == "__main__":
    main()
