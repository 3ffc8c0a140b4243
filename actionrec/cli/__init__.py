"""The ``actionrec`` command: a thin layer over the library API.

Each command family lives in its own module with a ``register(subparsers)`` function that adds its
sub-commands and sets ``func`` on them (``func(args) -> int``). User errors (``ActionrecError``) are
printed as one line, ``actionrec: error: ...``, with exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from actionrec import __version__
from actionrec.errors import ActionrecError

# Modules that contribute sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "actionrec.cli.video",     # synth, preprocess, info
    "actionrec.cli.train",     # models, train, evaluate, classify, demo
    "actionrec.cli.baseline",  # baseline
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actionrec",
        description="Human action recognition in video with a from-scratch 3D CNN (Ji et al. 2013).",
    )
    parser.add_argument("--version", action="version", version=f"actionrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ActionrecError as exc:
        print(f"actionrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("actionrec: interrupted; finished work is kept (rerun the same command to resume)", file=sys.stderr)
        return 130
