"""Reading the items of one split of a LitData optimized dataset by index, locally or from a bucket.

From a bucket an item is LitData's byte-range request (a batch's requests overlap); from a local folder it is two
small reads of LitData's chunk file (:class:`ChunkFiles`); either way LitData's item loader decodes the item.
:mod:`~imagenet_cls.data.streaming` builds the datasets on top.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import re
import struct
import tempfile
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from imagenet_cls.data.object_store import random_kept
from imagenet_cls.data.retries import RetryPolicy, StorageError
from imagenet_cls.errors import UserError

DATASET_FILE = "dataset.json"  # written by imagenet_cls.prepare.litdata_writer
OPEN_CHUNK_FILES = 64  # chunk files of a local split kept open per process (ImageNet: ~2,200 of 64 MB)
READ_AHEAD_THREADS = 16  # HTTP requests in flight per DataLoader worker when a batch is read from a bucket
_REMOTE = re.compile(r"^(s3|gs|gcs|azure|az)://?(.+)$")  # a Path argument collapses "s3://" into "s3:/"


def item_checksum(item: dict[str, Any]) -> int:
    """CRC-32 of an item's label, name and image bytes: stored with the item (``crc32``), checked when it is read.

    A byte changed in a chunk (in storage, or an offset that points elsewhere) then fails the check instead of
    giving another label, name or image.
    """
    crc = zlib.crc32(int(item["label"]).to_bytes(8, "little", signed=True))
    crc = zlib.crc32(str(item["name"]).encode("utf-8", "surrogatepass") + b"\0", crc)
    return zlib.crc32(item["image"], crc)


def remote_url(data_dir: str | Path) -> str | None:
    """``data_dir`` as an object-store URL (``s3://bucket/prefix``), or None for a local path."""
    match = _REMOTE.match(str(data_dir))
    return f"{match.group(1)}://{match.group(2).rstrip('/')}" if match else None


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

    def has_item_offsets(self) -> bool:
        """Whether the items lie between the chunk offsets (LitData's layout without an Arrow footer)."""
        if len(self.starts) < 2 or self.starts[1] == 0:
            return True
        descriptor = self._descriptor(0)
        begin, end = struct.unpack("<II", os.pread(descriptor, 8, 4))
        return end > begin

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
        self.retry = RetryPolicy.from_options(storage_options)  # a bucket's reads: bounded tries, then one line
        self._reader = None
        self._reader_pid = 0
        self._loader = None  # LitData's item loader of the open dataset (it decodes an item's bytes)
        self._chunks: ChunkFiles | None = None  # a local split's chunk files
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._batch: dict[int, dict[str, Any]] = {}  # the items of the batch read ahead
        self._failed: dict[int, StorageError] = {}  # items of that batch whose every try failed
        self._last: tuple[int, dict[str, Any]] | None = None  # the last item read on its own

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict[str, Any]:
        closed = {"_reader": None, "_loader": None, "_chunks": None, "_pool": None, "_batch": {}, "_failed": {},
                  "_last": None}  # fmt: skip
        return {**self.__dict__, **closed}  # each worker opens its own

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Naming an item and reading it ask for it in turn: the item is kept, so it is read once.
        if index in self._batch:
            return self._batch[index]
        if index in self._failed:  # its read ahead failed for good (tried READ_ATTEMPTS times, or damaged)
            raise self._failed[index]
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        with random_kept() if self.remote else nullcontext():
            item = self._checked(index, self._fetch(int(index)))
        self._last = (index, item)
        return item

    def _fetch(self, index: int) -> Any:
        """Item ``index`` as LitData decodes it (from a bucket tried again on transient failures); errors in a line."""
        reader = self.reader  # opened in this process
        try:
            if self._chunks is None:
                return self.retry.call(partial(reader.__getitem__, index), f"{self.url}: reading item {index}")
            try:  # local: our reads, no LitData call, nothing drawn
                return self._loader.deserialize(self._chunks.item_bytes(index))
            except OSError as error:  # a chunk missing or cut short
                raise ValueError(str(error)) from None
        except StorageError:  # the bucket, not the item
            raise
        except (struct.error, ValueError, KeyError, IndexError, TypeError, AttributeError, AssertionError) as error:
            raise UserError(f"{self.url}: item {index} cannot be decoded ({type(error).__name__}: {error}): "
                            "the optimized dataset is damaged; optimize it again") from None  # fmt: skip
        except Exception as error:  # a bucket's refusal (403, 404, 416): not transient, and not this image's bytes
            if not self.remote:
                raise
            raise StorageError(f"{self.url}: reading item {index} failed ({type(error).__name__}: {str(error)[:200]}):"
                               " check the URL and the credentials; a chunk missing or cut short: optimize the dataset "
                               "again") from None  # fmt: skip

    def _checked(self, index: int, item: Any) -> dict[str, Any]:
        """``item`` if it is an image with a label and a name and matches its checksum; else a one-line error."""
        if not (isinstance(item, dict) and isinstance(item.get("image"), bytes | bytearray | memoryview)
                and isinstance(item.get("label"), int) and isinstance(item.get("name"), str)):  # fmt: skip
            raise UserError(f"{self.url}: item {index} is not an image with a label and a name: optimize it again")
        if "crc32" in item and item_checksum(item) != item["crc32"]:  # datasets written before it have none
            raise UserError(f"{self.url}: item {index} fails its checksum (crc32): its chunk is damaged; "
                            "optimize the dataset again")  # fmt: skip
        return item

    def read_ahead(self, indexes: list[int], timeout: float | None = None) -> None:
        """Fetch ``indexes`` (one batch) at once: from a bucket each item is an HTTP request, so they overlap.

        A local split's items are read in turn when asked (two small reads each; nothing to overlap). An item whose
        read failed for good (every try, or damaged) raises its error when asked for; one that takes longer than
        ``timeout`` is left out here: reading it on its own then reports it as usual.
        """
        if not self.remote or len(indexes) < 2:
            return
        _ = self.reader  # opened here, not by many threads at once
        if self._pool is None or self._pool_pid != os.getpid():  # a forked worker has no threads of its parent's
            self._pool = ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="imagenet_cls-read")
            self._pool_pid = os.getpid()
        with random_kept():
            futures = {index: self._pool.submit(self._fetch, int(index)) for index in dict.fromkeys(indexes)}
            wait(futures.values(), timeout=timeout)
        self._batch, self._failed = {}, {}
        for index, future in futures.items():
            if not future.done():
                continue
            try:
                self._batch[index] = self._checked(index, future.result())
            except UserError as error:
                self._failed[index] = error
            except Exception:  # read on its own when asked for: reported as usual
                pass

    def name(self, index: int) -> str:
        """Item ``index``'s path relative to the folder it was optimized from (``item <index>`` if unreadable)."""
        try:
            return str(self[index]["name"])
        except StorageError:  # the bucket failed: no use reading again
            raise
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
            options = self.retry.client_options(self.storage_options, self.url)

            def open_index():
                dataset = StreamingDataset(self.url, cache_dir=self.cache_dir, storage_options=options,
                                           item_loader=loader)  # fmt: skip
                len(dataset)  # reads the index and sets the item loader up
                return dataset

            try:
                with lock, random_kept():
                    index_url = f"{self.url}/index.json"
                    self._reader = self.retry.call(open_index, index_url) if self.remote else open_index()
                # A local split is read by us, two small reads per item: LitData memory-maps local chunks, and in
                # random order (training) a page fault reads ahead around it (the device's read-ahead, 8 MB on
                # some virtual disks) and it advises the kernel to read whole chunks (64 MB): a dataset larger than
                # the page cache is then read from disk many times over. Its reads from a bucket are byte ranges.
                chunks = None if self.remote else ChunkFiles(Path(self.url))
                # LitData 0.2.76 with pyarrow installed writes a flat {bytes, int, str} item into an Arrow footer
                # (the offsets then hold no item): such a split is read by LitData's own reader.
                if chunks is not None and not chunks.has_item_offsets():
                    chunks = None
            except StorageError:
                raise
            except Exception as error:  # LitData fails in many ways on a damaged index.json (fuzzed)
                self._reader = None
                raise UserError(
                    f"{self.url}/index.json cannot be opened ({type(error).__name__}: {str(error)[:160]}): "
                    "check the path or bucket, or optimize the dataset again"
                ) from None
            self._loader = loader
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
