"""DDP on CPU (gloo): fit trains and validates with one checkpoint folder and one log; evaluation over 2 and 3
processes counts every image exactly once, so its metrics and report equal one process's."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

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
    summary = json.loads((report / "summary.json").read_text())
    summary["gallery"] = (report / "misclassified.jpg").read_bytes()  # the mistakes, each found by its index
    return metrics, summary, (report / "per_class.csv").read_text()


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
        assert ddp_summary["gallery"] == summary["gallery"]  # the same images: each process's indices mapped right


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _ddp_fit(data: Path, root: Path, started: Path, *extra: str) -> subprocess.Popen:
    """A 2-process fit whose batches take 1 s (tests.faults.SlowBatches), in its own process group."""
    config = root.parent / "slow.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "    init_args: {monitor: val_acc, mode: max, save_last: true}\n"
        "  - class_path: imagenet_cls.callbacks.signals.GracefulShutdown\n"
        f"  - class_path: tests.faults.SlowBatches\n    init_args: {{seconds: 1, started_file: {started}}}\n"
    )
    args = ["fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
            "--trainer.logger", "false", "--trainer.strategy", "ddp", "--trainer.devices", "2", "--config",
            str(config), "--data.batch_size", "2", "--trainer.max_epochs", "2", "--test_after_fit", "false",
            *extra]  # fmt: skip
    # Its own process group (session), so the test can signal the whole group as SLURM does.
    return subprocess.Popen(
        [sys.executable, CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_started(process: subprocess.Popen, started: Path) -> int:
    """Wait for the first training batch; return the pid of the second process (rank 1)."""
    deadline = time.monotonic() + 180
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), process.communicate()[1][-3000:]
    (rank1,) = [pid for pid in _children(process.pid) if b"LOCAL_RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
    return rank1


def _finish(process: subprocess.Popen, rank1: int) -> str:
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 143, stderr[-3000:]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{rank1}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{rank1}").exists() or "Z" in Path(f"/proc/{rank1}/stat").read_text().split()[2]
    return stderr


def _resume_continues(data: Path, root: Path) -> None:
    saved = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < saved["global_step"] < 8  # 24 training images, 2 processes of batch 2: 6 steps an epoch, 2 epochs
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["last.ckpt"]  # interrupted in the first epoch
    _run("fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
         "--trainer.logger", "false", "--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "2",
         "--trainer.max_epochs", "2", "--test_after_fit", "false", "--ckpt_path", "last")  # fmt: skip
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12


def test_sigterm_to_one_process_stops_both_at_the_same_step(class_folders, tmp_path):
    root, started = tmp_path / "runs", tmp_path / "started"
    process = _ddp_fit(class_folders, root, started)
    rank1 = _wait_started(process, started)
    os.kill(rank1, signal.SIGTERM)  # only the second process: the first learns it through the agreement
    stderr = _finish(process, rank1)
    assert "SIGTERM received by another process: saving a checkpoint" in stderr
    _resume_continues(class_folders, root)


@pytest.mark.slow  # 27 s: make test keeps SIGTERM to one rank (above) and to a 1-process group (test_faults.py)
def test_sigterm_to_the_process_group_at_different_moments_saves_once(class_folders, tmp_path):
    root, started = tmp_path / "runs", tmp_path / "started"
    process = _ddp_fit(class_folders, root, started, "--data.num_workers", "1")  # workers in the group too
    rank1 = _wait_started(process, started)
    os.kill(rank1, signal.SIGTERM)
    time.sleep(1.2)  # a batch later
    os.killpg(process.pid, signal.SIGTERM)  # everyone, DataLoader workers included, as SLURM and `timeout` do
    stderr = _finish(process, rank1)
    assert "checkpoint saved" in stderr and "worker" not in stderr
    _resume_continues(class_folders, root)
