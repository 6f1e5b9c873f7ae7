"""Injected faults end in the stated outcome: one-line errors with a remedy, bounded time, nothing lost."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imagenet_cls.cli import main
from tests.conftest import FAST_TRAINER, TINY_MODEL, fit_args, untrained_weights

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def _callbacks_yaml(path: Path, *entries: str) -> Path:
    path.write_text(
        "trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "    init_args: {monitor: val_loss, mode: min, save_last: true}\n" + "".join(entries)
    )
    return path


def _slow_batches_yaml(tmp_path: Path, seconds: float, started: Path) -> Path:
    """A fit config whose batches take ``seconds`` (``started`` appears at the first) and that stops on signals."""
    return _callbacks_yaml(
        tmp_path / "slow.yaml",
        f"  - class_path: tests.faults.SlowBatches\n    init_args: {{seconds: {seconds}, started_file: {started}}}\n"
        "  - class_path: imagenet_cls.callbacks.signals.GracefulShutdown\n",
    )


def _wait_for_first_batch(started: Path, process: subprocess.Popen) -> None:
    """Until the run's first batch has begun (``started`` exists), it ended, or 2 minutes passed."""
    deadline = time.monotonic() + 120
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def test_out_of_memory_is_one_line_with_a_remedy_and_keeps_the_last_checkpoint(class_folders, tmp_path, capsys):
    root = tmp_path / "runs"
    config = _callbacks_yaml(
        tmp_path / "oom.yaml", "  - class_path: tests.faults.RaiseOutOfMemory\n    init_args: {at_step: 12}\n"
    )
    code = main(fit_args(class_folders, root, "--config", str(config), "--trainer.max_epochs", "10"))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("error: fit: out of memory (CUDA out of memory.")
    assert "--data.batch_size (now 4)" in error and "bf16-mixed" in error and "is intact" in error
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] > 0  # the checkpoint of the last finished epoch, loadable


def _poisoned(monkeypatch, name: str, action) -> None:
    from imagenet_cls.data.images import ImageFile

    original = ImageFile.decode

    def decode(self, reduction=1):
        if self.path.endswith(name):
            action()
        return original(self, reduction)

    monkeypatch.setattr(ImageFile, "decode", decode)  # DataLoader workers are forked: they inherit it


def test_a_hung_read_stops_with_an_error_naming_the_file(class_folders, tmp_path, monkeypatch, capsys):
    _poisoned(monkeypatch, "n00000002/img_003.jpg", lambda: time.sleep(120))
    started = time.monotonic()
    args = ["validate", *TINY_MODEL, *FAST_TRAINER, "--data.data_dir", str(class_folders),
            "--data.num_workers", "1", "--data.sample_timeout", "2", "--data.split", "[0.0, 1.0, 0.0]",
            *untrained_weights(tmp_path)]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert time.monotonic() - started < 60
    assert error.startswith("error: reading ") and "n00000002/img_003.jpg took over 2 s" in error


def test_a_killed_worker_is_a_one_line_error(class_folders, tmp_path, monkeypatch, capsys):
    _poisoned(monkeypatch, "n00000002/img_003.jpg", lambda: os.kill(os.getpid(), signal.SIGKILL))
    args = ["validate", *TINY_MODEL, *FAST_TRAINER, "--data.data_dir", str(class_folders),
            "--data.num_workers", "1", "--data.split", "[0.0, 1.0, 0.0]", *untrained_weights(tmp_path)]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: validate: a data-loading worker died") and "--data.num_workers (now 1)" in error


