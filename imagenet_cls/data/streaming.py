"""Reading a LitData optimized dataset (``python -m imagenet_cls.prepare SOURCE DEST --format litdata``).

The dataset lies in a local folder or under an object-store prefix (``s3://bucket/prefix``; credentials and
endpoint from the usual AWS variables or ``--data.storage_options``). Its classes come from its ``dataset.json``,
its class names from its ``folder_num_class_map.txt``.

Items are read by index, in the training sampler's random order: from a bucket through LitData's
``StreamingDataset`` (two HTTP range requests per image, LitData's ``on_demand_bytes``; nothing but the index is
stored locally; a DataLoader batch's requests overlap, :meth:`OptimizedSplit.read_ahead`), from a local folder by two
small reads per image (:class:`ChunkFiles`; LitData's own memory-mapped reader reads whole chunks ahead). Either way
LitData's item loader decodes the item. The rest of the pipeline is the folders' own: the same samplers
(:class:`ResumableSampler` for training: the same order, the same per-sample augmentation seeds, DDP sharding and
exact mid-epoch resume), the same decode and transforms (:class:`ImageFile` from bytes) and ``skip_bad_images``. A
dataset written from class folders trains exactly as the folders do.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagenet_cls.data.datasets import ImageFileDataset, PredictDataset, Transform, safe_output_path
from imagenet_cls.data.images import ImageFile
from imagenet_cls.data.layout import DatasetLayout
from imagenet_cls.data.litdata_items import (  # noqa: F401 (ChunkFiles, OptimizedSplit, remote_url: old paths)
    DATASET_FILE,
    ChunkFiles,
    OptimizedSplit,
    _quiet_litdata,
    remote_url,
)
from imagenet_cls.data.retries import RetryPolicy, StorageError
from imagenet_cls.errors import MissingPathError, UserError

if TYPE_CHECKING:
    from imagenet_cls.data.transforms import EvalTransform

CLASS_MAP_FILE = "folder_num_class_map.txt"


def is_optimized(data_dir: str | Path) -> bool:
    """Whether ``data_dir`` is an optimized dataset: an object-store URL, or a folder with ``dataset.json``."""
    if remote_url(data_dir) is not None or (Path(data_dir) / DATASET_FILE).is_file():
        return True
    if (Path(data_dir) / "index.json").is_file() and (Path(data_dir).parent / DATASET_FILE).is_file():
        raise UserError(
            f"--data.data_dir {data_dir} is one split of an optimized dataset: give its parent {Path(data_dir).parent}"
        )
    return False


@dataclass
class OptimizedLayout(DatasetLayout):
    """The classes and splits of an optimized dataset; ``splits[split]`` is ``range(images)`` (item indexes)."""

    root: str = ""  # local folder or URL
    storage_options: dict[str, Any] = field(default_factory=dict)

    def split_url(self, split: str) -> str:
        """Where ``split``'s ``index.json`` and chunks are; a one-line error when the dataset lacks the split."""
        self.samples(split)
        return f"{self.root}/{split}"


def read_optimized_layout(
    data_dir: str | Path, storage_options: dict[str, Any] | None = None, option: str = "--data.data_dir"
) -> OptimizedLayout:
    """Read an optimized dataset's ``dataset.json`` (and class map), locally or from its bucket.

    ``option`` is the command-line option that named the dataset, for messages.

    Raises:
        UserError: the dataset cannot be read or was not written by ``imagenet_cls.prepare --format litdata``.
    """
    url = remote_url(data_dir)
    root = url or str(Path(data_dir))
    folder = Path(data_dir) if url is None else _download_manifest(url, storage_options or {}, option)
    if not (folder / DATASET_FILE).is_file():
        raise MissingPathError(
            f"{option} {root} has no {DATASET_FILE}: write it with "
            "python -m imagenet_cls.prepare SOURCE DEST --format litdata"
        )
    manifest = json.loads((folder / DATASET_FILE).read_text(encoding="utf-8"))
    if not str(manifest.get("format", "")).startswith("imagenet_cls-litdata"):
        raise UserError(f"{option} {root}/{DATASET_FILE} is not an imagenet_cls optimized dataset")
    class_map = folder / CLASS_MAP_FILE
    return OptimizedLayout(
        classes=list(manifest["classes"]),
        splits={split: range(count) for split, count in manifest["splits"].items()},
        kind="optimized",
        root=root,
        class_map=class_map if class_map.is_file() else None,
        storage_options=dict(storage_options or {}),
    )


def _download_manifest(url: str, storage_options: dict[str, Any], option: str) -> Path:
    """A local copy of the dataset's ``dataset.json`` and class map (a temporary folder per URL)."""
    _quiet_litdata()
    from litdata.streaming.fs_provider import _get_fs_provider

    folder = Path(tempfile.gettempdir()) / f"imagenet_cls-{hashlib.md5(url.encode()).hexdigest()[:12]}"
    folder.mkdir(exist_ok=True)
    retry = RetryPolicy.from_options(storage_options)
    provider = _get_fs_provider(url, retry.client_options(storage_options, url))
    for name in (DATASET_FILE, CLASS_MAP_FILE):
        try:
            retry.call(partial(provider.download_file, f"{url}/{name}", str(folder / name)), f"{url}/{name}")
        except StorageError:  # tried READ_ATTEMPTS times: the bucket, not the dataset
            raise
        except Exception as error:  # botocore/gcs errors differ; each one means the same to the user
            if name == DATASET_FILE:
                raise UserError(
                    f"{option} {url}/{name} cannot be read ({type(error).__name__}: {error}); check the URL, "
                    "credentials and endpoint (AWS_* variables or --data.storage_options)"
                ) from None
    return folder


