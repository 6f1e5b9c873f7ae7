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


def backend_of(data_dir: str | Path) -> Backend:
    """How ``data_dir`` is stored (an ``s3://`` URL is an optimized dataset)."""
    from imagenet_cls.data.parquet import parquet_files
    from imagenet_cls.data.streaming import is_optimized
    from imagenet_cls.data.wds import wds_shards

    refuse_hub(data_dir, "--data.data_dir")
    if is_optimized(data_dir):
        return "optimized"
    if wds_shards(data_dir):
        return "webdataset"
    if Path(data_dir).exists() and parquet_files(Path(data_dir)):
        return "parquet"
    return "folders"


def open_layout(
    data_dir: str | Path,
    split: tuple[float, float, float],
    split_seed: int,
    storage_options: dict[str, Any] | None = None,
) -> DatasetLayout:
    """The classes and per-split samples of ``data_dir``, whatever its backend."""
    from imagenet_cls.data.parquet import parquet_files, read_parquet_layout
    from imagenet_cls.data.streaming import read_optimized_layout
    from imagenet_cls.data.wds import read_wds_layout, wds_shards

    backend = backend_of(data_dir)
    if backend == "optimized":
        return read_optimized_layout(data_dir, storage_options)
    if backend == "webdataset":
        return read_wds_layout(data_dir, wds_shards(data_dir))
    if backend == "parquet":
        return read_parquet_layout(Path(data_dir), parquet_files(Path(data_dir)))
    return read_layout(Path(data_dir), tuple(split), split_seed)


def open_predict_split(spec: str, storage_options: dict[str, Any] | None = None, cache_dir: str | None = None):
    """``--data.predict_path`` as stored records: an ``OptimizedSplit``, a ``Records``, or None (image files).

    Records are a parquet file or shard, a whole snapshot or shard folder when it has one split, or one split of
    it (``SNAPSHOT/val``, ``SHARDS/train``).
    """
    from imagenet_cls.data.parquet import parquet_files, read_parquet_layout
    from imagenet_cls.data.streaming import optimized_split
    from imagenet_cls.data.wds import is_brace_pattern, read_wds_layout, wds_shards

    refuse_hub(spec, "--data.predict_path")
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
        raise UserError(f"--data.predict_path {spec} holds several splits: give one ({names})")
    wanted = next(iter(layout.records)) if split is None else _split_name(split)
    if wanted not in layout.records:
        raise UserError(f"--data.predict_path {spec}: {candidate} has no split {split!r} ({', '.join(layout.records)})")
    return layout.records[wanted]


def _split_name(name: str) -> str:
    from imagenet_cls.data.records import SPLIT_NAMES

    return SPLIT_NAMES.get(name.lower(), name)
