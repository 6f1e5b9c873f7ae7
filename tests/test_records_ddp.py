"""Parquet and WebDataset sources under DDP (gloo, CPU) and across a kill -9: each image once per evaluation over 2
and 3 processes (13 images: uneven), and a run killed mid-epoch resumes bitwise equal to an uninterrupted one."""

from pathlib import Path

import pytest
import torch

from imagenet_cls.data.layout import read_layout
from tests.conftest import differing_tensors, make_class_folders
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


@pytest.mark.slow  # two DDP fits and a resume per source: minutes on 2 cores (make test stays under 15 minutes)
@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(class_folders, tmp_path, source):
    data = _as(source, class_folders, tmp_path / source, ["red", "green", "blue"])
    reference = _fit(data, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_root = tmp_path / "killed"
    # 24 training rows, batch 4: 6 steps per epoch; killed at step 9 (mid epoch 1), last saved at step 8.
    killed = _fit(data, killed_root, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9")
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _fit(data, killed_root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)
    final = torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 18
    different = differing_tensors(expected["state_dict"], final["state_dict"])
    assert not different, different
