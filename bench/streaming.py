"""Issue 15: the training pipeline per core from a LitData optimized dataset against class folders.

The 1000 sample images are prepared as ``val/<wnid>/`` folders, then optimized twice: original bytes, and
``--max-side 320`` (re-encoded, quality 90). Each variant reads, decodes and applies our training transform
(224 px random-resized crop, flip) in one thread, item by item as a DataLoader worker does, interleaved in chunks of
50 images so that other load on the machine affects them alike. Time to first batch: a new dataset and loader
(no workers), until the first batch of 32 (page cache warm). Bytes on disk: the image files, or the chunks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.common import WORK, Result, sample_as_val_folders, sample_dir

SIZE = 224
MAX_SIDE = 320
BATCH = 32


def _datasets(folders: Path, optimized: dict[str, Path]) -> dict:
    from imagenet_cls.data.datasets import ImageFileDataset
    from imagenet_cls.data.layout import read_layout
    from imagenet_cls.data.streaming import StreamingImageDataset
    from imagenet_cls.data.transforms import create_train_transform

    transform = create_train_transform({"input_size": (3, SIZE, SIZE), "interpolation": "bilinear"})
    samples = read_layout(folders).samples("val")
    datasets = {"folders": ImageFileDataset(samples, transform)}
    for name, root in optimized.items():
        datasets[name] = StreamingImageDataset(str(root / "val"), len(samples), transform)
    return datasets


def _rates(datasets: dict, chunk: int = 50) -> dict[str, float]:
    size = len(next(iter(datasets.values())))
    seconds = dict.fromkeys(datasets, 0.0)
    for dataset in datasets.values():  # warm-up: imports, readers, first allocations
        dataset[(0, 0)]
    for start in range(0, size, chunk):
        for name, dataset in datasets.items():
            began = time.perf_counter()
            for index in range(start, min(size, start + chunk)):
                dataset[(index, index)]  # (index, sample seed), as ResumableSampler hands them
            seconds[name] += time.perf_counter() - began
    return {name: size / spent for name, spent in seconds.items()}


def _first_batch_seconds(folders: Path, optimized: dict[str, Path]) -> dict[str, float]:
    import litdata  # noqa: F401  (imports are not the first batch's cost)
    from torch.utils.data import DataLoader

    from imagenet_cls.data.batches import collate_labeled

    began = time.perf_counter()
    datasets = _datasets(folders, optimized)  # includes scanning the folders
    setup = time.perf_counter() - began
    seconds = {}
    for name, dataset in datasets.items():
        began = time.perf_counter()
        next(iter(DataLoader(dataset, batch_size=BATCH, shuffle=False, collate_fn=collate_labeled)))
        seconds[name] = time.perf_counter() - began + (setup if name == "folders" else 0.0)
    return seconds


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix.lower() != ".csv")


def run() -> list[Result]:
    import torch

    from imagenet_cls.prepare.litdata_writer import write_litdata

    if sample_dir() is None:
        print("skipping bench.streaming: ../shared/data/imagenet-sample is absent", file=sys.stderr)
        return []
    torch.set_num_threads(1)
    work = WORK / "streaming"
    folders = sample_as_val_folders(work / "folders")
    optimized = {
        "optimized": work / "optimized",
        f"max-side {MAX_SIDE}": work / f"optimized_{MAX_SIDE}",
    }
    began = time.perf_counter()
    write_litdata(folders, optimized["optimized"], split=(0.0, 1.0, 0.0), num_workers=2, progress=False)
    optimize_s = time.perf_counter() - began
    began = time.perf_counter()
    write_litdata(folders, optimized[f"max-side {MAX_SIDE}"], split=(0.0, 1.0, 0.0), max_side=MAX_SIDE,
                  quality=90, num_workers=2, progress=False)  # fmt: skip
    reencode_s = time.perf_counter() - began
    first = _first_batch_seconds(folders, optimized)
    rates = _rates(_datasets(folders, optimized))
    sizes = {"folders": _bytes(folders / "val"), **{name: _bytes(root) for name, root in optimized.items()}}
    count = len(list((folders / "val").rglob("*.JPEG")))
    note = f"{count} sample images, 1 thread, train transform {SIZE}px"
    big = f"max-side {MAX_SIDE}"
    return [
        Result("train pipeline: optimized vs class folders", rates["optimized"], rates["folders"], "img/s",
               note=note),
        Result(f"train pipeline: --max-side {MAX_SIDE} vs class folders", rates[big], rates["folders"], "img/s",
               note="target >= 1.5"),
        Result("time to first batch: optimized vs folders", first["optimized"], first["folders"], "s",
               higher_is_better=False, note=f"batch {BATCH}, no workers, imports done, warm cache; folders incl. scan"),
        Result(f"time to first batch: --max-side {MAX_SIDE} vs folders", first[big], first["folders"], "s",
               higher_is_better=False),
        Result("bytes on disk: optimized vs folders", sizes["optimized"] / 1e6, sizes["folders"] / 1e6, "MB",
               higher_is_better=False, note=f"optimize took {optimize_s:.0f} s (2 workers; 0 if kept from before)"),
        Result(f"bytes on disk: --max-side {MAX_SIDE} vs folders", sizes[big] / 1e6, sizes["folders"] / 1e6, "MB",
               higher_is_better=False, note=f"re-encode took {reencode_s:.0f} s (2 workers; 0 if kept)"),
    ]  # fmt: skip