def test_a_nonfinite_validation_is_never_the_best_checkpoint(class_folders, tmp_path):
    root = tmp_path / "runs"
    config = _callbacks_yaml(
        tmp_path / "nan.yaml", "  - class_path: tests.faults.NonFiniteValidation\n    init_args: {epoch: 1}\n"
    )
    assert main(fit_args(class_folders, root, "--config", str(config), "--trainer.max_epochs", "3")) == 0
    (best,) = [p for p in (root / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    saved = torch.load(best, weights_only=True)
    callback_state = next(v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert torch.isfinite(torch.as_tensor(callback_state["best_model_score"]))
    assert saved["epoch"] != 1


def test_unreachable_wandb_goes_offline_quickly_and_keeps_the_key_out_of_outputs(class_folders, tmp_path):
    key = "0123456789abcdef0123456789abcdef01234567"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_API_KEY": key, "WANDB_BASE_URL": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    root = tmp_path / "runs"
    args = fit_args(class_folders, root, "--trainer.max_epochs", "1", logger=True)  # the default W&B logger
    assert "--trainer.logger" not in args
    started = time.monotonic()
    result = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 120
    assert "W&B: 127.0.0.1:9 unreachable" in result.stderr and list((root / "wandb").glob("offline-run-*"))
    for output in root.rglob("*"):
        if output.is_file() and output.suffix in (".yaml", ".ckpt", ".json", ".csv"):
            assert key.encode() not in output.read_bytes(), output


def test_second_sigint_exits_at_once(class_folders, tmp_path):
    started = tmp_path / "batch-started"
    config = _slow_batches_yaml(tmp_path, 3, started)
    args = fit_args(class_folders, tmp_path / "runs", "--config", str(config), "--trainer.max_epochs", "5")
    process = subprocess.Popen([sys.executable, CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_first_batch(started, process)
    time.sleep(0.5)  # inside a 3-second batch
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and time.monotonic() - sent < 2.0, stderr[-2000:]
    assert "saving a checkpoint after this batch" in stderr and "checkpoint saved" not in stderr


def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    """A full disk while writing last.ckpt: the previous checkpoint stays whole (Lightning's transactional write)."""
    import fsspec.implementations.local as local
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    path = tmp_path / "last.ckpt"
    io = TorchCheckpointIO()
    io.save_checkpoint({"global_step": 1, "weights": torch.ones(10)}, path)
    written = []

    def write_then_fail(self, data):
        written.append(len(data))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local.LocalFileOpener, "write", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert written  # the write really was attempted
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no half-written file left beside it


def test_nonfinite_weights_are_never_checkpointed(class_folders, tmp_path, capsys):
    """NaN weights after step 7 (the NaN loss after it skipped): the every-2-steps save refuses, naming the tensor."""
    root = tmp_path / "runs"
    config = _callbacks_yaml(
        tmp_path / "poison.yaml", "  - class_path: tests.faults.PoisonWeight\n    init_args: {at_step: 7}\n"
    )
    args = fit_args(class_folders, root, "--config", str(config), "--trainer.max_epochs", "3",
                    "--model.nonfinite_loss", "skip", "--checkpoint_every_n_steps", "2")  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    last = root / "checkpoints" / "last.ckpt"
    assert error.startswith("error: weights are not finite at step 8 (epoch 1; first: backbone.fc.bias)"), error
    assert f"no checkpoint written, {last} (step 6) is kept" in error
    for path in (root / "checkpoints").glob("*.ckpt"):  # last.ckpt and the best: all from finite weights
        saved = torch.load(path, weights_only=True)
        assert saved["global_step"] <= 6 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_a_read_stuck_in_the_kernel_ends_with_an_error_naming_the_option(class_folders, tmp_path, monkeypatch, capsys):
    """A worker blocked in a system call that no signal interrupts (as on a hard NFS mount): the loader's wait ends."""
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)

    def stuck() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the per-image limit cannot reach it
        with open(fifo, "rb") as reader:  # blocks in open(2) until a writer appears
            reader.read()

    _poisoned(monkeypatch, "n00000002/img_003.jpg", stuck)
    started = time.monotonic()
    args = ["validate", *TINY_MODEL, *FAST_TRAINER, "--data.data_dir", str(class_folders), "--data.batch_size", "2",
            "--data.num_workers", "1", "--data.sample_timeout", "2", "--data.split", "[0.0, 1.0, 0.0]",
            *untrained_weights(tmp_path)]  # fmt: skip
    try:
        assert main(args) == 2
    finally:
        with contextlib.suppress(OSError):  # no reader left: nothing to release
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the worker
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert time.monotonic() - started < 60
    assert error.startswith("error: no batch from the data-loading workers for 6 s: a read is stuck"), error
    assert error.endswith("or raise --data.sample_timeout (the limit per image)")


def test_sigterm_to_the_process_group_saves_and_exits_143(class_folders, tmp_path):
    """As SLURM, `timeout` and `kill -- -PGID` do: DataLoader workers get SIGTERM too, and leave it to the main one."""
    started = tmp_path / "batch-started"
    config = _slow_batches_yaml(tmp_path, 1, started)
    root = tmp_path / "runs"
    args = fit_args(class_folders, root, "--config", str(config), "--trainer.max_epochs", "5")
    args += ["--data.num_workers", "2"]
    process = subprocess.Popen([sys.executable, CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    _wait_for_first_batch(started, process)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, stderr[-3000:]
    assert "checkpoint saved" in stderr and "worker" not in stderr
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # saved mid-epoch


def test_slurm_requeue_signal_saves_requeues_and_resumes(class_folders, tmp_path):
    """SLURM's SIGUSR1 (Lightning's SLURMEnvironment, auto_requeue): save, `scontrol requeue <job>`, exit 138."""
    started, requeued = tmp_path / "batch-started", tmp_path / "requeued"
    bin_dir = tmp_path / "bin"  # a stand-in for SLURM's scontrol that records its arguments
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {requeued}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}  # fmt: skip
    env = {**os.environ, **slurm, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    config = _callbacks_yaml(
        tmp_path / "slow.yaml",
        "  - class_path: imagenet_cls.callbacks.signals.GracefulShutdown\n"
        f"  - class_path: tests.faults.SlowBatches\n    init_args: {{seconds: 1, started_file: {started}}}\n",
    )
    root = tmp_path / "runs"
    args = fit_args(class_folders, root, "--config", str(config), "--trainer.max_epochs", "2")
    process = subprocess.Popen([sys.executable, CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)  # fmt: skip
    _wait_for_first_batch(started, process)
    time.sleep(0.5)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    assert requeued.read_text().split() == ["requeue", "4242"] and "SLURM job 4242 requeued" in stderr
    saved = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1  # saved at the start of the second batch
    resumed = subprocess.run([sys.executable, CLI, *fit_args(class_folders, root, "--trainer.max_epochs", "2",
                              "--ckpt_path", "last")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
