"""Progress without a terminal: plain lines in a redirected log, and no library noise in fit, validate, predict."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar

from imagenet_cls.callbacks.progress import AutoProgressBar, PlainProgressBar, _batch_size, _Stage
from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
NOISE = re.compile(r"💡|Tip:|[Dd]eprecat|FutureWarning|UserWarning|anonymous|Loading `train_dataloader`|TPU available")
ANSI = "\x1b["


def run_logged(args: list[str], log: Path, cwd: Path) -> tuple[str, str]:
    """``cli.py ARGS`` with stdout in ``log`` (a file, as under SLURM or nohup); returns (stdout, stderr)."""
    # No W&B credentials and no mode variable: the default W&B logger goes offline, as for a new user.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TTY_", "FORCE_COLOR"))}
    env |= {"HOME": str(cwd), "PYTHONPATH": str(REPO)}
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), *args],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            timeout=600,
        )
    stdout = log.read_text()
    assert done.returncode == 0, done.stderr[-3000:]
    return stdout, done.stderr


def test_redirected_fit_validate_predict_print_plain_lines_and_no_noise(split_folders, tmp_path):
    common = ["--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", "runs"]
    fit_out, fit_err = run_logged(
        ["fit", *TINY_MODEL, "--data.data_dir", str(split_folders), "--data.batch_size", "4",
         "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1", *common],
        tmp_path / "fit.log",
        tmp_path,
    )  # fmt: skip
    # 36 training images in 9 batches: a line every 10% (each batch here) with rate, ETA and the step's loss.
    steps = re.findall(r"^epoch (\d)/1 train (\d)/9 \(\d+%\) [\d.]+ img/s, \d:\d\d:\d\d elapsed, ETA \d:\d\d:\d\d, "
                       r"train_loss [\d.e+-]+$", fit_out, re.MULTILINE)  # fmt: skip
    assert [int(b) for e, b in steps if e == "0"] == list(range(1, 9)), fit_out
    for epoch in ("0", "1"):
        val = rf"^epoch {epoch}/1 val done in \d:\d\d:\d\d \([\d.]+ img/s\): val_acc [\d.]+, val_acc5 [\d.]+, "
        assert re.search(val + r"val_images 12, val_loss [\d.]+$", fit_out, re.MULTILINE), fit_out
        summary = re.search(rf"^epoch {epoch}/1 done in \d:\d\d:\d\d \([\d.]+ img/s\): (.*)$", fit_out, re.MULTILINE)
        assert summary and "lr " in summary[1] and "train_loss" in summary[1] and "val_acc" in summary[1], fit_out
    assert not re.search(r"^epoch \d/1 val \d", fit_out, re.MULTILINE)  # short validations in fit: summary only
    assert re.search(r"^test done in .*: test_acc [\d.]+, test_acc5 [\d.]+, test_images 12, ", fit_out, re.MULTILINE)
    assert "W&B: no API key found; logging offline" in fit_err  # our one W&B line ...
    assert not re.search(r"^wandb:", fit_err, re.MULTILINE), fit_err  # ... and none of W&B's own

    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    val_out, val_err = run_logged(
        ["validate", "--ckpt_path", str(ckpt), "--data.data_dir", str(split_folders), *common],
        tmp_path / "validate.log",
        tmp_path,
    )
    assert re.search(r"^validate done in .*: val_acc [\d.]+, val_acc5 [\d.]+, val_images 12, ", val_out, re.MULTILINE)

    images = split_folders / "test"
    pred_out, pred_err = run_logged(
        ["predict", "--ckpt_path", str(ckpt), "--data.mode", "predict", "--data.predict_path", str(images),
         "--data.batch_size", "2", "--writer.output_dir", "preds", *common[:4]],
        tmp_path / "predict.log",
        tmp_path,
    )  # fmt: skip
    assert re.search(r"^predict 1/6 \(17%\) [\d.]+ img/s", pred_out, re.MULTILINE), pred_out
    assert re.search(r"^predict done in \d:\d\d:\d\d \([\d.]+ img/s\)$", pred_out, re.MULTILINE), pred_out

    for text in (fit_out, fit_err, val_out, val_err, pred_out, pred_err):
        assert ANSI not in text  # no Rich live display or colour codes in a file
        assert not NOISE.search(text), NOISE.search(text)
        assert not re.search(r"\.py:\d+: ", text), text  # no warnings.warn location lines at all


@pytest.mark.slow
def test_demo_redirected_is_quiet(tmp_path):
    """``make demo`` (its own entry point, not main) with a one-epoch config, stdout in a file."""
    config = tmp_path / "tiny_demo.yaml"
    demo = (REPO / "config" / "demo.yaml").read_text()
    config.write_text(
        demo.replace("max_epochs: 12", "max_epochs: 1\n  limit_train_batches: 3")
        .replace("log_every_n_steps: 10", "log_every_n_steps: 1")
        .replace("resnet18", "test_resnet")
        .replace("num_workers: 2", "num_workers: 0")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TTY_", "FORCE_COLOR"))}
    env |= {"HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    args = ["run", "--config", str(config), "--data_dir", "digits", "--root_dir", "runs"]
    with open(tmp_path / "demo.log", "w") as out:
        done = subprocess.run([sys.executable, "-m", "imagenet_cls.demo", *args], stdout=out, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path, timeout=900)  # fmt: skip
    stdout = (tmp_path / "demo.log").read_text()
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^epoch 0/0 done in .*val_acc", stdout, re.MULTILINE) and "demo: test_acc=" in stdout
    assert "W&B: no API key found; logging offline" in done.stderr  # the demo's own log lines are shown
    for text in (stdout, done.stderr):
        assert ANSI not in text
        assert not NOISE.search(text), NOISE.search(text)
        assert not re.search(r"\.py:\d+: ", text), text


def test_auto_progress_bar_on_a_real_terminal_is_rich():
    """stdout on a pseudo-terminal, as in an interactive shell."""
    import pty

    code = "from imagenet_cls.callbacks.progress import AutoProgressBar; print(type(AutoProgressBar()).__name__)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TTY_", "FORCE_COLOR"))} | {"TERM": "xterm"}
    leader, follower = pty.openpty()
    with os.fdopen(leader, "rb", buffering=0) as terminal:
        done = subprocess.run([sys.executable, "-c", code], stdout=follower, env=env, cwd=REPO, timeout=120)
        os.close(follower)
        assert done.returncode == 0
        assert terminal.read(4096).decode().strip() == "RichProgressBar"


def test_auto_progress_bar_is_rich_on_a_terminal_and_plain_in_a_file(monkeypatch):
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    assert type(AutoProgressBar()) is RichProgressBar
    monkeypatch.delenv("TTY_INTERACTIVE")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a file: not a terminal
    bar = AutoProgressBar(every_percent=25, every_seconds=60)
    assert type(bar) is PlainProgressBar and (bar.every_percent, bar.every_seconds) == (25, 60)


def test_lines_every_share_or_every_interval(capsys, monkeypatch):
    bar = PlainProgressBar(every_percent=25, every_seconds=0)
    stage = _Stage("test", total=8)
    batch = (torch.zeros(4, 3, 8, 8), torch.zeros(4))
    for _ in range(8):
        bar._advance(stage, batch)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["2/8", "4/8", "6/8"]  # 25%, 50%, 75%; 100% is the done line
    assert all(" img/s, " in line for line in lines) and stage.images == 32

    now = [0.0]
    monkeypatch.setattr("imagenet_cls.callbacks.progress.time.monotonic", lambda: now[0])
    bar = PlainProgressBar(every_percent=0, every_seconds=250)
    stage = _Stage("predict", total=float("inf"))  # a loader without a length: lines by time only, no ETA
    for _ in range(6):
        now[0] += 100.0  # 100 s per batch of 2 images
        bar._advance(stage, {"image": torch.zeros(2, 3, 8, 8), "path": ["a", "b"]})
    assert capsys.readouterr().out.splitlines() == [
        "predict 3 0.02 img/s, 0:05:00 elapsed",
        "predict 6 0.02 img/s, 0:10:00 elapsed",
    ]


def test_batch_size_of_common_batch_shapes():
    assert _batch_size((torch.zeros(5, 3, 2, 2), torch.zeros(5))) == 5
    assert _batch_size({"image": torch.zeros(3, 3, 2, 2), "path": ["a", "b", "c"]}) == 3
    assert _batch_size(torch.zeros(7, 2)) == 7
    assert _batch_size(["not", "tensors"]) == 0


def test_progress_bar_options_are_checked():
    with pytest.raises(ValueError, match="every_percent"):
        PlainProgressBar(every_percent=-1)


def test_enable_after_a_finder_keeps_other_ranks_quiet():
    from types import SimpleNamespace

    bar = PlainProgressBar()
    bar._trainer = SimpleNamespace(is_global_zero=False)
    bar.disable()  # as Lightning's setup does on ranks other than 0
    bar.enable()  # as the learning-rate and batch-size finders do after their search
    assert bar.is_disabled
    bar._trainer = SimpleNamespace(is_global_zero=True)
    bar.enable()
    assert bar.is_enabled
