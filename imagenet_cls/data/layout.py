"""Reading an ImageNet-style folder: which classes it has and which images belong to which split.

Two layouts are understood, neither is ever modified on disk:

* split folders: ``data_dir/{train,val,test}/<class folder>/<image>`` (any of the three may be absent);
* one folder of class folders (the seed's layout): ``data_dir/<class folder>/<image>``, split per class,
  deterministically, into train/val/test by the given fractions.
"""

from __future__ import annotations

import operator
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagenet_cls.data.images import is_hidden, is_image_file
from imagenet_cls.errors import MissingPathError, UserError

SPLITS = ("train", "val", "test")

Sample = tuple[str, int]  # (image path, class index)


class SampleList(Sequence):
    """The samples of one split, a read-only sequence of ``(image path, class index)``, held in a few arrays.

    ImageNet's 1.28M training samples as Python tuples of strings take ~250 MB, and every DataLoader worker
    copies those pages as it touches their reference counts; here they take ~35 bytes each in five objects: the
    folders, their class indices, each sample's folder, all names (relative to their folder) in one string, and
    where each name ends.
    """

    def __init__(self, folders: list[str], labels: list[int], folder_of: np.ndarray, names: str, ends: np.ndarray):
        self.folders, self.labels = folders, labels
        self.folder_of, self.names, self.ends = folder_of, names, ends

    def __len__(self) -> int:
        return len(self.folder_of)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = operator.index(index)  # NumPy and 0-d tensor indices too
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        start = int(self.ends[index - 1]) if index else 0
        folder = int(self.folder_of[index])
        return self.folders[folder] + os.sep + self.names[start : int(self.ends[index])], self.labels[folder]

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(self) != len(other):
            return False
        return all(a == tuple(b) for a, b in zip(self, other, strict=True))

    def __repr__(self) -> str:
        return f"SampleList({len(self)} samples in {len(self.folders)} folders)"


class _SampleListBuilder:
    """Collects a split's samples folder by folder: ``add(folder, label, names relative to it)``."""

    def __init__(self) -> None:
        self.folders: list[str] = []
        self.labels: list[int] = []
        self.counts: list[int] = []
        self.chunks: list[str] = []
        self.lengths: list[np.ndarray] = []

    def add(self, folder: str, label: int, names: list[str]) -> None:
        if names:
            self.folders.append(folder)
            self.labels.append(label)
            self.counts.append(len(names))
            self.chunks.append("".join(names))
            self.lengths.append(np.fromiter(map(len, names), dtype=np.int64, count=len(names)))

    def build(self) -> SampleList:
        folder_of = np.repeat(np.arange(len(self.folders), dtype=np.int32), self.counts)
        ends = np.cumsum(np.concatenate(self.lengths)) if self.lengths else np.zeros(0, dtype=np.int64)
        return SampleList(self.folders, self.labels, folder_of, "".join(self.chunks), ends)


@dataclass
class DatasetLayout:
    """The classes of a data folder (sorted folder names) and the samples of each split."""

    classes: list[str]
    splits: dict[str, Sequence[Sample]] = field(default_factory=dict)
    kind: str = "split folders"
    class_map: Path | None = None  # a class map that comes with the data (an optimized dataset's), else None

    def samples(self, split: str, option: str = "--data.data_dir") -> Sequence[Sample]:
        """The samples of ``split``; a one-line error when the split has none."""
        samples = self.splits.get(split, [])
        if not samples:
            raise UserError(f"{option} has no {split!r} images ({self.kind} layout): add {split}/<class>/ images")
        return samples


def class_folders(root: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``root``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))


def read_layout(data_dir: Path, split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0):
    """Scan ``data_dir`` and return its :class:`DatasetLayout`.

    Raises:
        UserError: the folder is missing or empty, or a class folder holds no image.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MissingPathError(f"--data.data_dir {data_dir} is not a folder: point it at an ImageNet-style dataset")
    split_dirs = {split: data_dir / split for split in SPLITS if (data_dir / split).is_dir()}
    if split_dirs:
        return _read_split_folders(data_dir, split_dirs)
    return _read_class_folders(data_dir, split_fractions, seed)


def _read_split_folders(data_dir: Path, split_dirs: dict[str, Path]) -> DatasetLayout:
    folders = {split: class_folders(path) for split, path in split_dirs.items()}
    classes = sorted(set().union(*folders.values()))
    if not classes:
        raise UserError(f"--data.data_dir {data_dir} has split folders but no class folders inside them")
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    for split, path in split_dirs.items():
        builder = _SampleListBuilder()
        for name in folders[split]:
            folder = str(path / name)
            builder.add(folder, index[name], _image_files(folder))
        splits[split] = builder.build()
    return DatasetLayout(classes=classes, splits=splits, kind="split folders")


def _read_class_folders(data_dir: Path, fractions: tuple[float, float, float], seed: int) -> DatasetLayout:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(
            f"--data.split {fractions} must be three non-negative fractions (train, val, test) summing to 1"
        )
    classes = class_folders(data_dir)
    if not classes:
        raise UserError(
            f"--data.data_dir {data_dir} holds no class folders: expected <class>/<image> or train/ and val/ folders"
        )
    builders = {split: _SampleListBuilder() for split in SPLITS}
    for label, name in enumerate(classes):
        folder = str(data_dir / name)
        # Names relative to one class folder sort as their full paths do, so the split is the same.
        for split, names in split_per_class(_image_files(folder), fractions, f"{seed}-{name}").items():
            builders[split].add(folder, label, names)
    return DatasetLayout(classes=classes, splits={s: b.build() for s, b in builders.items()}, kind="class folders")


def split_per_class(paths: list, fractions: tuple[float, float, float], seed: str) -> dict[str, list]:
    """Deal one class's files into train/val/test by ``fractions``, reproducibly for ``seed``.

    Each class has its own random stream, so adding a class moves no other file. While the train fraction is
    above 0, every class keeps at least one training file.
    """
    paths = sorted(paths)
    random.Random(seed).shuffle(paths)
    n_val, n_test = round(len(paths) * fractions[1]), round(len(paths) * fractions[2])
    if fractions[0] > 0 and n_val + n_test >= len(paths):
        n_val = min(n_val, len(paths) - 1)
        n_test = max(0, min(n_test, len(paths) - 1 - n_val))
    if fractions[0] == 0:  # rounding must not leak files into train
        n_test = len(paths) - n_val
    return {"val": paths[:n_val], "test": paths[n_val : n_val + n_test], "train": paths[n_val + n_test :]}


def _image_files(folder: str) -> list[str]:
    """Image files under ``folder``, relative to it, in :func:`~imagenet_cls.data.images.iter_image_files`'s order.

    Raises:
        UserError: there is none.
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        prefix = dirpath[len(folder) + 1 :] + os.sep if dirpath != folder else ""
        files += [prefix + name for name in sorted(filenames) if is_image_file(name)]
    if not files:
        raise UserError(f"class folder {folder} holds no image: add images or remove the folder")
    return files