class StreamingImageDataset(ImageFileDataset):
    """Labelled images of one split of an optimized dataset: item ``i`` is ``(image tensor, class index)``.

    Decoding, transforms, ``skip_bad`` and ``timeout`` are :class:`ImageFileDataset`'s.

    Args:
        url: The split's folder or URL (``.../train``).
        size: Its number of images.
        transform: Image transform (from :class:`ImageFile`).
        skip_bad: Return a :class:`BadSample` for undecodable images instead of raising.
        timeout: Seconds one image may take.
        label_map: Dataset class index -> model class index (None: the same).
        storage_options: Object-store options (endpoint, credentials) for LitData.
        cache_dir: Where LitData keeps a remote dataset's index (None: its default, ``~/.lightning/chunks``).
    """

    def __init__(
        self,
        url: str,
        size: int,
        transform: Transform,
        skip_bad: bool = False,
        timeout: float | None = None,
        label_map: list[int] | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__([], transform, skip_bad, timeout)
        self.items = OptimizedSplit(url, size, storage_options, cache_dir)
        self.url, self.label_map = url, label_map

    def __len__(self) -> int:
        return len(self.items)

    def __getitems__(self, indexes: list) -> list:
        """One batch (what a DataLoader asks for): read ahead together, then decoded in order, item by item."""
        positions = [index[0] if isinstance(index, tuple) else index for index in indexes]
        self.items.read_ahead(positions, self.timeout)
        return [self[index] for index in indexes]

    def describe(self, index: int) -> str:
        """``<split url>/<the file's path in the source folder>``: what skipped files and reports name."""
        return f"{self.url}/{self.items.name(index)}"

    def read(self, index: int) -> tuple[ImageFile, int]:
        item = self.items[index]
        label = int(item["label"])
        label = self.label_map[label] if self.label_map is not None else label
        return ImageFile(self.describe(index), data=item["image"]), label


class StreamingPredictDataset(PredictDataset):
    """Predict over one split of an optimized dataset (``--data.predict_path DATASET/val`` or ``s3://.../val``).

    Items are :class:`PredictDataset`'s; the CSV's ``path`` is ``<split url>/<name>``, the annotated copy mirrors
    ``<name>`` (the file's path in the folder the dataset was optimized from).
    """

    def __init__(
        self,
        items: OptimizedSplit,
        transform: EvalTransform,
        display_size: tuple[int, int] | None,
        timeout: float | None = None,
    ) -> None:
        super().__init__([], Path(items.url), transform, display_size, timeout)
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitems__(self, indexes: list[int]) -> list[dict[str, Any]]:
        """One batch: read ahead together, then decoded in order."""
        self.items.read_ahead(list(indexes), self.timeout)
        return [self[index] for index in indexes]

    def describe(self, index: int) -> str:
        return f"{self.items.url}/{self.items.name(index)}"

    def relative(self, index: int) -> str:
        name = self.items.name(index)
        return str(safe_output_path(name, os.path.basename(name)))

    def open(self, index: int) -> ImageFile:
        return ImageFile(self.describe(index), data=self.items[index]["image"])


def optimized_split(
    spec: str | Path, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None
) -> OptimizedSplit | None:
    """``--data.predict_path`` as one split of an optimized dataset (``DATASET/val``, ``s3://.../val``), else None.

    Raises:
        UserError: ``spec`` is a whole optimized dataset (give one of its splits), names a split the dataset lacks,
            or its dataset cannot be read.
    """
    option = "--data.predict_path"
    url = remote_url(spec)
    if url is None:
        folder = Path(spec)
        if (folder / DATASET_FILE).is_file():
            raise _whole_dataset(read_optimized_layout(folder, storage_options, option))
        if not (folder / "index.json").is_file():
            return None  # image files
        root, split = str(folder.parent), folder.name
    else:
        root, _, split = url.rpartition("/")
        if root.endswith(":/"):  # s3://bucket: a whole dataset or nothing
            raise _whole_dataset(read_optimized_layout(url, storage_options, option))
    try:
        layout = read_optimized_layout(root, storage_options, option)
    except UserError as error:
        if url is None:
            raise
        try:  # not a split: perhaps the URL is the whole dataset
            whole = read_optimized_layout(url, storage_options, option)
        except UserError:
            raise error from None
        raise _whole_dataset(whole) from None
    if split not in layout.splits:
        raise MissingPathError(f"{option} {spec}: the optimized dataset {root} has no split {split!r}")
    return OptimizedSplit(layout.split_url(split), len(layout.samples(split)), storage_options, cache_dir)


def _whole_dataset(layout: OptimizedLayout) -> UserError:
    splits = ", ".join(f"{layout.root}/{name}" for name in layout.splits)
    return UserError(f"--data.predict_path {layout.root} is a whole optimized dataset: give one split ({splits})")
