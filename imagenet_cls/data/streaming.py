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

import bisect
import hashlib
import itertools
import json
import os
import random
import re
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagenet_cls.data.datasets import ImageFileDataset, PredictDataset, Transform, safe_output_path
from imagenet_cls.data.images import ImageFile
from imagenet_cls.data.layout import DatasetLayout
from imagenet_cls.errors import MissingPathError, UserError

if TYPE_CHECKING:
    from imagenet_cls.data.transforms import EvalTransform

DATASET_FILE = "dataset.json"  # written by imagenet_cls.prepare.litdata_writer
CLASS_MAP_FILE = "folder_num_class_map.txt"
OPEN_CHUNK_FILES = 64  # chunk files of a local split kept open per process (ImageNet: ~2,200 of 64 MB)
READ_AHEAD_THREADS = 16  # HTTP requests in flight per DataLoader worker when a batch is read from a bucket
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
    provider = _get_fs_provider(url, storage_options)
    for name in (DATASET_FILE, CLASS_MAP_FILE):
        try:
            provider.download_file(f"{url}/{name}", str(folder / name))
        except Exception as error:  # botocore/gcs errors differ; each one means the same to the user
            if name == DATASET_FILE:
                raise UserError(
                    f"{option} {url}/{name} cannot be read ({type(error).__name__}: {error}); check the URL, "
                    "credentials and endpoint (AWS_* variables or --data.storage_options)"
                ) from None
    return folder


@contextmanager
def _python_random_kept() -> Iterator[None]:
    # LitData's S3 client (credential refresh jitter) and botocore's retries draw from Python's global ``random``
    # while they open and download: keep its state as it was, so augmentations (seeded per sample) and the
    # training process never depend on I/O. LitData and botocore draw from no other global generator (a test says).
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def _quiet_litdata() -> None:
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no PyPI request at each dataset


class ChunkFiles:
    """The items of a local LitData split as bytes, each by two small reads: its offsets, then its bytes.

    A chunk file is LitData's: ``num_items`` (uint32), ``num_items + 1`` offsets (uint32), then the items. The
    chunks and their item counts come from the split's ``index.json``; the last files used stay open.
    """

    def __init__(self, folder: Path) -> None:
        chunks = json.loads((folder / "index.json").read_text(encoding="utf-8"))["chunks"]
        names = [str(chunk["filename"]) for chunk in chunks]
        strange = [name for name in names if os.path.basename(name) != name or name in ("", ".", "..")]
        if strange:  # a chunk is a file of the split's folder: never a path that leaves it
            raise ValueError(f"index.json names chunk {strange[0]!r}, not a file of {folder}")
        self.files = [str(folder / name) for name in names]
        self.starts = list(itertools.accumulate((int(chunk["chunk_size"]) for chunk in chunks), initial=0))
        self._open: OrderedDict[int, int] = OrderedDict()  # chunk -> file descriptor, least recently used first

    def __del__(self, _close=os.close) -> None:  # os.close bound now: module globals may be gone at exit
        for descriptor in getattr(self, "_open", {}).values():
            try:
                _close(descriptor)
            except OSError:
                pass

    def item_bytes(self, index: int) -> bytes:
        """Item ``index`` of the split, serialized as LitData wrote it."""
        chunk = bisect.bisect_right(self.starts, index) - 1
        descriptor = self._descriptor(chunk)
        begin, end = struct.unpack("<II", os.pread(descriptor, 8, 4 * (1 + index - self.starts[chunk])))
        return os.pread(descriptor, end - begin, begin)

    def _descriptor(self, chunk: int) -> int:
        if chunk in self._open:
            self._open.move_to_end(chunk)
            return self._open[chunk]
        if len(self._open) >= OPEN_CHUNK_FILES:
            os.close(self._open.popitem(last=False)[1])
        self._open[chunk] = os.open(self.files[chunk], os.O_RDONLY)
        return self._open[chunk]


