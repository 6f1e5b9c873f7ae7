"""ILSVRC2012's tars as a :class:`~imagenet_cls.prepare.streamed.StreamedSource`: members streamed, never extracted.

``ILSVRC2012_img_train.tar`` (a tar of 1000 per-class tars) and ``ILSVRC2012_img_val.tar`` (labels from
``LOC_val_solution.csv`` or the devkit, as :mod:`~imagenet_cls.prepare.archives` reads them). Classes are known
before any image is written: the outer tars' headers are walked first (tarfile seeks over the data, so this reads
512 bytes per member), then each split is read once, in ``tarfile``'s streaming mode (``r|``), inner tars too.
Stored names are ``<split>/<wnid>/<file>``, the names a two-step prepare-then-optimize gives.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from imagenet_cls.data.classes import imagenet_class_names
from imagenet_cls.data.images import is_image_file
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.archives import _archive_val_labels, _is_wnid
from imagenet_cls.prepare.streamed import Image, StreamedSource

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"


def open_archives(source: Path) -> StreamedSource:
    """The ILSVRC2012 tars of SOURCE as streams (train: per-class tars; val: labelled by the devkit or CSV)."""
    train_tar, val_tar = source / TRAIN_TAR, source / VAL_TAR
    train_classes = set()
    if train_tar.is_file():
        train_classes = {Path(m.name).stem for m in _headers(train_tar) if m.isfile() and _is_wnid(Path(m.name).stem)}
    val_labels: dict[str, str] = {}
    if val_tar.is_file():
        members = _headers(val_tar)
        labels = _archive_val_labels(source)
        for member in members:
            name = os.path.basename(member.name)
            wnid = labels.get(name.rsplit(".", 1)[0])
            if member.isfile() and is_image_file(name) and wnid is not None:
                val_labels[name] = wnid
    classes = sorted(train_classes | set(val_labels.values()))
    index = {wnid: i for i, wnid in enumerate(classes)}
    names = imagenet_class_names()

    def read(split: str) -> Iterator[Image]:
        if split == "train":
            yield from _read_train(train_tar, index)
        else:
            yield from _read_val(val_tar, val_labels, index)

    sizes: dict[str, int | None] = {}
    if train_classes:
        sizes["train"] = None  # counted as the inner tars are read
    if val_labels:
        sizes["val"] = len(val_labels)
    return StreamedSource("archives", classes, {w: names.get(w, w) for w in classes}, sizes, read)


def _headers(path: Path) -> list[tarfile.TarInfo]:
    """Every member header of tar ``path`` (data skipped by seeking)."""
    try:
        with tarfile.open(path, "r:") as tar:  # ILSVRC2012's tars are not compressed
            return tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"{path} is truncated or not a tar ({error}): download it again") from None


def _read_train(path: Path, index: dict[str, int]) -> Iterator[Image]:
    """Each image of each per-class tar inside the train tar, streamed in tar order."""
    where = str(path)
    try:
        with tarfile.open(path, "r|") as outer:
            for member in outer:
                wnid = Path(member.name).stem
                if not member.isfile() or not _is_wnid(wnid):
                    continue
                where = f"{path} (member {member.name})"
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                    for image in inner:
                        name = os.path.basename(image.name)
                        if image.isfile() and is_image_file(name):
                            yield _data(inner, image), index[wnid], f"train/{wnid}/{name}"
                where = str(path)
    except (tarfile.TarError, EOFError) as error:
        raise UserError(f"{where} is truncated or damaged ({error}): download it again") from None


def _read_val(path: Path, labels: dict[str, str], index: dict[str, int]) -> Iterator[Image]:
    """Each labelled image of the val tar, streamed in tar order."""
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                name = os.path.basename(member.name)
                wnid = labels.get(name) if member.isfile() else None
                if wnid is not None:
                    yield _data(tar, member), index[wnid], f"val/{wnid}/{name}"
    except (tarfile.TarError, EOFError) as error:
        raise UserError(f"{path} is truncated or damaged ({error}): download it again") from None


def _data(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    with tar.extractfile(member) as file:
        data = file.read()
    if len(data) != member.size:
        raise tarfile.ReadError(f"{member.name}: {len(data)} of {member.size} bytes")
    return data
