"""Sub-commands ``synth``, ``preprocess`` and ``info``: video folders to HDF5 cube datasets."""

from __future__ import annotations

import argparse

from actionrec.cli.arguments import number_list


def _size(text):
    from actionrec.video import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers):
    """Add this module's sub-commands to the ``actionrec`` parser."""
    p = subparsers.add_parser("synth", help="write synthetic KTH-style clips (offline data for demos and tests)",
                              description="Write synthetic clips in the KTH layout OUT_DIR/<action>/personXX_<action>_dY_uncomp.avi.")
    p.add_argument("out_dir")
    p.add_argument("--persons", type=number_list, default=list(range(1, 10)), help="person numbers and ranges, e.g. 1-9 or 1,4,11-14 (default 1-9)")
    p.add_argument("--scenarios", type=number_list, default=[1, 3], help="scenarios 1-4 (default 1,3)")
    p.add_argument("--seconds", type=float, default=2.4, help="clip length (default 2.4 s at 25 fps)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_synth)

    p = subparsers.add_parser("preprocess", help="video folder -> HDF5 cube dataset (resumable, appendable)",
                              description="Decode ROOT/<action>/<videos>, compute hardwired channels and write "
                                          "OUT.h5. Rerun the same command to resume an interrupted run or to "
                                          "append new videos.")
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--sequences", help="KTH 00sequences.txt: cut cubes only inside annotated subsequences")
    p.add_argument("--frames", type=int, default=9, help="frames per cube (Ji et al.: 9 for 80x60, 7 for 60x40)")
    p.add_argument("--size", type=_size, default=(80, 60), help="working size WxH (default 80x60)")
    p.add_argument("--stride", type=int, default=None, help="frames between cube starts (default 4)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_preprocess)

    p = subparsers.add_parser("info", help="summary of an HDF5 cube dataset",
                              description="Classes, videos and cubes per class and split, skipped files.")
    p.add_argument("data")
    p.add_argument("--split", default="official", choices=["official", "ji"])
    p.add_argument("--trial", type=int, default=0)
    p.set_defaults(func=run_info)


def run_synth(args) -> int:
    from actionrec.synth import make_synthetic_kth

    paths = make_synthetic_kth(args.out_dir, persons=args.persons, scenarios=args.scenarios,
                               seconds=args.seconds, seed=args.seed, progress=True)
    print(f"wrote {len(paths)} clips to {args.out_dir}")
    return 0


def run_preprocess(args) -> int:
    from actionrec.preprocess import DEFAULT_STRIDE, preprocess_folder

    s = preprocess_folder(args.root, args.out, sequences=args.sequences, frames=args.frames, size=args.size,
                          stride=args.stride or DEFAULT_STRIDE, workers=args.workers,
                          progress=not args.no_progress)
    print(f"{s['out']}: {s['videos']} videos, {s['frames']} frames, {s['cubes']} cubes, "
          f"{len(s['classes'])} classes ({', '.join(s['classes'])})")
    if s["new_videos"] == 0 and s["seconds"] == 0.0:
        print("up to date: every video of the folder is already in the dataset (or in its skip list)")
    print(f"this run: {s['new_videos']} videos, {s['new_frames']} frames in {s['seconds']:.1f} s "
          f"({s['frames_per_s']:.0f} frames/s)")
    if s["not_annotated"]:
        print(f"not in the sequences file (whole video used): {', '.join(s['not_annotated'])}")
    if s["skipped"]:
        print(f"skipped {len(s['skipped'])} files:")
        for _, cause in s["skipped"]:
            print(f"  {cause}")
    return 0


def run_info(args) -> int:
    from actionrec.datasets.cubes import CubeDataset

    with CubeDataset(args.data) as d:
        print(d.summary(split=args.split, trial=args.trial))
    return 0
