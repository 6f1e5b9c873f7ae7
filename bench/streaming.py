"""Issue 15: the training pipeline per core from a LitData optimized dataset against class folders.

The 1000 sample images are prepared as ``val/<wnid>/`` folders, then optimized twice: original bytes, and
``--max-side 320`` (re-encoded, quality 90). Each variant reads, decodes and applies our training transform
(224 px random-resized crop, flip) in one thread, item by item in the training sampler's random order as a
DataLoader worker does, interleaved in chunks of 50 images so that other load on the machine affects them alike.
Time to first batch: a new dataset and loader (no workers), until the first batch of 32 (page cache warm). Bytes on
disk: the image files, or the chunks. Our reader of a local split against LitData's own ``StreamingDataset``: bytes
read from disk for random images from a cold page cache, and items/s in random order, warm. From S3: moto's server
on 127.0.0.1 with an added delay per request, a batch read ahead against items read in turn.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench.common import WORK, Result, sample_as_val_folders, sample_dir

SIZE = 224
MAX_SIDE = 320
BATCH = 32
RANDOM_READS = 50  # items read from a cold page cache, in random order
LATENCY_MS = 20  # added to each request of the loopback S3 server (a bucket's first-byte latency is ~10-50 ms)


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
    order = list(range(size))
    random.Random(0).shuffle(order)  # the training sampler's order: random over the whole split
    seconds = dict.fromkeys(datasets, 0.0)
    for dataset in datasets.values():  # warm-up: imports, readers, first allocations
        dataset[(0, 0)]
    for start in range(0, size, chunk):
        for name, dataset in datasets.items():
            began = time.perf_counter()
            for index in order[start : start + chunk]:
                dataset[(index, index)]  # (index, sample seed), as ResumableSampler hands them
            seconds[name] += time.perf_counter() - began
    return {name: size / spent for name, spent in seconds.items()}


def _disk_bytes(read, files: list[Path]) -> int | None:
    """Bytes this process read from disk during ``read()``, the ``files`` out of the page cache first (None: not
    countable here, e.g. on a tmpfs)."""
    for file in files:
        descriptor = os.open(file, os.O_RDONLY)
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(descriptor)

    def counted() -> int:
        return int(Path("/proc/self/io").read_text().split("read_bytes: ")[1].split()[0])

    before = counted()
    read()
    return counted() - before


def _random_reads(root: Path, count: int) -> dict[str, dict[str, float]]:
    """Our reader of a local split against LitData's own ``StreamingDataset``: ``count`` random items read from a
    cold page cache (bytes from disk, seconds), then the whole split in random order, warm (items/s)."""
    from litdata import StreamingDataset

    from imagenet_cls.data.streaming import OptimizedSplit

    split = root / "val"
    chunks = sorted(split.glob("chunk-*.bin"))
    size = len(StreamingDataset(str(split)))
    order = list(range(size))
    random.Random(1).shuffle(order)
    result: dict[str, dict[str, float]] = {}
    readers = {"ours": lambda: OptimizedSplit(str(split), size), "litdata": lambda: StreamingDataset(str(split))}
    for name, make in readers.items():
        reader = make()
        began = time.perf_counter()
        disk = _disk_bytes(lambda reader=reader: [reader[i] for i in order[:count]], chunks)
        cold = time.perf_counter() - began
        began = time.perf_counter()
        for index in order:
            reader[index]
        result[name] = {"disk_mb": disk / 1e6 if disk else float("nan"), "cold_s": cold,
                        "warm_per_s": size / (time.perf_counter() - began)}  # fmt: skip
    return result


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


@contextmanager
def _bucket(root: Path, latency_ms: float):
    """``root`` uploaded to moto's S3 server on 127.0.0.1 (own process, ``latency_ms`` per request); yields its URL."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bench.s3_server", str(port), str(latency_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    names = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true"}  # fmt: skip
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        client = boto3.client("s3")
        for _ in range(100):  # the server's start
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), "bench", f"data/{path.relative_to(root).as_posix()}")
        yield "s3://bench/data"
    finally:
        server.kill()
        server.wait()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _bucket_rates(root: Path, size: int) -> dict[str, float]:
    """Train pipeline from a bucket, one process: items in turn (one request after another) vs a batch read ahead."""
    from imagenet_cls.data.streaming import StreamingImageDataset
    from imagenet_cls.data.transforms import create_train_transform

    transform = create_train_transform({"input_size": (3, SIZE, SIZE), "interpolation": "bilinear"})
    with _bucket(root, LATENCY_MS) as url:
        dataset = StreamingImageDataset(f"{url}/val", size, transform, cache_dir=str(WORK / "streaming" / "s3_cache"))
        dataset[(0, 0)]  # opened: index downloaded, client made
        order = list(range(1, size))
        random.Random(0).shuffle(order)  # as the training sampler reads: anywhere in the chunks
        seconds, counts = {"in turn": 0.0, "read ahead": 0.0}, {"in turn": 0, "read ahead": 0}
        for start in range(0, 4 * 2 * 2 * BATCH, 2 * 2 * BATCH):  # 4 rounds, each side 2 batches per round
            for offset, name in ((0, "in turn"), (2 * BATCH, "read ahead")):
                batches = [order[start + offset + i * BATCH : start + offset + (i + 1) * BATCH] for i in range(2)]
                began = time.perf_counter()
                for batch in batches:
                    pairs = [(index, index) for index in batch]
                    _ = [dataset[pair] for pair in pairs] if name == "in turn" else dataset.__getitems__(pairs)
                seconds[name] += time.perf_counter() - began
                counts[name] += sum(len(batch) for batch in batches)
    return {name: counts[name] / spent for name, spent in seconds.items()}


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix.lower() != ".csv")


def run() -> list[Result]:
    import torch

    threads = torch.get_num_threads()
    try:
        return _run()
    finally:
        torch.set_num_threads(threads)  # the results file records the machine's threads after the last module


def _run() -> list[Result]:
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
    bucket = _bucket_rates(optimized[f"max-side {MAX_SIDE}"], count)
    reads = _random_reads(optimized["optimized"], RANDOM_READS)
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
        Result(f"disk read for {RANDOM_READS} random images, cold cache: our reader vs LitData's", reads["ours"][
               "disk_mb"], reads["litdata"]["disk_mb"], "MB", higher_is_better=False,
               note=f"original bytes, 2 chunks of ~55 MB; {reads['ours']['cold_s']:.2f} vs "
                    f"{reads['litdata']['cold_s']:.2f} s (NaN: reads not countable on this file system)"),
        Result("items in random order, warm cache: our reader vs LitData's", reads["ours"]["warm_per_s"],
               reads["litdata"]["warm_per_s"], "items/s", note="read and unpacked, no decode"),
        Result(f"train pipeline from S3 (--max-side {MAX_SIDE}): batch read ahead vs items in turn",
               bucket["read ahead"], bucket["in turn"], "img/s",
               note=f"moto on 127.0.0.1 (own process) + {LATENCY_MS} ms per request; 1 thread decodes; batch {BATCH}"),
    ]  # fmt: skip
