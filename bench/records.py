"""Issue 21: the training pipeline per core from a Hugging Face parquet snapshot and from WebDataset shards, against
class folders (the baseline, measured in the same run), and the index set-up of each at scale.

Pipeline: the sample images (``BENCH_RECORDS_IMAGES`` of them, default all 1000) as ``val/<wnid>/`` folders, as a
parquet snapshot written by ``datasets`` (4 files, 100 rows a row group) and as tar shards written by
``webdataset`` (4 shards). Each reads, decodes and applies our training transform (224 px random-resized crop,
flip) in one thread, in the training sampler's random order, interleaved in chunks of 50 images
(:func:`bench.streaming._rates`). Set-up: ``BENCH_RECORDS_ROWS`` rows (default 1.28M, ImageNet's train split) of
tiny images, in a fresh interpreter: seconds to index, and the process's peak RSS.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench.common import PEAK_RSS_MB, WORK, Result, run_python, sample_as_val_folders, sample_dir

ROWS = int(os.environ.get("BENCH_RECORDS_ROWS", 1_281_167))
IMAGES = int(os.environ.get("BENCH_RECORDS_IMAGES", 1000))

SETUP = (
    PEAK_RSS_MB
    + """
import json, sys, time
from pathlib import Path
import timm.data  # ImageNet's class names, for 1000 unnamed labels: imported before the clock starts
from imagenet_cls.data.backends import open_layout
import imagenet_cls.data.parquet, imagenet_cls.data.wds, imagenet_cls.data.records, imagenet_cls.data.streaming
import pyarrow.parquet
before = peak_rss_mb()
began = time.perf_counter()
layout = open_layout(Path(sys.argv[1]), (0.8, 0.1, 0.1), 0)
seconds = time.perf_counter() - began
records = layout.records["train"]
assert len(records) == int(sys.argv[2]), len(records)
records.image_bytes(len(records) - 1)
print(json.dumps({"seconds": seconds, "rss_mb": peak_rss_mb(), "before_mb": before}))
"""
)


def _write_scale(folder: Path, rows: int) -> dict[str, Path]:
    """``rows`` tiny JPEGs (one 1 KB image repeated) as one parquet file and as 8 tar shards."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 20, 200)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    snapshot = folder / "parquet" / "data"
    snapshot.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(snapshot / "train-00000-of-00001.parquet", pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())]
    )) as writer:  # fmt: skip
        for start in range(0, rows, 100):
            count = min(100, rows - start)
            images = [{"bytes": jpeg, "path": f"n0/{start + i}.JPEG"} for i in range(count)]
            writer.write_table(pa.table({"image": images, "label": [(start + i) % 1000 for i in range(count)]},
                                        schema=writer.schema))  # fmt: skip
    shards = folder / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // 8)
    for shard in range(8):
        with tarfile.open(shards / f"train-{shard:04d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(shard * per_shard, min(rows, (shard + 1) * per_shard)):
                for extension, data in (("jpg", jpeg), ("cls", str(index % 1000).encode())):
                    info = tarfile.TarInfo(f"{index:08d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return {"parquet": folder / "parquet", "webdataset": shards}


def _setup(path: Path, rows: int) -> dict:
    return json.loads(run_python(SETUP.replace("sys.argv[1]", repr(str(path))).replace("sys.argv[2]", str(rows))))


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
    from imagenet_cls.data.datasets import ImageFileDataset
    from imagenet_cls.data.layout import read_layout
    from imagenet_cls.data.records import RecordDataset
    from imagenet_cls.data.transforms import create_train_transform
    from tests.record_sources import write_parquet_snapshot, write_wds_shards

    results = []
    work = WORK / "records"
    if sample_dir() is None:
        print("skipping bench.records pipeline: ../shared/data/imagenet-sample is absent", file=sys.stderr)
    else:
        torch.set_num_threads(1)
        folders = sample_as_val_folders(work / "folders")
        samples = list(read_layout(folders).samples("val"))[:IMAGES]
        names = sorted({Path(path).parent.name for path, _ in samples})
        snapshot = write_parquet_snapshot({"val": samples}, names, work / "parquet", files=4)
        shards = write_wds_shards({"val": samples}, work / "shards", per_shard=-(-len(samples) // 4))
        transform = create_train_transform({"input_size": (3, SIZE, SIZE), "interpolation": "bilinear"})
        from imagenet_cls.data.backends import open_layout

        datasets = {"folders": ImageFileDataset(samples, transform)}
        for name, root in (("parquet", snapshot), ("webdataset", shards)):
            datasets[name] = RecordDataset(open_layout(root, (0.8, 0.1, 0.1), 0).records["val"], transform)
        rates = _rates(datasets)
        note = f"{len(samples)} sample images, 1 thread, train transform {SIZE}px, random order"
        results += [
            Result("train pipeline: parquet vs class folders", rates["parquet"], rates["folders"], "img/s", note=note),
            Result(
                "train pipeline: WebDataset vs class folders",
                rates["webdataset"],
                rates["folders"],
                "img/s",
                note="goal >= 1.0",
            ),  # fmt: skip
        ]
    scale = _write_scale(work / "scale", ROWS)
    for name, root in scale.items():
        setup = _setup(root, ROWS)
        rss = f"peak RSS {setup['rss_mb']:.0f} MB (goal < 1024; {setup['before_mb']:.0f} MB after imports)"
        note = f"{rss}; baseline: the 60 s goal"
        results.append(Result(f"index set-up at {ROWS:,} rows: {name}", setup["seconds"], 60.0, "s", False, note))
    return results


if __name__ == "__main__":
    from bench.common import format_table

    WORK.mkdir(parents=True, exist_ok=True)
    print(format_table(run()))
