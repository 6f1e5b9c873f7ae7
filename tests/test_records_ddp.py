"""Parquet and WebDataset sources under DDP (gloo, CPU) and across a kill -9: each image once per evaluation over 2
and 3 processes (13 images: uneven), and a run killed mid-epoch resumes bitwise equal to an uninterrupted one."""

from pathlib import Path

import pytest
import torch

from imagenet_cls.data.layout import read_layout
from tests.conftest import assert_same_final_weights, make_class_folders
from tests.record_sources import write_parquet_snapshot, write_wds_shards
from tests.test_ddp import SEVEN, _validate
from tests.test_resume import _fit

pytest.importorskip("datasets")
pytest.importorskip("webdataset")


def _as(source: str, folders: Path, dest: Path, names: list[str]) -> Path:
    splits = read_layout(folders).splits
    if source == "parquet":
        return write_parquet_snapshot(splits, names, dest, files=2)
    return write_wds_shards(splits, dest, per_shard=5)


@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_evaluation_over_2_and_3_processes_counts_each_record_once(tmp_path, source):
    folders = tmp_path / "thirteen"
    make_class_folders(folders / "train", per_class=3, classes=SEVEN)
    make_class_folders(folders / "val", per_class=2, classes=SEVEN)
    (folders / "val" / "n00000007" / "img_001.jpg").unlink()  # 13: 7 + 6 over 2, 5 + 4 + 4 over 3
    data = _as(source, folders, tmp_path / source, sorted(SEVEN))
    from tests.test_ddp import COMMON, TINY_MODEL, _run

    root = tmp_path / "fit"
    _run("fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
         "--trainer.logger", "false", "--trainer.max_epochs", "1", "--data.batch_size", "4",
         "--test_after_fit", "false", "--seed_everything", "1")  # fmt: skip
    checkpoint = root / "checkpoints" / "last.ckpt"
    metrics, summary, per_class = _validate(data, checkpoint, tmp_path / "one", 1)
    assert metrics["val_images"] == summary["images"] == 13
    for devices in (2, 3):
        ddp_metrics, ddp_summary, ddp_per_class = _validate(data, checkpoint, tmp_path / f"ddp{devices}", devices)
        assert ddp_metrics["val_images"] == 13 and ddp_summary["images"] == 13
        assert (
            ddp_metrics["val_acc"] == metrics["val_acc"] and abs(ddp_metrics["val_loss"] - metrics["val_loss"]) < 1e-5
        )
        assert ddp_per_class == per_class


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """Class folders (3 x 10 images, split 0.8/0.1/0.1) and the last checkpoint of an uninterrupted fit on them."""
    root = tmp_path_factory.mktemp("uninterrupted")
    folders = make_class_folders(root / "data")
    reference = _fit(folders, root / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return folders, root / "reference" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path, source):
    """Killed and resumed on the records, the weights equal an uninterrupted run on the folders they hold (records
    read in the folders' order with the same seeds: ``test_records.py`` shows the uninterrupted runs equal)."""
    folders, reference = uninterrupted
    data = _as(source, folders, tmp_path / source, ["red", "green", "blue"])
    killed_root = tmp_path / "killed"
    # 24 training rows, batch 4: 6 steps per epoch; killed at step 9 (mid epoch 1), last saved at step 8.
    killed = _fit(data, killed_root, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    resumed = _fit(data, killed_root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_final_weights(reference, killed_root / "checkpoints" / "last.ckpt", steps=18)
