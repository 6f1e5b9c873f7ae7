"""``make scale``'s record sources: a parquet snapshot and WebDataset shards of ImageNet's train size, read in place.

At each fraction the harness writes (once: cached under ``<work>/imagenet-cls-scale-records/<rows>/``, reused by a
later run at the same size) ``rows`` tiny images, one small JPEG's bytes repeated:

* a parquet snapshot as the hub lays it out (``data/train-0000i-of-0000N.parquet``, ``image`` {bytes, path} and
  ``label``), written by pyarrow directly: 1,000-row row groups, 10 of them a file (ILSVRC/imagenet-1k's files hold
  a few thousand rows);
* WebDataset shards as timm/imagenet-1k-wds lays them out (``train-000000.tar`` ..., ``<key>.jpg`` + ``<key>.cls``,
  1,250 samples = 2,500 members a shard), written by ``tarfile``.

Then, in a fresh interpreter per source: the index set-up (``open_layout``; its imports, timm's class names with
torch, before the clock), the process's RSS after it and what the imports alone took, the time to draw one epoch's
training order, and the cost of reading images in that order (``READS`` of them: the grouped shuffle of
``--data.shuffle_window 1024``; the per-image cost at 100% should stay within 1.5x of the cost at 1%). A full
random permutation (``--data.shuffle_window 0``) read a whole row group per image: 72x at 100% on 2026-12-04.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import PEAK_RSS_MB, run_python

ROWS_PER_GROUP, GROUPS_PER_FILE = 1000, 10
SAMPLES_PER_SHARD = 1250
SETUP_TARGET_S, RSS_TARGET_MB = 60.0, 1024.0
READS = 200_000  # images read after set-up in the training sampler's order, the same count at every fraction
SHUFFLE_WINDOW = 1024  # the data module's default --data.shuffle_window

SETUP = (
    PEAK_RSS_MB
    + """
import json, random, time
from pathlib import Path
def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
from imagenet_cls.data.backends import open_layout
import imagenet_cls.data.parquet, imagenet_cls.data.wds, imagenet_cls.data.records
import pyarrow.parquet, numpy
import timm.data  # ImageNet's class names for 1000 unnamed labels (torch with it): imported before the clock
imported = rss_mb()
began, cpu = time.perf_counter(), time.process_time()
layout = open_layout(Path({root!r}), (0.8, 0.1, 0.1), 0)
seconds, cpu_s = time.perf_counter() - began, time.process_time() - cpu
records = layout.records["train"]
assert len(records) == {rows}, len(records)
after = rss_mb()
from imagenet_cls.data.sampling import ResumableSampler
sampler = ResumableSampler(len(records), 0, groups=records.groups(), window={window})
began = time.perf_counter()
order = [index for index, _ in sampler]  # epoch 0's order: the grouped shuffle training reads in
order_s = time.perf_counter() - began
epoch = 0
while len(order) < {reads}:  # a small fraction: the next epochs' orders
    epoch += 1
    sampler.set_epoch(epoch)
    order += [index for index, _ in sampler]
order = order[: {reads}]
began, cpu = time.perf_counter(), time.process_time()
for index in order:
    assert records.image_bytes(index)
reads_s, reads_cpu_s = time.perf_counter() - began, time.process_time() - cpu
print(json.dumps({{"seconds": seconds, "cpu_s": cpu_s, "rss_mb": after, "imported_rss_mb": imported,
                  "peak_rss_mb": peak_rss_mb(), "reads": len(order), "reads_s": reads_s,
                  "reads_cpu_s": reads_cpu_s, "order_s": order_s}}))
