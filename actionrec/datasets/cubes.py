"""Reading an HDF5 cube dataset written by ``actionrec preprocess`` (layout: docs/hdf5-format.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from actionrec.datasets import kth
from actionrec.errors import DataError
from actionrec.hardwired import cube_maps
from actionrec.preprocess import FORMAT, FORMAT_VERSION

_CHUNK_CACHE_BYTES = 64 * 2**20


def _strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[:]]


class CubeDataset:
    """A read-only cube dataset: cubes of f frames, each an index (video, start frame) into per-video
    streams of grey frames and quantised optical flow.

    ``read_cubes(indices)`` returns float32 (n, 1, 5f-2, H, W) hardwired maps (gray f, grad_x f, grad_y f,
    flow_x f-1, flow_y f-1), normalised by ``actionrec.hardwired.cube_maps``, the function that
    ``actionrec.preprocess.clip_cubes`` also uses.
    """

    def __init__(self, path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such dataset; create it with `actionrec preprocess ROOT {self.path}`")
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES, rdcc_nslots=10007)
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({exc}); rerun `actionrec preprocess`") from None
        try:
            self._load_index()
        except DataError:
            self._file.close()
            raise
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            self._file.close()
            raise DataError(f"{self.path}: corrupt cube dataset ({exc}); rerun `actionrec preprocess`") from None

    def _load_index(self):
        f = self._file
        if f.attrs.get("format") != FORMAT:
            raise DataError(f"{self.path}: not an actionrec cube dataset (made by `actionrec preprocess`)")
        if int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise DataError(f"{self.path}: dataset format {int(f.attrs['format_version'])} is newer than this "
                            f"actionrec reads ({FORMAT_VERSION}); upgrade actionrec")
        if not bool(f.attrs.get("complete", False)):
            raise DataError(f"{self.path}: incomplete dataset (preprocessing was interrupted); rerun the same "
                            "`actionrec preprocess` command to finish it")
        self.preprocessing = json.loads(f.attrs["preprocessing"])
        self.classes = json.loads(f.attrs["classes"])
        self.software = json.loads(f.attrs["software"])
        p = self.preprocessing
        self.frames, self.height, self.width = int(p["frames"]), int(p["height"]), int(p["width"])
        self.stride = int(p["stride"])
        self.segments = tuple(p["segments"])
        self.input_shape = (1, 5 * self.frames - 2, self.height, self.width)
        self._flow_units = float(p["flow_storage"]["units_per_pixel"])
        v = f["videos"]
        paths, names, actions = _strings(v["path"]), _strings(v["name"]), _strings(v["action"])
        person, scenario, label = v["person"][:], v["scenario"][:], v["label"][:]
        self._offset = v["offset"][:].astype(np.int64)
        n_frames = v["n_frames"][:]
        self.videos = [{"person": int(person[i]), "action": actions[i], "scenario": int(scenario[i]),
                        "label": int(label[i]), "path": paths[i], "name": names[i], "n_frames": int(n_frames[i])}
                       for i in range(len(paths))]
        self.skipped = list(zip(_strings(f["skipped/path"]), _strings(f["skipped/cause"])))
        self.cube_video = f["cubes/video"][:].astype(np.int64)
        self.cube_start = f["cubes/start"][:].astype(np.int64)
        self.cube_label = label.astype(np.int64)[self.cube_video]
        self.cube_person = person.astype(np.int64)[self.cube_video]
        self._gray, self._flow = f["frames/gray"], f["frames/flow"]

    # ------------------------------------------------------------------------------------------ splits
    def __len__(self) -> int:
        return len(self.cube_video)

    @property
    def persons(self) -> list[int]:
        return sorted({v["person"] for v in self.videos})

    def split_persons(self, split="official", trial=0, persons=None) -> dict[str, list[int]]:
        """Persons of each part present in this dataset (see ``actionrec.datasets.kth.split_persons``);
        ``absent_persons`` lists the ones the split names but the dataset lacks."""
        lists = kth.split_persons(split, trial, persons)
        present = set(self.persons)
        return {part: [p for p in plist if p in present] for part, plist in lists.items()}

    def absent_persons(self, split="official", trial=0, persons=None) -> dict[str, list[int]]:
        return kth.absent_persons(kth.split_persons(split, trial, persons), self.persons)

    def class_labels(self, classes=None) -> list[int]:
        """Label numbers of the class names ``classes`` (all classes when None), in the order given.

        Unknown or repeated names are a ``DataError`` that lists this file's classes."""
        if classes is None:
            return list(range(len(self.classes)))
        classes = list(classes)
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise DataError(f"{self.path}: no class {', '.join(map(repr, unknown))}; its classes are "
                            f"{', '.join(self.classes)}")
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise DataError(f"{self.path}: choose at least two different classes, got {', '.join(classes)}")
        return [self.classes.index(c) for c in classes]

    def select(self, part, split="official", trial=0, persons=None, classes=None) -> np.ndarray:
        """Indices of the cubes of one part ('train', 'validation', 'test' or 'all') of a person split,
        restricted to the class names ``classes`` when given."""
        if part not in ("train", "validation", "test", "all"):
            raise DataError(f"unknown part {part!r}; use 'train', 'validation', 'test' or 'all'")
        keep = np.isin(self.cube_label, self.class_labels(classes))
        if part != "all":
            keep &= np.isin(self.cube_person, self.split_persons(split, trial, persons)[part])
        return np.flatnonzero(keep)

    # ------------------------------------------------------------------------------------------ reading
    def read_raw(self, indices):
        """Stored streams of cubes: gray uint8 (n, f, H, W), flow int8 (n, f-1, 2, H, W)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"cube index out of range 0..{len(self) - 1}")
        f = self.frames
        first = self._offset[self.cube_video[idx]] + self.cube_start[idx]
        gray = np.empty((len(idx), f, self.height, self.width), np.uint8)
        flow = np.empty((len(idx), f - 1, 2, self.height, self.width), np.int8)
        for k in np.argsort(first, kind="stable"):  # file order: neighbouring cubes share chunks
            g = int(first[k])
            self._gray.read_direct(gray, np.s_[g:g + f], np.s_[k])
            self._flow.read_direct(flow, np.s_[g:g + f - 1], np.s_[k])
        return gray, flow

    def read_cubes(self, indices) -> np.ndarray:
        """float32 (n, 1, 5f-2, H, W) normalised hardwired maps of the given cubes, in the given order."""
        gray, flow = self.read_raw(indices)
        return cube_maps(gray, flow, self._flow_units)

    # ------------------------------------------------------------------------------------------ summary
    def summary(self, split="official", trial=0) -> str:
        p = self.preprocessing
        lines = [f"{self.path}: {len(self.videos)} videos, {sum(v['n_frames'] for v in self.videos)} frames, "
                 f"{len(self)} cubes of {self.frames} frames at {self.width}x{self.height}, stride {self.stride}",
                 f"maps per cube: {' '.join(f'{c}({s})' for c, s in zip(p['channels'], self.segments))}"]
        parts = self.split_persons(split, trial)
        header = f"{'class':<14}{'videos':>8}{'cubes':>8}" + "".join(f"{part:>12}" for part in parts)
        lines += [f"split {split}" + (f" trial {trial}" if split == "ji" else "") + " (cubes per part):", header]
        vlabel = np.array([v["label"] for v in self.videos], np.int64)
        for c, name in enumerate(self.classes):
            row = f"{name:<14}{int((vlabel == c).sum()):>8}{int((self.cube_label == c).sum()):>8}"
            for plist in parts.values():
                row += f"{int(((self.cube_label == c) & np.isin(self.cube_person, plist)).sum()):>12}"
            lines.append(row)
        absent = {k: v for k, v in self.absent_persons(split, trial).items() if v}
        if absent:
            lines.append("persons absent from this dataset: " +
                         "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in absent.items()))
        lines.append(f"skipped files: {len(self.skipped)}")
        lines += [f"  {cause}" for _, cause in self.skipped]
        return "\n".join(lines)

    def close(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"CubeDataset({str(self.path)!r}, cubes={len(self)}, classes={self.classes})"
