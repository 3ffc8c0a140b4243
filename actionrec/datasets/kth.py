"""KTH metadata: file names, the official ``00sequences.txt`` annotation, person splits.

File names follow ``personXX_<action>_dY_uncomp.avi``; the class is the action folder. Splits are always
by person (never by clip) so that no person appears in two parts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from actionrec.errors import DataError

NAME_RE = re.compile(r"^person(\d+)_([A-Za-z]+)_d(\d+)(?:_uncomp)?$")
_LINE_RE = re.compile(r"^\s*(person\d+_[A-Za-z]+_d\d+)\s+(.*)$")
_RANGE_RE = re.compile(r"(\d+)\s*-\s*(\d+)")

ALL_PERSONS = tuple(range(1, 26))
OFFICIAL_SPLIT = {
    "train": [11, 12, 13, 14, 15, 16, 17, 18],
    "validation": [19, 20, 21, 23, 24, 25, 1, 4],
    "test": [22, 2, 3, 5, 6, 7, 8, 9, 10],
}
JI_TRIALS = 5
JI_TRAIN, JI_VALIDATION = 16, 3


def parse_name(path) -> dict:
    """'person13_boxing_d2_uncomp.avi' -> {'person': 13, 'action': 'boxing', 'scenario': 2, 'name': ...}."""
    stem = Path(path).stem
    m = NAME_RE.match(stem)
    if not m:
        raise DataError(f"{path}: file name does not follow the KTH pattern personXX_<action>_dY_uncomp.avi")
    base = stem[:-len("_uncomp")] if stem.endswith("_uncomp") else stem
    return {"person": int(m.group(1)), "action": m.group(2).lower(), "scenario": int(m.group(3)), "name": base}


def read_sequences(path) -> dict[str, list[tuple[int, int]]]:
    """Parse KTH's ``00sequences.txt``.

    Returns {'person01_boxing_d1': [(start, stop), ...]} with 0-based, half-open frame ranges (the file's
    ranges are 1-based and inclusive), sorted by start, overlapping ranges merged. Entries marked
    ``*missing*`` map to an empty list. Tabs/spaces and CRLF line endings are accepted.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("latin-1")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the sequences file ({exc.strerror})") from None
    out: dict[str, list[tuple[int, int]]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _LINE_RE.match(line.strip())
        if not m:
            continue
        name, rest = m.group(1), m.group(2)
        if "missing" in rest.lower():
            out[name] = []
            continue
        ranges = []
        for a, b in _RANGE_RE.findall(rest):
            a, b = int(a), int(b)
            if a < 1 or b < a:
                raise DataError(f"{path}:{lineno}: bad frame range {a}-{b} for {name}")
            ranges.append((a - 1, b))
        if not ranges:
            raise DataError(f"{path}:{lineno}: no frame ranges for {name}")
        out[name] = merge_ranges(ranges)
    if not out:
        raise DataError(f"{path}: no 'personXX_action_dY ... frames a-b' entries; is this KTH's 00sequences.txt?")
    return out


def merge_ranges(ranges) -> list[tuple[int, int]]:
    """Sort half-open ranges and merge the overlapping ones (so no cube is cut twice)."""
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def split_persons(split: str = "official", trial: int = 0, persons=None) -> dict[str, list[int]]:
    """Person lists of a split.

    - ``official``: KTH's own subdivision (train 11-18, validation 19-21, 23-25, 01, 04, test 22, 02, 03,
      05-10).
    - ``ji``: Ji et al.'s protocol: 16 randomly chosen training persons and the 9 others for test,
      re-drawn for each ``trial`` (0..4, seeded by the trial number). For early stopping, 3 of the 16
      training persons (also drawn with the trial's seed) form the validation part; train keeps 13.
    - explicit: ``persons={'train': [...], 'validation': [...], 'test': [...]}`` (validation may be empty).
    """
    if persons is not None:
        out = {part: sorted(int(p) for p in persons.get(part, [])) for part in ("train", "validation", "test")}
        seen: dict[int, str] = {}
        for part, plist in out.items():
            for p in plist:
                if p in seen:
                    raise DataError(f"person {p} is in both {seen[p]} and {part}; a person may be in one part only")
                seen[p] = part
        if not out["train"]:
            raise DataError("explicit split has no training persons; give persons={'train': [...], ...}")
        return out
    if split == "official":
        return {k: sorted(v) for k, v in OFFICIAL_SPLIT.items()}
    if split == "ji":
        trial = int(trial)
        if trial < 0:
            raise DataError(f"trial must be >= 0 (Ji et al. use 5 trials, 0..4), not {trial}")
        order = np.random.default_rng([2013, trial]).permutation(np.array(ALL_PERSONS))
        train, test = order[:JI_TRAIN], order[JI_TRAIN:]
        return {"train": sorted(int(p) for p in train[JI_VALIDATION:]),
                "validation": sorted(int(p) for p in train[:JI_VALIDATION]),
                "test": sorted(int(p) for p in test)}
    raise DataError(f"unknown split {split!r}; use 'official', 'ji' or an explicit persons dict")


def absent_persons(split_lists: dict[str, list[int]], present) -> dict[str, list[int]]:
    """Persons of each part that the dataset does not contain (reported, not an error)."""
    present = set(int(p) for p in present)
    return {part: [p for p in plist if p not in present] for part, plist in split_lists.items()}