"""
)


def tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 20, 200)).save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


def write_parquet(dest: Path, rows: int) -> None:
    """``dest/data/train-*.parquet``: ``rows`` rows in 1,000-row groups, labels ``i % 1000`` (ImageNet's 1,000)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jpeg, per_file = tiny_jpeg(), ROWS_PER_GROUP * GROUPS_PER_FILE
    files = -(-rows // per_file)
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())]
    )  # fmt: skip
    (dest / "data").mkdir(parents=True, exist_ok=True)
    for number in range(files):
        first, last = number * per_file, min(rows, (number + 1) * per_file)
        with pq.ParquetWriter(dest / "data" / f"train-{number:05d}-of-{files:05d}.parquet", schema) as writer:
            for start in range(first, last, ROWS_PER_GROUP):
                count = min(ROWS_PER_GROUP, last - start)
                labels = [(start + i) % 1000 for i in range(count)]
                images = pa.StructArray.from_arrays(
                    [pa.array([jpeg] * count, pa.binary()), pa.array([f"{start + i}.JPEG" for i in range(count)])],
                    names=["bytes", "path"],
                )
                writer.write_table(pa.table({"image": images, "label": labels}, schema=schema))


def write_shards(dest: Path, rows: int) -> None:
    """``dest/train-NNNNNN.tar``: ``rows`` samples (``<key>.jpg`` + ``<key>.cls``), 1,250 a shard."""
    jpeg = tiny_jpeg()
    dest.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, rows, SAMPLES_PER_SHARD)):
        with tarfile.open(dest / f"train-{number:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(start, min(rows, start + SAMPLES_PER_SHARD)):
                for extension, data in (("jpg", jpeg), ("cls", str(index % 1000).encode())):
                    info = tarfile.TarInfo(f"{index:08d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def generated(cache: Path, rows: int) -> tuple[dict[str, Path], dict[str, float], dict[str, bool]]:
    """The two sources of ``rows`` rows under ``cache``, the seconds each took to write, and which were reused."""
    roots = {"parquet": cache / str(rows) / "parquet", "webdataset": cache / str(rows) / "shards"}
    seconds: dict[str, float] = {}
    reused = dict.fromkeys(roots, False)
    for kind, write in (("parquet", write_parquet), ("webdataset", write_shards)):
        done = roots[kind] / ".complete"
        if done.is_file():  # written by an earlier run: its seconds then
            seconds[kind] = float(done.read_text().split()[0])
            reused[kind] = True
            continue
        began = time.perf_counter()
        write(roots[kind], rows)
        seconds[kind] = time.perf_counter() - began
        done.write_text(f"{seconds[kind]:.1f} s\n")
    return roots, seconds, reused


def run_steps(cache: Path, rows: int, record: Callable[[str, dict], None]) -> None:
    """The steps of one fraction, each handed to ``record(name, step)`` as it ends: the sources' writing (harness),
    then each source's set-up and random reads."""
    roots, written, reused = generated(cache, rows)
    for kind, root in roots.items():
        record(f"write {kind} (harness, cached)", {"seconds": written[kind], "files": rows, "reused": reused[kind]})
        script = SETUP.format(root=str(root), rows=rows, reads=READS, window=SHUFFLE_WINDOW)
        child = json.loads(run_python(script).strip().splitlines()[-1])
        record(f"{kind}: index set-up", {"files": rows, **child})
        reads = {"seconds": child["reads_s"], "cpu_s": child["reads_cpu_s"], "files": child["reads"]}
        record(f"{kind}: {READS} reads in training order", reads)
        record(f"{kind}: one epoch's order", {"seconds": child["order_s"], "files": rows})


def verdicts(steps: dict[str, dict]) -> dict[str, dict]:
    """Each source's set-up against its targets (< 60 s, RSS < 1 GB after set-up)."""
    found = {}
    for kind in ("parquet", "webdataset"):
        step = steps.get(f"{kind}: index set-up")
        if step:
            found[f"{kind} set-up"] = {
                **{key: step[key] for key in ("files", "seconds", "rss_mb", "imported_rss_mb", "peak_rss_mb")},
                "met": step["seconds"] < SETUP_TARGET_S and step["rss_mb"] < RSS_TARGET_MB,
            }
    return found
