"""Reading a LitData optimized dataset (``python -m imagenet_cls.prepare SOURCE DEST --format litdata``).

The dataset lies in a local folder or under an object-store prefix (``s3://bucket/prefix``; credentials and
endpoint from the usual AWS variables or ``--data.storage_options``). Its classes come from its ``dataset.json``,
its class names from its ``folder_num_class_map.txt``.

Items are read by index through LitData's ``StreamingDataset``: from local chunks, or from a bucket one HTTP range
request per image (LitData's ``on_demand_bytes``; nothing but the index is stored locally). The rest of the
pipeline is the folders' own: the same samplers (:class:`ResumableSampler` for training: the
same order, the same per-sample augmentation seeds, DDP sharding and exact mid-epoch resume), the same decode and
transforms (:class:`ImageFile` from bytes) and ``skip_bad_images``. A dataset written from class folders trains
exactly as the folders do.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_cls.data.datasets import ImageFileDataset, Transform
from imagenet_cls.data.images import ImageFile
from imagenet_cls.data.layout import DatasetLayout
from imagenet_cls.errors import MissingPathError, UserError

DATASET_FILE = "dataset.json"  # written by imagenet_cls.prepare.litdata_writer
CLASS_MAP_FILE = "folder_num_class_map.txt"
_REMOTE = re.compile(r"^(s3|gs|gcs|azure|az)://?(.+)$")  # a Path argument collapses "s3://" into "s3:/"


def remote_url(data_dir: str | Path) -> str | None:
    """``data_dir`` as an object-store URL (``s3://bucket/prefix``), or None for a local path."""
    match = _REMOTE.match(str(data_dir))
    return f"{match.group(1)}://{match.group(2).rstrip('/')}" if match else None


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


def read_optimized_layout(data_dir: str | Path, storage_options: dict[str, Any] | None = None) -> OptimizedLayout:
    """Read an optimized dataset's ``dataset.json`` (and class map), locally or from its bucket.

    Raises:
        UserError: the dataset cannot be read or was not written by ``imagenet_cls.prepare --format litdata``.
    """
    url = remote_url(data_dir)
    root = url or str(Path(data_dir))
    folder = Path(data_dir) if url is None else _download_manifest(url, storage_options or {})
    if not (folder / DATASET_FILE).is_file():
        raise MissingPathError(
            f"--data.data_dir {root} has no {DATASET_FILE}: write it with "
            "python -m imagenet_cls.prepare SOURCE DEST --format litdata"
        )
    manifest = json.loads((folder / DATASET_FILE).read_text(encoding="utf-8"))
    if not str(manifest.get("format", "")).startswith("imagenet_cls-litdata"):
        raise UserError(f"--data.data_dir {root}/{DATASET_FILE} is not an imagenet_cls optimized dataset")
    class_map = folder / CLASS_MAP_FILE
    return OptimizedLayout(
        classes=list(manifest["classes"]),
        splits={split: range(count) for split, count in manifest["splits"].items()},
        kind="optimized",
        root=root,
        class_map=class_map if class_map.is_file() else None,
        storage_options=dict(storage_options or {}),
    )


def _download_manifest(url: str, storage_options: dict[str, Any]) -> Path:
    """A local copy of the dataset's ``dataset.json`` and class map (a temporary folder per URL)."""
    _quiet_litdata()
    from litdata.streaming.fs_provider import _get_fs_provider

    folder = Path(tempfile.gettempdir()) / f"imagenet_cls-{hashlib.md5(url.encode()).hexdigest()[:12]}"
    folder.mkdir(exist_ok=True)
    provider = _get_fs_provider(url, storage_options)
    for name in (DATASET_FILE, CLASS_MAP_FILE):
        try:
            provider.download_file(f"{url}/{name}", str(folder / name))
        except Exception as error:  # botocore/gcs errors differ; each one means the same to the user
            if name == DATASET_FILE:
                raise UserError(
                    f"--data.data_dir {url}/{name} cannot be read ({type(error).__name__}: {error}); check the URL, "
                    "credentials and endpoint (AWS_* variables or --data.storage_options)"
                ) from None
    return folder


def _quiet_litdata() -> None:
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no PyPI request at each dataset


class StreamingImageDataset(ImageFileDataset):
    """Labelled images of one split of an optimized dataset: item ``i`` is ``(image tensor, class index)``.

    The LitData reader is made in each process on first use (DataLoader workers open their own), so the object
    pickles small. Decoding, transforms, ``skip_bad`` and ``timeout`` are :class:`ImageFileDataset`'s.

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
        self.url, self.size, self.label_map = url, size, label_map
        self.storage_options, self.cache_dir = dict(storage_options or {}), cache_dir
        self._reader = None
        self._reader_pid = 0
        self._last: tuple[int, dict[str, Any]] | None = None

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None, "_last": None}  # each worker opens its own reader

    def _get(self, index: int) -> dict[str, Any]:
        # describe() and read() of one item ask for it in turn: the last item is kept, so it is read once.
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        # LitData's S3 client (credential refresh jitter) and botocore's retries draw from Python's global
        # ``random`` while they open and download: keep its state as it was, so augmentations (seeded per sample)
        # and the training process never depend on I/O. LitData and botocore draw from no other global generator.
        state = random.getstate()
        try:
            item = self.reader[int(index)]
        finally:
            random.setstate(state)
        self._last = (index, item)
        return item

    @property
    def reader(self):
        """LitData's ``StreamingDataset`` over the split, read by item index (one per process, forked ones too)."""
        if self._reader is None or self._reader_pid != os.getpid():
            _quiet_litdata()
            from filelock import FileLock
            from litdata import StreamingDataset

            # LitData 0.2.76 races when processes (DataLoader workers) open one remote dataset at once: one finds
            # the cache folder without the index.json another is downloading. One at a time per dataset.
            key = hashlib.md5(self.url.encode()).hexdigest()[:12]
            remote = remote_url(self.url) is not None
            with FileLock(Path(tempfile.gettempdir()) / f"imagenet_cls-{key}.lock") if remote else nullcontext():
                self._reader = StreamingDataset(
                    self.url, cache_dir=self.cache_dir, storage_options=self.storage_options
                )
            self._reader_pid = os.getpid()
            # len() of LitData's dataset is this rank's share under DDP; its chunks hold the whole split.
            stored = sum(end - start for start, end in self._reader.region_of_interest)
            if stored != self.size:
                raise UserError(
                    f"{self.url} holds {stored} images but its {DATASET_FILE} says {self.size}: "
                    "optimize the dataset again"
                )
        return self._reader

    def describe(self, index: int) -> str:
        """``<split url>/<the file's path in the source folder>``: what skipped files and reports name."""
        return f"{self.url}/{self._get(index)['name']}"

    def read(self, index: int) -> tuple[ImageFile, int]:
        item = self._get(index)
        label = int(item["label"])
        label = self.label_map[label] if self.label_map is not None else label
        return ImageFile(f"{self.url}/{item['name']}", data=item["image"]), label
