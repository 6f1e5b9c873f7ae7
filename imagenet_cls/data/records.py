"""Datasets over image records stored many to a file (parquet rows, WebDataset tar members), read by index.

A source (:mod:`~imagenet_cls.data.parquet`, :mod:`~imagenet_cls.data.wds`) indexes each split into a
:class:`Records`: its length, each record's label and stored name, and its image bytes by index. The datasets here
are the folders' own otherwise: :class:`ImageFileDataset`'s decode, transforms, ``skip_bad_images`` and time limit,
read in the order of the same samplers (:class:`~imagenet_cls.data.sampling.ResumableSampler`,
:class:`~imagenet_cls.data.loaders.EvalSampler`), so DDP sharding, per-sample seeds and exact resume carry over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from imagenet_cls.data.datasets import ImageFileDataset, PredictDataset, Transform, safe_output_path
from imagenet_cls.data.images import ImageFile
from imagenet_cls.data.layout import DatasetLayout
from imagenet_cls.errors import UserError

if TYPE_CHECKING:
    from imagenet_cls.data.transforms import EvalTransform

MAX_NUMBERED_CLASSES = 100_000  # labels without names: more classes than any public dataset has (21k) is damage
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


class Records(Protocol):
    """One split's records: picklable and small (DataLoader workers get a copy and open their own files)."""

    where: str  # the split's files, for messages (a folder, a pattern)
    unlabelled: bool  # every label is -1 (a hidden test split)

    def __len__(self) -> int: ...

    def label(self, index: int) -> int:
        """Record ``index``'s class index (-1: unlabelled)."""
        ...

    def name(self, index: int) -> str:
        """Record ``index``'s stored path or key."""
        ...

    def image_bytes(self, index: int) -> bytes:
        """Record ``index``'s encoded image."""
        ...

    def groups(self) -> Any:
        """The first index of each group of records stored together (a row group, a shard), then ``len(self)``."""
        ...


@dataclass
class RecordLayout(DatasetLayout):
    """The classes and splits of a record source: ``splits[split]`` is ``range(n)``, ``records[split]`` reads it."""

    records: dict[str, Any] = field(default_factory=dict)

    def labelled(self, split: str, option: str = "--data.data_dir") -> Records:
        """``split``'s records; a one-line error when it has none or carries no labels (a hidden test split)."""
        self.samples(split, option)
        records = self.records[split]
        if records.unlabelled:
            raise UserError(
                f"{option} {records.where}: the {split!r} split has no labels (all -1): predict on it "
                "(--data.predict_path), or validate/test on a labelled split"
            )
        return records


def check_labels(labels, classes: int, where: str) -> None:
    """A one-line error when a stored label is outside ``-1 .. classes - 1``."""
    if len(labels) and (int(labels.max()) >= classes or int(labels.min()) < -1):
        raise UserError(f"{where}: labels {int(labels.min())}..{int(labels.max())} do not fit {classes} classes")


def numbered_classes(records) -> list[str]:
    """Classes of records whose labels have no names: ImageNet's WordNet ids for 1000, else ``0``, ``1`` ..."""
    top = max((int(r.labels.max()) for r in records if len(r.labels)), default=-1)
    if top >= MAX_NUMBERED_CLASSES:
        where = next(r.where for r in records if len(r.labels) and int(r.labels.max()) == top)
        raise UserError(
            f"{where}: a label of {top} without class names ({MAX_NUMBERED_CLASSES:,} at most): a damaged label?"
        )
    if top + 1 == 1000:
        from imagenet_cls.data.classes import imagenet_class_names

        return sorted(imagenet_class_names())
    return [str(i) for i in range(top + 1)]


class RecordDataset(ImageFileDataset):
    """Labelled records of one split: item ``i`` is ``(image tensor, class index)``, named ``<where>/<name>``.

    Args:
        records: The split's records.
        transform: Image transform (from :class:`ImageFile`).
        skip_bad: Return a :class:`BadSample` for undecodable images instead of raising.
        timeout: Seconds one image may take.
        label_map: Dataset class index -> model class index (None: the same).
    """

    def __init__(
        self,
        records: Records,
        transform: Transform,
        skip_bad: bool = False,
        timeout: float | None = None,
        label_map: list[int] | None = None,
    ) -> None:
        super().__init__([], transform, skip_bad, timeout)
        self.records, self.label_map = records, label_map

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, index: int) -> str:
        return f"{self.records.where}/{self.records.name(index)}"

    def groups(self) -> Any:
        """Where each group of records stored together starts (the training order reads them group by group)."""
        return self.records.groups()

    def read(self, index: int) -> tuple[ImageFile, int]:
        label = self.records.label(index)
        if label < 0:  # one record without a label in a labelled split: a bad sample, never class -1 (the last)
            raise UserError(f"{self.describe(index)} has no label (-1) in a labelled split")
        label = self.label_map[label] if self.label_map is not None else label
        try:
            data = self.records.image_bytes(index)
        except OSError as error:
            raise UserError(f"cannot read {self.describe(index)}: {error}") from None
        return ImageFile(self.describe(index), data=data), label


class RecordPredictDataset(PredictDataset):
    """Predict over one split's records: the CSV's ``path`` is ``<where>/<name>``, the annotated copy ``<name>``."""

    def __init__(
        self, records: Records, transform: EvalTransform, display_size: tuple[int, int], timeout: float | None = None
    ) -> None:
        super().__init__([], Path(records.where), transform, display_size, timeout)
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, index: int) -> str:
        return f"{self.records.where}/{self.records.name(index)}"

    def relative(self, index: int) -> str:
        name = self.records.name(index)
        return str(safe_output_path(name, os.path.basename(name) or f"{index}.png"))

    def open(self, index: int) -> ImageFile:
        try:
            return ImageFile(self.describe(index), data=self.records.image_bytes(index))
        except OSError as error:
            raise UserError(f"cannot read {self.describe(index)}: {error}") from None
