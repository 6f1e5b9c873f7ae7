"""DDP on CPU (2 processes, gloo): fit trains and validates with one checkpoint folder and one log, and metrics
of the same checkpoint equal single-process ones."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import TINY_MODEL

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def _run(*args):
    result = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metric(output: str, name: str) -> float:
    return float(re.search(rf"{name}\s+│\s+([0-9.e-]+)", output).group(1))


def test_ddp_fit_then_validate_equals_single_process(split_folders, tmp_path):
    common = [
        *TINY_MODEL,
        "--data.data_dir",
        str(split_folders),
        "--data.num_workers",
        "0",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    root = tmp_path / "runs"
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root)]
    fit = _run(
        "fit",
        *common,
        *logger,
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--data.batch_size",
        "4",
        "--trainer.max_epochs",
        "3",
        "--model.lr",
        "0.05",
    )
    (run,) = [log.parent for log in root.rglob("metrics.csv")]  # one run: one log, config, checkpoint folder
    assert (run / "metrics.csv").is_file() and len(list(run.glob("config*.yaml"))) == 1
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["val_images"].dropna().eq(12).all()  # 12 val images, each counted once over both ranks
    test_report = json.loads((run / "report" / "test" / "summary.json").read_text())
    assert test_report["images"] == 12 and abs(test_report["top1"] - _metric(fit.stdout, "test_acc")) < 1e-6

    best = run / "checkpoints" / next(c for c in checkpoints if c != "last.ckpt")
    evaluate = ["validate", "--ckpt_path", str(best), *common, "--trainer.logger", "false", "--data.batch_size", "3"]
    single = _run(*evaluate, "--trainer.devices", "1")
    ddp = _run(*evaluate, "--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert _metric(ddp.stdout, "val_acc") == _metric(single.stdout, "val_acc")
    assert abs(_metric(ddp.stdout, "val_loss") - _metric(single.stdout, "val_loss")) < 1e-5
    assert _metric(ddp.stdout, "val_images") == _metric(single.stdout, "val_images") == 12
