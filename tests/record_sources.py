"""Write a folder dataset as the formats' own libraries write them: a Hugging Face parquet snapshot (``datasets``)
and WebDataset tar shards (``webdataset``), the samples of each split in the folder reader's order."""

from __future__ import annotations

import math
import os
from pathlib import Path

HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def write_parquet_snapshot(
    splits: dict[str, list[tuple[str, int]]],
    names: list[str],
    dest: Path,
    files: int = 2,
    hidden: tuple = (),
    group_rows: int = 4,
) -> Path:
    """``dest/data/<split>-0000i-of-0000N.parquet`` + a card; ``hidden`` splits get label -1 (as ImageNet's test);
    ``group_rows`` rows a row group (4: several groups in a tiny test; ``datasets`` itself writes 100 images)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for split, samples in splits.items():
        rows = {
            "image": [{"bytes": Path(p).read_bytes(), "path": _stored_path(p)} for p, _ in samples],
            "label": [-1 if split in hidden else label for _, label in samples],
        }
        table = datasets.Dataset.from_dict(rows, features=features)
        per_file = math.ceil(len(table) / files)
        for i in range(files):
            part = table.select(range(i * per_file, min(len(table), (i + 1) * per_file)))
            part.to_parquet(
                str(dest / "data" / f"{HUB_SPLITS[split]}-{i:05d}-of-{files:05d}.parquet"), batch_size=group_rows
            )
    (dest / "README.md").write_text("---\nlicense: other\n---\n# test snapshot\n", encoding="utf-8")
    return dest


def write_wds_shards(splits: dict[str, list[tuple[str, int]]], dest: Path, per_shard: int = 7) -> Path:
    """``dest/<split>-00000i.tar`` by ``webdataset.ShardWriter``: ``<key>.jpg`` + ``<key>.cls`` per sample."""
    import webdataset

    dest.mkdir(parents=True, exist_ok=True)
    for split, samples in splits.items():
        with webdataset.ShardWriter(str(dest / f"{HUB_SPLITS[split]}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
            for number, (path, label) in enumerate(samples):
                key = f"{number:06d}_{Path(path).parent.name}_{Path(path).stem}"
                extension = Path(path).suffix.lstrip(".").lower()
                sink.write({"__key__": key, extension: Path(path).read_bytes(), "cls": label})
    return dest


def _stored_path(path: str) -> str:
    """``<class folder>/<file>``: unique within a split, as the hub's stored paths are."""
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
