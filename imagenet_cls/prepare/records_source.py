"""A Hugging Face parquet snapshot or WebDataset shards as a :class:`~imagenet_cls.prepare.streamed.StreamedSource`.

The data module's own readers (:mod:`~imagenet_cls.data.parquet`, :mod:`~imagenet_cls.data.wds`) index the source,
so prepare sees the classes, splits, labels and stored names that ``--data.data_dir SOURCE`` would; each split is
then read in order (one read per parquet row group, one ``pread`` per WebDataset image).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from imagenet_cls.data.layout import SPLITS
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.streamed import Image, StreamedSource, safe_folder


def records_shape(source: Path) -> str | None:
    """``webdataset`` or ``parquet`` when SOURCE is shards (a folder or a brace pattern) or a snapshot, else None."""
    from imagenet_cls.data.parquet import parquet_files
    from imagenet_cls.data.wds import wds_shards

    if wds_shards(source):
        return "webdataset"
    if Path(source).exists() and parquet_files(Path(source)):
        return "parquet"
    return None


def open_records(source: Path, shape: str, split: tuple[float, float, float]) -> StreamedSource:
    """SOURCE's splits as streams; a source of one unnamed split goes where a one-split ``--split`` says.

    Raises:
        UserError: a split is none of train/val/test (and ``split`` names no single split), or a file is unreadable.
    """
    from imagenet_cls.data.classes import class_names
    from imagenet_cls.data.parquet import parquet_files, read_parquet_layout
    from imagenet_cls.data.wds import read_wds_layout, wds_shards

    if shape == "webdataset":
        layout = read_wds_layout(source, wds_shards(source))
    else:
        layout = read_parquet_layout(Path(source), parquet_files(Path(source)))
    records = _known_splits(layout.records, source, split)
    classes = [safe_folder(name) for name in layout.classes]

    def read(name: str) -> Iterator[Image]:
        split_records = records[name]
        for index in range(len(split_records)):
            try:
                yield split_records.image_bytes(index), split_records.label(index), split_records.name(index)
            except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
                if isinstance(error, UserError):
                    raise
                raise UserError(f"{split_records.where}: record {index} of {name} is unreadable ({error})") from None

    return StreamedSource(
        kind=shape,
        classes=classes,
        names=dict(zip(classes, class_names(classes), strict=True)),
        sizes={name: len(r) for name, r in records.items()},
        read=read,
        unlabelled={name for name, r in records.items() if r.unlabelled},
    )


def _known_splits(records: dict, source: Path, split: tuple[float, float, float]) -> dict:
    """``records`` keyed by train/val/test only: one other split goes to the split ``--split`` names alone."""
    chosen = [name for name, fraction in zip(SPLITS, split, strict=True) if fraction == 1.0]
    other = [name for name in records if name not in SPLITS]
    if not other:
        return records
    if len(records) == 1 and chosen:
        return {chosen[0]: next(iter(records.values()))}
    raise UserError(
        f"SOURCE {source}: split {other[0]!r} is none of train/validation/test: name files <split>-NNNNN-of-NNNNN "
        "(or give a source of one split with --split train|val|test)"
    )
