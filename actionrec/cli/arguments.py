"""Argument types shared by the sub-commands."""

from __future__ import annotations

import argparse


def number_list(text: str) -> list[int]:
    """``"11-14,19 1"`` -> [11, 12, 13, 14, 19, 1]: numbers and inclusive ranges, separated by commas or spaces."""
    numbers = []
    for part in str(text).replace(",", " ").split():
        low, dash, high = part.partition("-")
        try:
            if dash:
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                numbers.extend(range(first, last + 1))
            else:
                numbers.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} in {text!r} is not a number or a range like 11-14 (write e.g. 1,3,11-14)") from None
    if not numbers:
        raise argparse.ArgumentTypeError(f"{text!r} names no numbers (write e.g. 1,3,11-14)")
    return numbers


def class_list(text: str) -> list[str]:
    """``"walking,running"`` -> ["walking", "running"]: class names separated by commas or spaces, in order."""
    names = str(text).replace(",", " ").split()
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: name at least two classes, e.g. walking,running")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a class twice")
    return names
