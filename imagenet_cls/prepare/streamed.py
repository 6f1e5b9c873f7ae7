"""Sources read as one stream of images per split (parquet rows, WebDataset samples, ILSVRC2012 tar members).

A :class:`StreamedSource` says which classes and splits a source has and yields each split's images in order,
``(bytes, label, stored name)``, reading the source once. Two writers consume it: :func:`write_folders` (class
folders, here) and :func:`~imagenet_cls.prepare.litdata_stream.write_litdata_stream` (LitData chunks), so no
intermediate copy is ever made.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagenet_cls.data.datasets import MAX_PART_BYTES
from imagenet_cls.data.images import is_image_file
from imagenet_cls.prepare.check import with_progress

Image = tuple[bytes, int, str]  # encoded image, class index (-1: unlabelled), stored name
UNLABELLED = "unlabelled"  # DEST/unlabelled/<split>/: a split whose labels are all -1 (ImageNet's test)
# Leading bytes -> extension, for stored names without an image extension (copied bytes keep their format).
SIGNATURES = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
              (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))  # fmt: skip


@dataclass
class StreamedSource:
    """A source's classes (index order), their display names, and its splits.

    Attributes:
        kind: The source's shape (``parquet``, ``webdataset``, ``archives``).
        classes: Class folder names (WordNet ids for ImageNet) in label order.
        names: Class folder -> human-readable name (for ``folder_num_class_map.txt``).
        sizes: Images per split (None where it is only known once read).
        read: ``read(split)`` yields the split's images in order, the source read once.
        unlabelled: Splits whose labels are all -1.
    """

    kind: str
    classes: list[str]
    names: dict[str, str]
    sizes: dict[str, int | None]
    read: Callable[[str], Iterator[Image]]
    unlabelled: set[str] = field(default_factory=set)


def safe_folder(name: str) -> str:
    """A class name as one folder name: no separators, not hidden, not ``.``/``..``, at most 200 bytes."""
    name = "".join("_" if char in "/\\" or ord(char) < 32 else char for char in name).strip() or "_"
    if name.startswith("."):
        name = "_" + name
    return name.encode()[:MAX_PART_BYTES].decode(errors="ignore")


def safe_file_name(stored: str, data: bytes, fallback: str) -> str:
    """A stored path or key as one file name: its last part, made safe, with an image extension.

    Never a folder part (a hostile ``../../x.jpg`` is ``x.jpg``), never hidden, at most 200 bytes; a name with no
    image extension gets the one its bytes show (``.jpg`` when unknown), so the folder reader lists it.
    """
    base = "".join("_" if ord(char) < 32 or char == "\x7f" else char for char in stored.replace("\\", "/"))
    base = base.rsplit("/", 1)[-1].lstrip(".") or fallback
    if not is_image_file(base):
        webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
        base += ".webp" if webp else next((ext for magic, ext in SIGNATURES if data.startswith(magic)), ".jpg")
    stem, suffix = os.path.splitext(base)
    return stem.encode()[: MAX_PART_BYTES - len(suffix.encode())].decode(errors="ignore") + suffix


def write_folders(source: StreamedSource, dest: Path, progress: bool = True) -> dict[str, int]:
    """Write each image of ``source`` to ``DEST/<split>/<class>/<name>`` (unlabelled: ``DEST/unlabelled/<split>/``).

    Bytes are copied as they are. Each file is written to ``.partial`` and renamed, so it is complete or absent; a
    file already there with the same size is skipped, so an interrupted run continues. Two stored names that become
    the same file name in one folder: the later one gets its position in front (``<n>_<name>``).
    """
    counts = {"placed": 0, "skipped": 0}
    folders = [safe_folder(name) for name in source.classes]
    for split in source.sizes:
        used: dict[Path, set[str]] = {}
        images = with_progress(source.read(split), f"{split} images", progress)
        for position, (data, label, stored) in enumerate(images):
            folder = dest / UNLABELLED / split if label < 0 else dest / split / folders[label]
            names = used.get(folder)
            if names is None:
                folder.mkdir(parents=True, exist_ok=True)
                names = used[folder] = set()
            name = safe_file_name(stored, data, f"{position}")
            if name in names:
                name = safe_file_name(f"{position}_{name}", data, f"{position}")
            names.add(name)
            target = folder / name
            if target.is_file() and target.stat().st_size == len(data):
                counts["skipped"] += 1
                continue
            partial = target.with_name(name + ".partial")
            partial.write_bytes(data)
            os.replace(partial, target)
            counts["placed"] += 1
        print(f"{split}: {sum(len(n) for n in used.values())} images from {source.kind}", file=sys.stderr)
    counts["mode"] = "copied"
    return counts
