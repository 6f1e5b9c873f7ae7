"""The 1000 real ImageNet sample images as a Hugging Face parquet snapshot (``datasets``) and as WebDataset shards
(``webdataset``): the offline Lite0 validates on each, with no class map, as on class folders (0.883), from disk and
from an ``s3://`` prefix (moto's S3 server on 127.0.0.1); a dataset optimized in one step from the flat sample folder
validates at 0.883 too.

Skipped when ../shared/data/imagenet-sample is absent. The checks from disk run in ``make test`` (about 2 minutes on
2 cores), those from a bucket in ``make test-slow``. ``pytest -s`` prints the wall time of each validate from disk and
from the bucket.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from bench.common import REPO, sample_dir
from tests.conftest import upload
from tests.record_sources import write_parquet_snapshot, write_wds_shards

SAMPLE = sample_dir()
pytestmark = [pytest.mark.skipif(SAMPLE is None, reason="../shared/data/imagenet-sample is absent")]
FOLDERS_TOP1 = 0.883  # tests/test_imagenet_sample.py: the same images as class folders
SOURCES = ["parquet", "webdataset"]
SHARD_IMAGES = 300  # WebDataset images a shard: 1000 images in validation-000000.tar .. validation-000003.tar


class Validated(NamedTuple):
    """One ``validate``'s val_acc, val_images and wall time (CLI set-up included)."""

    top1: float
    images: float
    seconds: float


def sample_split() -> tuple[list[tuple[str, int]], list[str]]:
    """The sample's ``(file, ImageNet label)`` and ImageNet-1k's ClassLabel names ("tench, Tinca tinca", ...)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = list(info.label_names())
    files = sorted(SAMPLE.glob("*.JPEG"))
    names: list[str] = []
    for wnid in wnids:  # a ClassLabel's names are unique: timm's second "crane" gets its wnid
        name = info.label_name_to_description(wnid)
        names.append(f"{name} ({wnid})" if name in names else name)
    return [(str(f), wnids.index(f.name.split("_")[0])) for f in files], names


def write_sample(source: str, folder: Path) -> Path:
    """The sample as a ``val`` split under ``folder``: a parquet snapshot of 4 files, or WebDataset shards."""
    samples, names = sample_split()
    if source == "parquet":
        return write_parquet_snapshot({"val": samples}, names, folder / "snapshot", files=4)
    return write_wds_shards({"val": samples}, folder / "shards", per_shard=SHARD_IMAGES)


def validate_lite0(data_dir: Path | str, sample_timeout: float = 120.0) -> tuple[float, float]:
    """``python cli.py validate --config config/efficientnet_lite0.yaml --data.data_dir DATA``: val_acc, val_images.

    ``sample_timeout`` bounds a stuck read: the run ends with an error after it times the batch size (plus one).
    """
    from imagenet_cls.cli import ImageNetCLI

    cli = ImageNetCLI(args=["validate", "--config", str(REPO / "config" / "efficientnet_lite0.yaml"),
                            "--data.data_dir", str(data_dir), "--data.num_workers", "2",
                            "--data.sample_timeout", str(sample_timeout),
                            "--trainer.enable_progress_bar", "false"])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    return float(metrics["val_acc"]), float(metrics["val_images"])


def timed_validate(data_dir: Path | str, sample_timeout: float = 120.0) -> Validated:
    start = time.perf_counter()
    top1, images = validate_lite0(data_dir, sample_timeout)
    return Validated(top1, images, time.perf_counter() - start)


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory) -> dict[str, Path]:
    """The sample written once per module as each source (``{source: local folder}``)."""
    folder = tmp_path_factory.mktemp("records")
    return {source: write_sample(source, folder) for source in SOURCES}


@pytest.fixture(scope="module")
def validated_on_disk(sample_records) -> Callable[[str], Validated]:
    """``validate`` on a source's local copy, run once per module (the bucket test compares with it)."""
    runs: dict[str, Validated] = {}

    def validated(source: str) -> Validated:
        if source not in runs:
            runs[source] = timed_validate(sample_records[source])
        return runs[source]

    return validated


@pytest.mark.parametrize("source", SOURCES)
def test_lite0_validates_from_parquet_and_shards_as_from_folders(sample_records, validated_on_disk, source):
    assert not list(sample_records[source].rglob("folder_num_class_map.txt"))  # classes from the names / labels
    top1, images, _ = validated_on_disk(source)
    assert images == 1000
    assert top1 == pytest.approx(FOLDERS_TOP1, abs=1e-6), top1


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_lite0_validates_from_a_bucket_as_from_disk(sample_records, validated_on_disk, s3, source):
    """The same files uploaded as they are; the shards named by a brace pattern over the bucket."""
    local = sample_records[source]
    url = upload(s3, local, local.name)  # s3://imagenet/snapshot, s3://imagenet/shards
    if source == "webdataset":
        shards = [f"validation-{i:06d}.tar" for i in range(4)]
        assert sorted(p.name for p in local.glob("*.tar")) == shards
        url = f"{url}/validation-{{000000..000003}}.tar"
    on_disk = validated_on_disk(source)
    in_bucket = timed_validate(url, sample_timeout=10)  # a read from 127.0.0.1 takes ms: a stuck one ends in 11 min
    print(
        f"\n{source}: validate from disk {on_disk.seconds:.1f} s, from {url} {in_bucket.seconds:.1f} s "
        f"(val_acc {in_bucket.top1:.4f} vs {on_disk.top1:.4f}, {in_bucket.images:.0f} images)"
    )
    assert in_bucket.images == 1000
    assert in_bucket.top1 == on_disk.top1
    assert in_bucket.top1 == pytest.approx(FOLDERS_TOP1, abs=1e-6), in_bucket.top1


def test_lite0_validates_an_optimized_dataset_written_in_one_step_from_the_flat_sample(tmp_path):
    from imagenet_cls.prepare.sources import main as prepare_main

    dest = tmp_path / "optimized"
    argv = [str(SAMPLE), str(dest), "--format", "litdata", "--split", "val", "--no-progress"]
    assert prepare_main(argv) == 0  # the flat <wnid>_*.JPEG folder read once, no class folders in between
    assert not (tmp_path / "val").exists() and sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["val"]
    top1, images = validate_lite0(dest)
    assert images == 1000
    assert top1 == pytest.approx(FOLDERS_TOP1, abs=1e-6), top1
