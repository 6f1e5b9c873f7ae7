"""Issue 21: the training pipeline per core from a Hugging Face parquet snapshot and from WebDataset shards, against
class folders (the baseline, measured in the same run).

The sample images (``BENCH_RECORDS_IMAGES`` of them, default all 1000) as ``val/<wnid>/`` folders, as a parquet
snapshot written by ``datasets`` (4 files, 100 rows a row group: ``datasets``' own size for images) and as tar shards
written by ``webdataset`` (4 shards). Each reads, decodes and applies our training transform (224 px random-resized
crop, flip) in one thread, in the training sampler's random order, interleaved in chunks of 50 images
(:func:`bench.streaming._rates`); ``ROUNDS`` passes, each from freshly opened sources (no row group cached from the
pass before), and the median of each. The index set-up at ImageNet's size is ``make scale``'s
(:mod:`bench.scale_records`).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from bench.common import WORK, Result, sample_as_val_folders, sample_dir

IMAGES = int(os.environ.get("BENCH_RECORDS_IMAGES", 1000))
ROUNDS = int(os.environ.get("BENCH_RECORDS_ROUNDS", 3))


def run() -> list[Result]:
    import torch

    threads = torch.get_num_threads()
    try:
        return _run()
    finally:
        torch.set_num_threads(threads)


def _run() -> list[Result]:
    import torch

    from bench.streaming import SIZE, _rates
    from imagenet_cls.data.backends import open_layout
    from imagenet_cls.data.datasets import ImageFileDataset
    from imagenet_cls.data.layout import read_layout
    from imagenet_cls.data.records import RecordDataset
    from imagenet_cls.data.transforms import create_train_transform
    from tests.record_sources import write_parquet_snapshot, write_wds_shards

    work = WORK / "records"
    if sample_dir() is None:
        print("skipping bench.records: ../shared/data/imagenet-sample is absent", file=sys.stderr)
        return []
    torch.set_num_threads(1)
    folders = sample_as_val_folders(work / "folders")
    samples = list(read_layout(folders).samples("val"))[:IMAGES]
    names = sorted({Path(path).parent.name for path, _ in samples})
    snapshot = write_parquet_snapshot({"val": samples}, names, work / "parquet", files=4, group_rows=100)
    shards = write_wds_shards({"val": samples}, work / "shards", per_shard=-(-len(samples) // 4))
    transform = create_train_transform({"input_size": (3, SIZE, SIZE), "interpolation": "bilinear"})
    rounds: dict[str, list[float]] = {"folders": [], "parquet": [], "webdataset": []}
    for _ in range(ROUNDS):
        datasets = {"folders": ImageFileDataset(samples, transform)}
        for name, root in (("parquet", snapshot), ("webdataset", shards)):
            datasets[name] = RecordDataset(open_layout(root, (0.8, 0.1, 0.1), 0).records["val"], transform)
        for name, rate in _rates(datasets).items():
            rounds[name].append(rate)
    rates = {name: statistics.median(values) for name, values in rounds.items()}
    note = f"{len(samples)} sample images, 1 thread, train transform {SIZE}px, random order, median of {ROUNDS}"
    return [
        Result(f"train pipeline: {name} vs class folders", rates[name], rates["folders"], "img/s", note=note)
        for name in ("parquet", "webdataset")
    ]


if __name__ == "__main__":
    from bench.common import format_table

    WORK.mkdir(parents=True, exist_ok=True)
    print(format_table(run()))