class OptimizedSplit:
    """The items of one split of an optimized dataset, by index: dicts with ``image`` bytes, ``label``, ``name``.

    LitData's ``StreamingDataset`` is opened on first use in each process (DataLoader workers open their own; the
    object pickles small) and kept: opening reads the index and costs about a millisecond. From a bucket an item is
    LitData's byte-range request; from a local folder it is two small reads (:class:`ChunkFiles`) decoded by
    LitData's item loader.

    Args:
        url: The split's folder or URL (``.../train``).
        size: Its number of images (from ``dataset.json``; checked against the index).
        storage_options: Object-store options (endpoint, credentials) for LitData.
        cache_dir: Where LitData keeps a remote dataset's index (None: its default, ``~/.lightning/chunks``).
    """

    def __init__(
        self, url: str, size: int, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None
    ) -> None:
        self.url, self.size = url, size
        self.storage_options, self.cache_dir = dict(storage_options or {}), cache_dir
        self.remote = remote_url(url) is not None
        self._reader = None
        self._reader_pid = 0
        self._loader = None  # LitData's item loader of the open dataset (it decodes an item's bytes)
        self._chunks: ChunkFiles | None = None  # a local split's chunk files
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._batch: dict[int, dict[str, Any]] = {}  # the items of the batch read ahead
        self._last: tuple[int, dict[str, Any]] | None = None  # the last item read on its own

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict[str, Any]:
        closed = {"_reader": None, "_loader": None, "_chunks": None, "_pool": None, "_batch": {}, "_last": None}
        return {**self.__dict__, **closed}  # each worker opens its own

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Naming an item and reading it ask for it in turn: the item is kept, so it is read once.
        if index in self._batch:
            return self._batch[index]
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        item = self._read(int(index))
        self._last = (index, item)
        return item

    def _read(self, index: int) -> dict[str, Any]:
        reader = self.reader  # opened in this process
        try:
            if self._chunks is not None:  # local: our reads, no LitData call, nothing drawn
                try:
                    item = self._loader.deserialize(self._chunks.item_bytes(index))
                except OSError as error:  # a chunk missing or cut short
                    raise ValueError(str(error)) from None
            else:
                with _python_random_kept():
                    item = reader[index]
        except (struct.error, ValueError, KeyError, IndexError, TypeError, AttributeError, AssertionError) as error:
            raise UserError(f"{self.url}: item {index} cannot be decoded ({type(error).__name__}: {error}): "
                            "the optimized dataset is damaged; optimize it again") from None  # fmt: skip
        if not (isinstance(item, dict) and isinstance(item.get("image"), bytes | bytearray | memoryview)
                and isinstance(item.get("label"), int) and isinstance(item.get("name"), str)):  # fmt: skip
            raise UserError(f"{self.url}: item {index} is not an image with a label and a name: optimize it again")
        return item

    def read_ahead(self, indexes: list[int], timeout: float | None = None) -> None:
        """Fetch ``indexes`` (one batch) at once: from a bucket each item is an HTTP request, so they overlap.

        A local split's items are read in turn when asked (two small reads each; nothing to overlap). An item that
        fails or takes longer than ``timeout`` is left out here: reading it on its own then reports it as usual.
        """
        if not self.remote or len(indexes) < 2:
            return
        reader = self.reader  # opened here, not by many threads at once
        if self._pool is None or self._pool_pid != os.getpid():  # a forked worker has no threads of its parent's
            self._pool = ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="imagenet_cls-read")
            self._pool_pid = os.getpid()
        with _python_random_kept():
            futures = {index: self._pool.submit(reader.__getitem__, int(index)) for index in dict.fromkeys(indexes)}
            wait(futures.values(), timeout=timeout)
        self._batch = {
            index: future.result() for index, future in futures.items() if future.done() and not future.exception()
        }

    def name(self, index: int) -> str:
        """Item ``index``'s path relative to the folder it was optimized from (``item <index>`` if unreadable)."""
        try:
            return str(self[index]["name"])
        except UserError:  # reading the item again reports it (a bad image, or the error)
            return f"item {index}"

    @property
    def reader(self):
        """LitData's ``StreamingDataset`` over the split, read by item index (one per process, forked ones too)."""
        if self._reader is None or self._reader_pid != os.getpid():
            _quiet_litdata()
            from filelock import FileLock
            from litdata import StreamingDataset
            from litdata.streaming.item_loader import PyTreeLoader

            # LitData 0.2.76 races when processes (DataLoader workers) open one remote dataset at once: one finds
            # the cache folder without the index.json another is downloading. One at a time per dataset.
            key = hashlib.md5(self.url.encode()).hexdigest()[:12]
            lock = FileLock(Path(tempfile.gettempdir()) / f"imagenet_cls-{key}.lock") if self.remote else nullcontext()
            loader = PyTreeLoader()
            try:
                with lock, _python_random_kept():
                    self._reader = StreamingDataset(
                        self.url, cache_dir=self.cache_dir, storage_options=self.storage_options, item_loader=loader
                    )
                    len(self._reader)  # reads the index and sets the item loader up
                chunks = None if self.remote else ChunkFiles(Path(self.url))
            except Exception as error:  # LitData fails in many ways on a damaged index.json (fuzzed)
                self._reader = None
                raise UserError(
                    f"{self.url}/index.json cannot be opened ({type(error).__name__}: {str(error)[:160]}): "
                    "check the path or bucket, or optimize the dataset again"
                ) from None
            self._loader = loader
            # A local split is read by us, two small reads per item: LitData memory-maps local chunks, and in
            # random order (training) a page fault reads ahead around it (the device's read-ahead, 8 MB on some
            # virtual disks) and it advises the kernel to read whole chunks (64 MB): a dataset larger than the page
            # cache is then read from disk many times over. Its reads from a bucket are byte ranges already.
            self._chunks = chunks
            self._reader_pid = os.getpid()
            # len() of LitData's dataset is this rank's share under DDP; its chunks hold the whole split.
            stored = sum(end - start for start, end in self._reader.region_of_interest)
            if stored != self.size:
                raise UserError(
                    f"{self.url} holds {stored} images but its {DATASET_FILE} says {self.size}: "
                    "optimize the dataset again"
                )
        return self._reader


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
