"""Reading an ImageNet-style folder: which classes it has and which images belong to which split.

Two layouts are understood, neither is ever modified on disk:

* split folders: ``data_dir/{train,val,test}/<class folder>/<image>`` (any of the three may be absent);
* one folder of class folders (the seed's layout): ``data_dir/<class folder>/<image>``, split per class,
  deterministically, into train/val/test by the given fractions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from imagenet_cls.data.images import is_hidden, iter_image_files
from imagenet_cls.errors import MissingPathError, UserError

SPLITS = ("train", "val", "test")

Sample = tuple[str, int]  # (image path, class index)


@dataclass
class DatasetLayout:
    """The classes of a data folder (sorted folder names) and the samples of each split."""

    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    kind: str = "split folders"
    class_map: Path | None = None  # a class map that comes with the data (an optimized dataset's), else None

    def samples(self, split: str, option: str = "--data.data_dir") -> list[Sample]:
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
    per_split = {split: _images_per_class(path) for split, path in split_dirs.items()}
    classes = sorted(set().union(*(images.keys() for images in per_split.values())))
    if not classes:
        raise UserError(f"--data.data_dir {data_dir} has split folders but no class folders inside them")
    index = {name: i for i, name in enumerate(classes)}
    splits = {
        split: [(path, index[name]) for name in sorted(images) for path in images[name]]
        for split, images in per_split.items()
    }
    return DatasetLayout(classes=classes, splits=splits, kind="split folders")


def _read_class_folders(data_dir: Path, fractions: tuple[float, float, float], seed: int) -> DatasetLayout:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(
            f"--data.split {fractions} must be three non-negative fractions (train, val, test) summing to 1"
        )
    images = _images_per_class(data_dir)
    if not images:
        raise UserError(
            f"--data.data_dir {data_dir} holds no class folders: expected <class>/<image> or train/ and val/ folders"
        )
    classes = sorted(images)
    splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for label, name in enumerate(classes):
        for split, paths in split_per_class(images[name], fractions, f"{seed}-{name}").items():
            splits[split] += [(p, label) for p in paths]
    return DatasetLayout(classes=classes, splits=splits, kind="class folders")


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


def _images_per_class(root: Path) -> dict[str, list[str]]:
    images = {}
    for name in class_folders(root):
        files = [str(path) for path in iter_image_files(root / name)]
        if not files:
            raise UserError(f"class folder {root / name} holds no image: add images or remove the folder")
        images[name] = files
    return images
