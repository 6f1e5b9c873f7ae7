"""The 1000 real ImageNet sample images as a Hugging Face parquet snapshot (``datasets``) and as WebDataset shards
(``webdataset``): the offline Lite0 validates on each, with no class map, as on class folders (0.883).

Slow (minutes on 2 cores); skipped when ../shared/data/imagenet-sample is absent.
"""

from pathlib import Path

import pytest

from bench.common import REPO, sample_dir
from tests.record_sources import write_parquet_snapshot, write_wds_shards

SAMPLE = sample_dir()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SAMPLE is None, reason="../shared/data/imagenet-sample is absent")]
FOLDERS_TOP1 = 0.883  # tests/test_imagenet_sample.py: the same images as class folders


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


def validate_lite0(data_dir: Path) -> tuple[float, float]:
    from imagenet_cls.cli import ImageNetCLI

    cli = ImageNetCLI(args=["validate", "--config", str(REPO / "config" / "efficientnet_lite0.yaml"),
                            "--data.data_dir", str(data_dir), "--data.num_workers", "2",
                            "--trainer.enable_progress_bar", "false"])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    return float(metrics["val_acc"]), float(metrics["val_images"])


@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_lite0_validates_from_parquet_and_shards_as_from_folders(tmp_path, source):
    samples, names = sample_split()
    if source == "parquet":
        data = write_parquet_snapshot({"val": samples}, names, tmp_path / "snapshot", files=4)
    else:
        data = write_wds_shards({"val": samples}, tmp_path / "shards", per_shard=300)
    assert not list(data.rglob("folder_num_class_map.txt"))  # no class map: classes from the names / labels
    top1, images = validate_lite0(data)
    assert images == 1000
    assert top1 == pytest.approx(FOLDERS_TOP1, abs=1e-6), top1


def test_lite0_validates_an_optimized_dataset_written_in_one_step_from_the_flat_sample(tmp_path):
    from imagenet_cls.prepare.sources import main as prepare_main

    dest = tmp_path / "optimized"
    argv = [str(SAMPLE), str(dest), "--format", "litdata", "--split", "val", "--no-progress"]
    assert prepare_main(argv) == 0  # the flat <wnid>_*.JPEG folder read once, no class folders in between
    assert not (tmp_path / "val").exists() and sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["val"]
    top1, images = validate_lite0(dest)
    assert images == 1000
    assert top1 == pytest.approx(FOLDERS_TOP1, abs=1e-6), top1
