"""The 1000 real ImageNet sample images written as a parquet snapshot (``datasets``) and as WebDataset shards
(``webdataset``), optimized in one step (``prepare --format litdata``): the offline Lite0 validates at 0.883, as on
class folders.

Slow (minutes on 2 cores); skipped when ../shared/data/imagenet-sample is absent.
"""

import pytest

from tests.test_imagenet_sample_records import FOLDERS_TOP1, SAMPLE, SOURCES, validate_lite0, write_sample

pytestmark = [pytest.mark.slow, pytest.mark.skipif(SAMPLE is None, reason="../shared/data/imagenet-sample is absent")]


@pytest.mark.parametrize("source", SOURCES)
def test_lite0_validates_a_dataset_optimized_in_one_step_from_parquet_and_shards(tmp_path, source):
    from imagenet_cls.prepare.sources import main as prepare_main

    data = write_sample(source, tmp_path)
    dest = tmp_path / "optimized"
    assert prepare_main([str(data), str(dest), "--format", "litdata", "--no-progress"]) == 0
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["val"]  # chunks only, no class folders
    top1, images = validate_lite0(dest)
    assert images == 1000
    assert top1 == pytest.approx(FOLDERS_TOP1, abs=1e-6), top1
