"""DDP on CPU (gloo): fit trains and validates with one checkpoint folder and one log; evaluation over 2 and 3
processes counts every image exactly once, so its metrics and report equal one process's."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY_MODEL, make_class_folders

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
SEVEN = {f"n0000000{i}": ((37 * i) % 255, (91 * i) % 255, (53 * i) % 255) for i in range(1, 8)}  # top-5 of 7 classes
COMMON = ["--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"]  # fmt: skip


def _run(*args):
    result = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metric(output: str, name: str) -> float:
    return float(re.search(rf"{name}\s+│\s+([0-9.e-]+)", output).group(1))


def test_ddp_fit_writes_one_run_and_counts_each_image_once(split_folders, tmp_path):
    root = tmp_path / "runs"
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root)]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    (split_folders / "val" / "n00000001" / "img_003.jpg").unlink()  # 11 images: odd, so padding would show
    fit = _run("fit", *TINY_MODEL, *COMMON, *logger, *ddp, "--data.data_dir", str(split_folders),
               "--data.batch_size", "4", "--trainer.max_epochs", "2", "--model.lr", "0.05")  # fmt: skip
    (run,) = [log.parent for log in root.rglob("metrics.csv")]  # one run: one log, config, checkpoint folder
    assert (run / "metrics.csv").is_file() and len(list(run.glob("config*.yaml"))) == 1
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["val_images"].dropna().eq(11).all()  # each image once over both ranks
    test_report = json.loads((run / "report" / "test" / "summary.json").read_text())
    assert test_report["images"] == 12 and abs(test_report["top1"] - _metric(fit.stdout, "test_acc")) < 1e-6


@pytest.fixture
def thirteen(tmp_path) -> tuple[Path, Path]:
    """A data folder with 13 validation images over 7 classes, and a checkpoint trained a little on it."""
    data = tmp_path / "thirteen"
    make_class_folders(data / "train", per_class=3, classes=SEVEN)
    make_class_folders(data / "val", per_class=2, classes=SEVEN)
    (data / "val" / "n00000007" / "img_001.jpg").unlink()
    root = tmp_path / "fit"
    _run("fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
         "--trainer.logger", "false", "--trainer.max_epochs", "2", "--data.batch_size", "4", "--model.lr", "0.05",
         "--test_after_fit", "false", "--seed_everything", "1")  # fmt: skip
    return data, root / "checkpoints" / "last.ckpt"


def _validate(data: Path, checkpoint: Path, root: Path, devices: int) -> tuple[dict, dict, str]:
    strategy = ["--trainer.strategy", "ddp"] if devices > 1 else []
    result = _run("validate", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--ckpt_path", str(checkpoint),
                  "--trainer.logger", "false", "--trainer.default_root_dir", str(root), "--data.batch_size", "2",
                  "--trainer.devices", str(devices), *strategy)  # fmt: skip
    metrics = {name: _metric(result.stdout, name) for name in ("val_acc", "val_acc5", "val_loss", "val_images")}
    (report,) = root.rglob("report/val")
    return metrics, json.loads((report / "summary.json").read_text()), (report / "per_class.csv").read_text()


def test_evaluation_over_2_and_3_processes_equals_one_process(thirteen, tmp_path):
    data, checkpoint = thirteen
    metrics, summary, per_class = _validate(data, checkpoint, tmp_path / "one", 1)
    assert metrics["val_images"] == summary["images"] == 13
    assert 0 < metrics["val_acc"] < metrics["val_acc5"] <= 1  # top-1 and top-5 differ: both are checked
    for devices in (2, 3):  # 13 images: 7 + 6 and 5 + 4 + 4 per process; padding would count 14 and 15
        ddp_metrics, ddp_summary, ddp_per_class = _validate(data, checkpoint, tmp_path / f"ddp{devices}", devices)
        assert ddp_metrics["val_images"] == 13 and ddp_summary["images"] == 13
        assert abs(ddp_metrics["val_loss"] - metrics["val_loss"]) < 1e-5
        assert ddp_metrics["val_acc"] == metrics["val_acc"] and ddp_metrics["val_acc5"] == metrics["val_acc5"]
        assert (ddp_summary["top1"], ddp_summary["top5"]) == (summary["top1"], summary["top5"])
        assert ddp_per_class == per_class
