"""The one place that decides how a dataset is stored and opens it: every subcommand asks here.

``--data.data_dir`` (and a split named by ``--data.predict_path``) is one of:

* class folders (``train/ val/`` or one folder of class folders; :mod:`~imagenet_cls.data.layout`);
* an optimized LitData dataset, local or ``s3://`` (:mod:`~imagenet_cls.data.streaming`);
* a Hugging Face parquet snapshot (:mod:`~imagenet_cls.data.parquet`);
* WebDataset tar shards, a folder or a brace pattern (:mod:`~imagenet_cls.data.wds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from imagenet_cls.data.layout import DatasetLayout, read_layout
from imagenet_cls.errors import UserError

Backend = Literal["folders", "optimized", "parquet", "webdataset"]


def refuse_hub(spec: str | Path, option: str) -> None:
    """A one-line error for ``hf://`` (the Hugging Face hub is not read directly: download the snapshot first)."""
    text = str(spec)
    if text.startswith(("hf://", "hf:/")):
        repo = text.split("datasets/", 1)[-1].strip("/") or "ORG/NAME"
        raise UserError(
            f"{option} {text}: the Hugging Face hub is not read over the network; download the snapshot "
            f"(hf download {repo} --repo-type dataset --local-dir DIR) and give DIR"
        )


def backend_of(data_dir: str | Path, storage_options: dict[str, Any] | None = None) -> Backend:
    """How ``data_dir`` is stored (an ``s3://`` prefix is listed: ``dataset.json``, ``.tar`` or ``.parquet`` files)."""
    return _source(data_dir, storage_options, "--data.data_dir")[0]


def _source(spec: str | Path, storage_options: dict[str, Any] | None, option: str) -> tuple[Backend, dict, Any]:
    """``(backend, {split: files} of records, the bucket's ObjectStore or None)`` of ``spec``."""
    from imagenet_cls.data.object_store import ObjectStore, s3_url
    from imagenet_cls.data.parquet import parquet_files
    from imagenet_cls.data.streaming import is_optimized
    from imagenet_cls.data.wds import wds_shards

    refuse_hub(spec, option)
    url = s3_url(spec)
    if url is not None:
        store = ObjectStore(storage_options)
        backend, files = _bucket_source(url, store, option)
        if backend is None:
            raise UserError(
                f"{option} {url} holds no dataset.json (an optimized dataset), .parquet files (a Hugging Face "
                "snapshot) or .tar shards (WebDataset): check the URL"
            )
        return backend, files, store
    if is_optimized(spec):
        return "optimized", {}, None
    if shards := wds_shards(spec):
        return "webdataset", shards, None
    if Path(spec).exists() and (files := parquet_files(Path(spec))):
        return "parquet", files, None
    return "folders", {}, None


def _bucket_source(url: str, store, option: str) -> tuple[Backend | None, dict]:
    """The backend of an ``s3://`` prefix, pattern or object, and its records' files (None: nothing found there)."""
    from imagenet_cls.data.parquet import parquet_files
    from imagenet_cls.data.wds import is_brace_pattern, wds_shards

    try:
        if is_brace_pattern(url) or url.endswith(".tar"):
            return ("webdataset", shards) if (shards := wds_shards(url, store)) else (None, {})
        if url.endswith(".parquet"):
            return ("parquet", files) if (files := parquet_files(url, store)) else (None, {})
        top = store.list(url, recursive=False)
        if {name.rsplit("/", 1)[-1] for name in top} & {"dataset.json", "index.json"}:
            return "optimized", {}
        if shards := wds_shards(url, store):
            return "webdataset", shards
        if files := parquet_files(url, store):
            return "parquet", files
    except UserError as error:
        if "AccessDenied" in str(error):  # no ListBucket right: perhaps an optimized dataset, read by known keys
            return "optimized", {}
        raise type(error)(f"{option} {error}") from None
    return None, {}


