"""WebDataset tar shards read in place, by index: a tar offset index, then one ``pread`` per image.

Shards are a folder of ``.tar`` files or a brace pattern (``train-{0000..0146}.tar``); each shard's split is the
``train``/``validation``/``val``/``test`` in its name, or the file lists of an ``_info.json`` (timm/imagenet-1k-wds).
A sample is the consecutive members sharing a key (``<key>.jpg`` + ``<key>.cls``): its image is a ``.jpg``,
``.jpeg``, ``.png`` or ``.webp``; its label the integer in ``.cls``, else ``label``/``cls`` in ``.json``.

Indexing walks each shard's 512-byte headers (seeking over the image data; the small label members are read), so
setting up touches ~1 KB per sample (in a bucket, once: :mod:`~imagenet_cls.data.wds_index` keeps each shard's index
on disk). The index keeps, per sample, its shard, offset, size, label and name in a few NumPy arrays (~30 bytes a
sample). The ``webdataset`` package reads shards as a stream: it has no random access, so it could not serve the
samplers the other sources share (per-sample seeds, DDP sharding, exact resume).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagenet_cls.data.records import SPLIT_NAMES, RecordLayout, check_labels, numbered_classes
from imagenet_cls.errors import MissingPathError, UserError

if TYPE_CHECKING:
    from imagenet_cls.data.object_store import ObjectStore

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
OPEN_SHARDS = 64  # shard files kept open per process
INDEX_PROCESSES = 8  # shards indexed at once
INDEX_THREADS = 32  # shards in a bucket indexed at once (each walk waits on one ranged GET at a time)
INDEX_BLOCK = 16 * 2**10  # bytes a ranged GET reads while walking a shard in a bucket (headers, small members)
_SPLIT_TOKEN = re.compile(r"(?:^|[-_.])(train|validation|valid|val|test)(?=$|[-_.\d])", re.IGNORECASE)


def is_brace_pattern(spec: str) -> bool:
    """Whether ``spec`` names shards by a brace pattern (``train-{0000..0146}.tar``)."""
    return "{" in spec and ".." in spec and spec.rstrip("/").endswith(".tar")


def wds_shards(spec: str | Path, store: ObjectStore | None = None) -> dict[str, list[str]]:
    """``{split: shards}`` of a folder of tar shards, a brace pattern, or one ``.tar`` (``{}``: not shards).

    With ``store``, ``spec`` is an ``s3://`` prefix, pattern or object.
    """
    spec = str(spec).rstrip("/") if store is not None else str(spec)
    if is_brace_pattern(spec):
        from braceexpand import braceexpand

        files = list(braceexpand(spec))
        if store is not None:
            found = {}
            for folder in dict.fromkeys(f.rsplit("/", 1)[0] for f in files):
                found.update(store.list(folder, recursive=False))
            missing = [f for f in files if f not in found]
        else:
            missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise MissingPathError(f"{spec}: {len(missing)} shards missing, such as {missing[0]}")
        return _by_split(files)
    if spec.endswith(".tar") and (store.exists(spec) if store is not None else Path(spec).is_file()):
        return {"": [spec]}
    if store is not None:
        found = store.list(spec, recursive=False)
        info = f"{spec}/_info.json"
        info_text = store.read(info).decode("utf-8") if info in found else None
        tars = [url for url in found if url.endswith(".tar")]
    elif Path(spec).is_dir():
        info_text = _read_text(Path(spec, "_info.json"))
        tars = [str(p) for p in sorted(Path(spec).glob("*.tar"))]
    else:
        return {}
    if info_text is not None:
        splits = json.loads(info_text).get("splits", {})
        listed = {
            SPLIT_NAMES.get(name.lower(), name): [_join(spec, f, store) for f in split["filenames"]]
            for name, split in splits.items()
            if split.get("filenames")
        }
        if listed:
            return listed
    return _by_split(tars)


def _join(folder: str, name: str, store: ObjectStore | None) -> str:
    return f"{folder}/{name}" if store is not None else str(Path(folder, name))


def _read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _by_split(files: list[str]) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {}
    for file in files:
        match = _SPLIT_TOKEN.search(file.rsplit("/", 1)[-1].removesuffix(".tar"))
        splits.setdefault(SPLIT_NAMES[match.group(1).lower()] if match else "", []).append(file)
    return splits


def read_wds_layout(
    spec: str | Path,
    shards: dict[str, list[str]],
    store: ObjectStore | None = None,
    cache_dir: str | Path | None = None,
) -> RecordLayout:
    """The classes and per-split records of WebDataset shards (``store``: in an ``s3://`` bucket).

    A bucket's shard indexes are kept under ``cache_dir`` (:func:`~imagenet_cls.data.wds_index.index_folder`).
    """
    where = str(spec).rstrip("/")
    index_dir = None
    if store is not None:
        from imagenet_cls.data.wds_index import index_folder

        index_dir = index_folder(cache_dir)
    records = {split: TarRecords(files, where, store, index_dir) for split, files in shards.items()}
    names = None
    if not is_brace_pattern(str(spec)):
        info = _join(where, "_info.json", store)
        if store is not None:
            text = store.read(info).decode("utf-8") if store.exists(info) else None
        else:
            text = _read_text(Path(info))
        names = json.loads(text).get("class_names") if text else None
    if names:
        from imagenet_cls.data.classes import classes_from_names

        classes = classes_from_names(list(names))
    else:
        classes = numbered_classes(records.values())
    for split_records in records.values():
        check_labels(split_records.labels, len(classes), split_records.where)
    return RecordLayout(
        classes=classes, splits={s: range(len(r)) for s, r in records.items()}, kind="webdataset", records=records
    )


class TarRecords:
    """The samples of one split's tar shards, by global index (image bytes by ``pread``).

    Args:
        shards: The split's tar files (or URLs), in order.
        where: The folder or pattern they were given as, for names in messages.
        store: The bucket the shards are in (None: local files).
        index_dir: Where a bucket's shard indexes are kept (None: built on every run).
    """

    def __init__(
        self, shards: list[str], where: str, store: ObjectStore | None = None, index_dir: Path | None = None
    ) -> None:
        self.shards, self.where, self.store = [str(s) for s in shards], where, store
        parts = _index_shards(self.shards, store, index_dir)
        self.shard_of = np.concatenate(
            [np.full(len(p[0]), number, dtype=np.int32) for number, p in enumerate(parts)] or [np.zeros(0, np.int32)]
        )
        self.offsets = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)])
        self.sizes = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)])
        self.labels = np.concatenate([p[2] for p in parts] or [np.zeros(0, np.int32)])
        names = [p[3] for p in parts]
        self.names = "".join("".join(n) for n in names)
        self.ends = np.cumsum([len(name) for n in names for name in n], dtype=np.int64)
        self.unlabelled = bool(len(self.labels)) and bool((self.labels == -1).all())
        self._open: OrderedDict[int, int] = OrderedDict()
        self._pid = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}  # each worker opens its own

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def groups(self) -> np.ndarray:
        starts = np.flatnonzero(np.diff(self.shard_of)) + 1
        return np.concatenate([[0], starts, [len(self)]]).astype(np.int64) if len(self) else np.zeros(1, np.int64)

    def name(self, index: int) -> str:
        start = int(self.ends[index - 1]) if index else 0
        return self.names[start : int(self.ends[index])]

    def image_bytes(self, index: int) -> bytes:
        if self.store is not None:  # one ranged GET
            return self.store.read(
                self.shards[int(self.shard_of[index])], int(self.offsets[index]), int(self.sizes[index])
            )
        if self._pid != os.getpid():
            self._open, self._pid = OrderedDict(), os.getpid()
        shard = int(self.shard_of[index])
        if shard in self._open:
            self._open.move_to_end(shard)
        else:
            if len(self._open) >= OPEN_SHARDS:
                os.close(self._open.popitem(last=False)[1])
            self._open[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return os.pread(self._open[shard], int(self.sizes[index]), int(self.offsets[index]))


def _index_shards(shards: list[str], store: ObjectStore | None = None, index_dir: Path | None = None) -> list:
    """:func:`index_tar` of each shard; shards in parallel processes (up to 8), in a bucket threads (up to 32).

    A bucket's shard whose index is kept in ``index_dir`` for its size and ETag is not read.
    """
    if store is not None:
        from concurrent.futures import ThreadPoolExecutor

        from imagenet_cls.data.object_store import random_kept

        with random_kept(), ThreadPoolExecutor(min(INDEX_THREADS, len(shards) or 1)) as pool:
            return list(pool.map(lambda shard: _bucket_index(shard, store, index_dir), shards))
    workers = min(INDEX_PROCESSES, os.cpu_count() or 1, len(shards))
    if workers < 2:
        return [index_tar(shard) for shard in shards]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(index_tar, shards, chunksize=max(1, len(shards) // (4 * workers))))


def _bucket_index(url: str, store: ObjectStore, index_dir: Path | None):
    """:func:`index_tar` of bucket shard ``url``, from ``index_dir`` when kept there for its size and ETag."""
    from imagenet_cls.data.wds_index import load_index, save_index

    size, etag = store.size(url), store.etag(url)
    if index_dir is None or etag is None:  # no ETag: no way to know the content is the one indexed
        return index_tar(url, store)
    if (index := load_index(index_dir, url, size, etag)) is None:
        index = index_tar(url, store)
        save_index(index_dir, url, size, etag, index)
    return index


def index_tar(path: str, store: ObjectStore | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Each sample's image ``(offsets, sizes, labels, names)`` in tar ``path``, from its headers.

    In a bucket (``store``) the walk reads through a file of ranged GETs of ``INDEX_BLOCK`` bytes: one GET per
    sample whose image is larger than the block, fewer for smaller ones; the images themselves are not read.

    Raises:
        UserError: the file is not a tar, or a sample has no image.
    """
    offsets, sizes, labels, names = [], [], [], []
    key, image, label = None, None, -1

    def close_sample() -> None:
        if key is None:
            return
        if image is None:
            raise UserError(f"{path}: sample {key!r} has no image ({', '.join(IMAGE_EXTENSIONS)})")
        offsets.append(image[0]), sizes.append(image[1]), labels.append(label), names.append(image[2])

    with open(path, "rb") if store is None else store.open(path, INDEX_BLOCK) as file:
        for name, offset, size in _members(file, path):
            slash = name.rfind("/")
            dot = name.find(".", slash + 1)
            sample, extension = (name[:dot], name[dot + 1 :].lower()) if dot >= 0 else (name, "")
            if sample != key:
                close_sample()
                key, image, label = sample, None, -1
            if extension in IMAGE_EXTENSIONS and image is None:
                image = (offset, size, name)
            elif extension == "cls" or (extension == "json" and label == -1):
                file.seek(offset)
                label = _label(file.read(size), extension, f"{path}: {name}")
        close_sample()
    return (
        np.asarray(offsets, dtype=np.int64),
        np.asarray(sizes, dtype=np.int64),
        np.asarray(labels, dtype=np.int32),
        names,
    )


def _label(data: bytes, extension: str, where: str) -> int:
    """The class index in a ``.cls`` member, or ``label``/``cls`` of a ``.json`` one (-1: none).

    Raises:
        UserError: the member holds no integer that fits a class index (garbage is never read as a label).
    """
    try:
        if extension == "cls":
            label = int(data.decode().strip())
        else:
            value = json.loads(data)
            found = value.get("label", value.get("cls")) if isinstance(value, dict) else None
            label = int(found) if isinstance(found, (int, str)) and str(found).lstrip("-").isdigit() else -1
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        label = None
    if label is None or not -1 <= label < 2**31:
        raise UserError(f"{where} holds no class index ({data[:20]!r}): fix or drop the sample")
    return label


def _members(file, path: str):
    """``(name, data offset, size)`` of each regular file in an open tar, walking its headers.

    Raises:
        UserError: a header is damaged or a member runs past the end of the file (a truncated shard).
    """
    offset, long_name, end = 0, None, file.seek(0, os.SEEK_END)  # a local file or a bucket's ranged reader
    while True:
        file.seek(offset)
        header = file.read(512)
        if len(header) < 512 or header == bytes(512):
            return
        if header[257:262] != b"ustar" and offset == 0:
            raise UserError(f"{path} is not a tar file (no ustar header): give WebDataset .tar shards")
        raw_size = header[124:136]
        try:
            size = int.from_bytes(raw_size[1:], "big") if raw_size[0] & 0x80 else int(raw_size.strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise UserError(f"{path}: the tar header at byte {offset} is damaged (size {raw_size!r})") from None
        kind, data = header[156:157], offset + 512
        if data + size > end:
            raise UserError(f"{path}: the member at byte {offset} runs past the end of the file: a truncated shard")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[345]:  # ustar's prefix field: the name's leading folders
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        if kind in (b"x", b"L"):  # pax extended header or GNU long name: names the next member
            file.seek(data)
            payload = file.read(size)
            long_name = _pax_path(payload) if kind == b"x" else payload.rstrip(b"\0").decode("utf-8", "replace")
        elif kind in (b"0", b"\0", b"7"):
            yield long_name or name, data, size
            long_name = None
        offset = data + (size + 511) // 512 * 512


def _pax_path(payload: bytes) -> str | None:
    for record in payload.decode("utf-8", "replace").splitlines():
        _, _, field = record.partition(" ")
        key, _, value = field.partition("=")
        if key == "path":
            return value
    return None
