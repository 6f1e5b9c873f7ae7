"""Tar offset indexes of bucket shards kept on local disk, so a run after the first makes no index GETs.

Indexing a shard in a bucket walks its headers by ranged GETs (about one per ImageNet image: ~1.28M for the train
split); a shard's index, once built, is saved as ``<folder>/<sha256 of its URL>.npz`` and read back while the
object's size and ETag (from the listing) are unchanged; another size or ETag indexes it again. The file holds the
shard's ``s3://bucket/key`` URL, size, ETag and its index arrays (no credentials: the storage options never reach
it). A file that cannot be read or does not hold a consistent index is ignored and written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1  # bumped when index_tar's output changes: older files are then indexed again
Index = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]  # index_tar's (offsets, sizes, labels, names)


def index_folder(cache_dir: str | Path | None) -> Path:
    """Where shard indexes are kept: ``<cache_dir>/wds-index``, else ``$XDG_CACHE_HOME/imagenet_cls/wds-index``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "wds-index"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagenet_cls" / "wds-index"


def index_path(folder: Path, url: str) -> Path:
    """The file of shard ``url``'s index (a hash of the URL: one file per shard, replaced when it changes)."""
    return folder / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.npz"


def load_index(folder: Path, url: str, size: int, etag: str) -> Index | None:
    """Shard ``url``'s saved index when it was made from this size and ETag (None: none, stale or unreadable)."""
    path = index_path(folder, url)
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        return _checked(arrays, url, size, etag)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.debug("%s: ignoring an unreadable shard index (%s)", path, error)
        return None


def _checked(arrays: dict[str, np.ndarray], url: str, size: int, etag: str) -> Index | None:
    """The index in ``arrays`` when it is this shard's, made from this content, and consistent."""
    key = (int(arrays["format"]), bytes(arrays["url"]).decode(), int(arrays["size"]), bytes(arrays["etag"]).decode())
    if key != (FORMAT, url, size, etag):
        return None
    offsets, sizes, labels = arrays["offsets"], arrays["sizes"], arrays["labels"]
    names, ends = bytes(arrays["names"]), arrays["name_ends"]
    count = len(offsets)
    if not (offsets.dtype == sizes.dtype == ends.dtype == np.int64 and labels.dtype == np.int32):
        return None
    if not (offsets.ndim == sizes.ndim == labels.ndim == ends.ndim == 1):
        return None
    if not (len(sizes) == len(labels) == len(ends) == count):
        return None
    if count and not (
        (offsets >= 0).all() and (sizes >= 0).all() and (offsets + sizes <= size).all() and (labels >= -1).all()
    ):
        return None
    starts = np.concatenate([[0], ends[:-1]]) if count else ends
    if (count and ends[-1] != len(names)) or (not count and names) or (ends < starts).any():
        return None
    return offsets, sizes, labels, [names[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())]


def save_index(folder: Path, url: str, size: int, etag: str, index: Index) -> None:
    """Save shard ``url``'s index (atomically: a partial file, then renamed); a failure is logged, never raised."""
    offsets, sizes, labels, names = index
    encoded = [name.encode("utf-8") for name in names]
    path = index_path(folder, url)
    partial = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            np.savez(
                file,
                format=np.int64(FORMAT),
                url=np.frombuffer(url.encode(), np.uint8),
                size=np.int64(size),
                etag=np.frombuffer(etag.encode(), np.uint8),
                offsets=np.asarray(offsets, np.int64),
                sizes=np.asarray(sizes, np.int64),
                labels=np.asarray(labels, np.int32),
                names=np.frombuffer(b"".join(encoded), np.uint8),
                name_ends=np.cumsum([len(name) for name in encoded], dtype=np.int64),
            )
        os.replace(partial, path)
    except OSError as error:
        log.warning("%s: the index of %s is not kept (%s); the next run indexes it again", folder, url, error)
        with contextlib.suppress(OSError):
            partial.unlink()