def open_layout(
    data_dir: str | Path,
    split: tuple[float, float, float],
    split_seed: int,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> DatasetLayout:
    """The classes and per-split samples of ``data_dir``, whatever its backend (``cache_dir``: see the datamodule)."""
    from imagenet_cls.data.parquet import read_parquet_layout
    from imagenet_cls.data.streaming import read_optimized_layout
    from imagenet_cls.data.wds import read_wds_layout

    backend, files, store = _source(data_dir, storage_options, "--data.data_dir")
    if backend == "optimized":
        return read_optimized_layout(data_dir, storage_options)
    if backend == "webdataset":
        return read_wds_layout(data_dir, files, store, cache_dir)
    if backend == "parquet":
        return read_parquet_layout(data_dir, files, store)
    return read_layout(Path(data_dir), tuple(split), split_seed)


def open_predict_split(spec: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None):
    """``--data.predict_path`` as stored records: an ``OptimizedSplit``, a ``Records``, or None (image files).

    Records are a parquet file or shard, a whole snapshot or shard folder when it has one split, or one split of
    it (``SNAPSHOT/val``, ``SHARDS/train``), in a folder or under an ``s3://`` prefix.
    """
    from imagenet_cls.data.object_store import s3_url
    from imagenet_cls.data.parquet import parquet_files, read_parquet_layout
    from imagenet_cls.data.streaming import optimized_split
    from imagenet_cls.data.wds import is_brace_pattern, read_wds_layout, wds_shards

    option = "--data.predict_path"
    refuse_hub(spec, option)
    if s3_url(spec) is not None:
        found = _bucket_predict_source(s3_url(spec), storage_options, option, cache_dir)
        if found is None:  # an optimized dataset or split, or nothing there: LitData's reader says which
            return optimized_split(spec, storage_options, cache_dir)
        layout, candidate, split = found
    else:
        found = optimized_split(spec, storage_options, cache_dir)
        if found is not None:
            return found
        path = Path(spec)
        # SHARDS/train or SNAPSHOT/val names a split that is no folder; an existing folder of images is image files.
        candidate, split = (path, None) if path.exists() or is_brace_pattern(spec) else (path.parent, path.name)
        if not candidate.exists() and not is_brace_pattern(str(candidate)):
            return None
        if shards := wds_shards(candidate):
            layout = read_wds_layout(candidate, shards)
        elif files := parquet_files(candidate):
            layout = read_parquet_layout(candidate, files)
        else:
            return None
    if split is None and len(layout.records) > 1:
        names = ", ".join(f"{spec.rstrip('/')}/{name}" for name in layout.records)
        raise UserError(f"{option} {spec} holds several splits: give one ({names})")
    wanted = next(iter(layout.records)) if split is None else _split_name(split)
    if wanted not in layout.records:
        raise UserError(f"{option} {spec}: {candidate} has no split {split!r} ({', '.join(layout.records)})")
    return layout.records[wanted]


def _bucket_predict_source(url: str, storage_options: dict[str, Any] | None, option: str, cache_dir: str | None):
    """``(layout, where, split or None)`` of records at ``url`` or at its parent prefix (``url`` naming a split).

    None: ``url`` is no records (an optimized dataset or split, or nothing): the caller asks LitData.
    """
    from imagenet_cls.data.object_store import ObjectStore
    from imagenet_cls.data.parquet import read_parquet_layout
    from imagenet_cls.data.wds import is_brace_pattern, read_wds_layout

    store = ObjectStore(storage_options)
    parent, _, name = url.rpartition("/")
    one_object = is_brace_pattern(url) or url.endswith((".tar", ".parquet"))
    candidates = [(url, None)] + ([(parent, name)] if len(parent) > len("s3://") and not one_object else [])
    for where, split in candidates:
        backend, files = _bucket_source(where, store, option)
        if backend == "webdataset":
            return read_wds_layout(where, files, store, cache_dir), where, split
        if backend == "parquet":
            return read_parquet_layout(where, files, store), where, split
        if backend == "optimized":
            return None
    return None


def _split_name(name: str) -> str:
    from imagenet_cls.data.records import SPLIT_NAMES

    return SPLIT_NAMES.get(name.lower(), name)
