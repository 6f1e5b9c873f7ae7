"""DDP faults (gloo, CPU): a rank killed with ``kill -9`` or stopped with SIGSTOP ends the run within a minute with one
line naming the lost rank; a run whose rank was killed resumes bitwise equal to an uninterrupted one."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_MODEL, assert_same_final_weights
from tests.test_ddp import CLI, COMMON, _children, _ddp_fit, _wait_started


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def _end_within(process: subprocess.Popen, ranks: list[int], seconds: float) -> tuple[int, str, float]:
    """Wait for the run to end; every process must be gone within ``seconds``; (exit code, stderr, seconds)."""
    start = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"the run still ran {seconds} s after the fault: {stderr[-2000:]}")
    while not all(_gone(pid) for pid in ranks) and time.monotonic() - start < seconds:
        time.sleep(0.2)
    alive = [pid for pid in ranks if not _gone(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"processes {alive} outlived the run"
    return process.returncode, stderr, time.monotonic() - start


@pytest.mark.parametrize("devices", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3: make test-slow
def test_kill_9_of_one_rank_ends_every_other_rank_with_one_line_naming_it(class_folders, tmp_path, devices):
    root, started = tmp_path / "runs", tmp_path / "started"
    process = _ddp_fit(class_folders, root, started, "--trainer.devices", str(devices))
    rank1 = _wait_started(process, started)
    others = [pid for pid in _children(process.pid) if pid != rank1]
    os.kill(rank1, signal.SIGKILL)
    code, stderr, seconds = _end_within(process, others, 60)
    assert code != 0 and seconds < 60
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors and all(re.search(rf"lost rank 1 \(pid {rank1}\) exited", line) for line in errors), stderr[-3000:]
    assert not any(re.search(r"rank [02] \(pid", line) for line in errors), stderr[-3000:]  # only the killed one
    assert "Traceback" not in stderr, stderr[-3000:]


def test_a_peer_that_ended_itself_after_the_fault_is_not_named_with_the_killed_one():
    """Rank 0 noticing late: rank 1 was killed (a signal), rank 2 then exited on its own (a code): only 1 is named."""
    import socket
    from types import SimpleNamespace

    from imagenet_cls.callbacks.peers import PeerWatch

    killed, ended = subprocess.Popen(["sleep", "60"]), subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    killed.kill()
    killed.wait(), ended.wait()
    launcher = SimpleNamespace(procs=[killed, ended], kill=lambda signum: None)
    trainer = SimpleNamespace(global_rank=0, strategy=SimpleNamespace(launcher=launcher))
    watch = PeerWatch()
    host = socket.gethostname()
    watch.peers = [(host, os.getpid()), (host, killed.pid), (host, ended.pid)]
    line = watch.explain(RuntimeError("Connection closed by peer"), trainer)
    assert f"lost rank 1 (pid {killed.pid}) exited" in line and "rank 2" not in line, line
    watch.peers = [(host, os.getpid()), (host, ended.pid)]  # only the one that crashed with a code: it is named
    watch.explanation = None
    assert f"lost rank 1 (pid {ended.pid}) exited with code 1" in watch.explain(
        RuntimeError("Connection closed by peer"), trainer
    )


@pytest.mark.slow  # 34 s: make test keeps the killed rank (above), the fault a stopped one shares
def test_a_stopped_rank_ends_the_run_after_the_collective_timeout(class_folders, tmp_path):
    root, started = tmp_path / "runs", tmp_path / "started"
    strategy = ["--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy"]
    process = _ddp_fit(class_folders, root, started, *strategy, "--trainer.strategy.timeout", "0:00:15")
    rank1 = _wait_started(process, started)
    os.kill(rank1, signal.SIGSTOP)
    try:
        code, stderr, seconds = _end_within(process, [rank1], 60)
    finally:
        if not _gone(rank1):
            os.kill(rank1, signal.SIGKILL)
    assert code != 0 and 14 < seconds < 60, (seconds, stderr[-3000:])
    assert re.search(rf"^error: fit: lost rank 1 \(pid {rank1}\) stopped", stderr, re.M), stderr[-3000:]


@pytest.mark.slow
def test_ddp_run_whose_rank_was_killed_resumes_bitwise_equal(class_folders, tmp_path):
    def fit(root: Path, *extra: str) -> subprocess.CompletedProcess:
        args = ["fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(class_folders), "--trainer.default_root_dir",
                str(root), "--trainer.logger", "false", "--trainer.strategy", "ddp", "--trainer.devices", "2",
                "--data.batch_size", "2", "--trainer.max_epochs", "2", "--test_after_fit", "false",
                "--trainer.deterministic", "true", "--checkpoint_every_n_steps", "2", "--model.lr", "0.05",
                *extra]  # fmt: skip
        return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=600)

    reference = fit(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_root = tmp_path / "killed"
    # 24 training images over 2 ranks, batch 2: 6 steps an epoch; rank 1 is killed at step 9, last saved at 8.
    killed = fit(killed_root, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9",
                 "--trainer.callbacks.rank", "1")  # fmt: skip
    assert killed.returncode != 0 and "lost rank 1" in killed.stderr, killed.stderr[-3000:]
    assert torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    resumed = fit(killed_root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_final_weights(
        tmp_path / "reference" / "checkpoints" / "last.ckpt", killed_root / "checkpoints" / "last.ckpt", 12
    )
