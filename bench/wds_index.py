"""Opening WebDataset shards in a bucket: the second open (tar index kept on disk) vs the first (headers walked).

20 shards x 50 samples (random 110 KB ``.jpg``, about an ImageNet JPEG, and a ``.cls``) on moto's S3 server on
127.0.0.1 (own process, ``LATENCY_MS`` per request). ``python -m bench.wds_index`` prints the numbers.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np

from bench.common import WORK, Result
from bench.streaming import LATENCY_MS, _bucket

SHARDS, PER_SHARD, IMAGE_BYTES = 20, 50, 110_000


def _write_shards(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(SHARDS):
        with tarfile.open(folder / f"train-{shard:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(PER_SHARD):
                for extension, data in (("jpg", rng.bytes(IMAGE_BYTES)), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"s{shard:03d}_{i:04d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def measure(latency_ms: float = LATENCY_MS) -> dict[str, tuple[float, int]]:
    """``{"first"|"second": (seconds, GETs of shards)}`` of two opens with the same cache folder."""
    from imagenet_cls.data.backends import open_layout
    from imagenet_cls.data.object_store import ObjectStore

    work = WORK / "wds_index"
    shutil.rmtree(work, ignore_errors=True)  # the first open finds no index kept
    _write_shards(work / "shards")
    gets = []
    read = ObjectStore.read

    def counted(self, url, start=0, length=None):
        gets.append(url)
        return read(self, url, start, length)

    ObjectStore.read = counted
    try:
        with _bucket(work / "shards", latency_ms) as url:
            found = {}
            for name in ("first", "second"):
                gets.clear()
                began = time.perf_counter()
                layout = open_layout(url, (0.8, 0.1, 0.1), 0, cache_dir=work / "cache")
                seconds = time.perf_counter() - began
                assert len(layout.records["train"]) == SHARDS * PER_SHARD
                found[name] = (seconds, sum(u.endswith(".tar") for u in gets))
            return found
    finally:
        ObjectStore.read = read


def run() -> list[Result]:
    found = measure()
    note = f"{SHARDS} shards x {PER_SHARD} samples; moto on 127.0.0.1 (own process) + {LATENCY_MS} ms per request"
    return [
        Result("WebDataset open from S3: index kept on disk vs walked", found["second"][0], found["first"][0], "s",
               higher_is_better=False, note=note),
        Result("WebDataset open from S3: GETs of shards, kept vs walked", found["second"][1], found["first"][1],
               "GETs", higher_is_better=False, note="listing requests not counted"),
    ]  # fmt: skip


if __name__ == "__main__":
    for latency in (0, LATENCY_MS):
        for name, (seconds, count) in measure(latency).items():
            print(f"{latency:>3} ms per request, {name} open: {seconds:.2f} s, {count} GETs of shards")
