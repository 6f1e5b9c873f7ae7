"""Two nodes simulated on 127.0.0.1: two torchrun agents (``--nnodes 2 --nproc-per-node 2``, gloo, CPU) run one fit
of 4 processes. Checkpoints and the config are written once, by global rank 0; every training image is loaded
exactly once per epoch over the 4 processes; a run whose rank on the second node is killed with ``kill -9``
mid-epoch resumes with ``--ckpt_path last`` bitwise equal to an uninterrupted run."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from jsonargparse import Namespace

from imagenet_cls.cli import main
from imagenet_cls.cli.config_edits import continue_run, match_torchrun
from imagenet_cls.errors import UserError
from tests.conftest import TINY_MODEL, differing_tensors, make_class_folders
from tests.observers import seen_per_epoch
from tests.test_ddp import CLI, COMMON

TRAIN, VAL, BATCH = 24, 12, 2  # 24 / 4 processes / batch 2: 3 steps an epoch, no padding, no dropped batch
# DDP regroups gradients after the first step of every run (fresh or resumed) unless it looks for unused parameters;
# over more than 2 processes the sums then take another order and the resumed weights differ in the last bits.
STRATEGY = "ddp_find_unused_parameters_true"


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    make_class_folders(root / "train", per_class=TRAIN // 3)
    make_class_folders(root / "val", per_class=VAL // 3)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(data: Path, root: Path, witness: Path, *extra: str, timeout: float = 300) -> list[tuple[int, str]]:
    """Both torchrun agents of one fit, node 0 and node 1, at once; ``(exit code, stderr)`` per node."""
    port = _free_port()
    args = ["fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
            "--trainer.num_nodes", "2", "--trainer.devices", "2", "--trainer.strategy", STRATEGY,
            "--data.batch_size", str(BATCH), "--trainer.max_epochs", "3", "--test_after_fit", "false",
            "--trainer.deterministic", "true", "--checkpoint_every_n_steps", "2", "--model.lr", "0.05",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
            "--trainer.callbacks+=tests.observers.Witness", "--trainer.callbacks.folder", str(witness),
            *extra]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "start_new_session": True}
    nodes = [subprocess.Popen([*torchrun, "--node-rank", str(node), CLI, *args], **pipes) for node in (0, 1)]
    results = []
    try:
        for node in nodes:
            _, stderr = node.communicate(timeout=timeout)
            results.append((node.returncode, stderr))
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.communicate()
    return results


def _each_image_once(epochs: dict[int, dict[int, list[int]]], epoch: int) -> None:
    ranks = epochs[epoch]
    assert sorted(ranks) == [0, 1, 2, 3]
    assert all(len(indices) == TRAIN // 4 for indices in ranks.values()), ranks
    assert sorted(i for indices in ranks.values() for i in indices) == list(range(TRAIN)), ranks


def _checkpoint_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and ".ckpt" in p.name)


@pytest.fixture
def torchrun_env(monkeypatch) -> None:
    """The variables torchrun gives global rank 0 of ``--nnodes 2 --nproc-per-node 2``."""
    for name, value in {"TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "0",
                        "LOCAL_RANK": "0", "GROUP_RANK": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def test_options_that_do_not_match_torchrun_are_one_line(torchrun_env, data, capsys):
    args = ["fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--trainer.logger", "false",
            "--trainer.strategy", "ddp", "--trainer.devices", "2"]  # fmt: skip
    assert main(args) == 2  # --trainer.num_nodes forgotten: Lightning's traceback once fit starts
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: torchrun started 4 processes (2 on each of 2 nodes)"), error
    assert error.endswith("give --trainer.num_nodes 2 --trainer.devices 2 (torchrun's --nnodes and --nproc-per-node)")
    match_torchrun(Namespace(num_nodes=2, devices=2, accelerator="cpu"))
    match_torchrun(Namespace(num_nodes=2, devices="auto", accelerator="gpu"))  # the hardware decides: Lightning checks
    for wrong in (Namespace(num_nodes=2, devices="auto", accelerator="cpu"), Namespace(num_nodes=4, devices=[0])):
        with pytest.raises(UserError, match="give --trainer.num_nodes 2 --trainer.devices 2"):
            match_torchrun(wrong)


def test_resume_continues_the_folder_of_a_logger_without_a_name(tmp_path):
    """A CSVLogger given after the default WandbLogger keeps its ``name: null``: ``<save_dir>/version_0``."""
    for name, run in ((None, tmp_path / "version_3"), ("lightning_logs", tmp_path / "lightning_logs" / "version_3")):
        logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                           init_args=Namespace(save_dir="elsewhere", name=name, version=None))  # fmt: skip
        continue_run(Namespace(logger=logger), run / "checkpoints" / "last.ckpt")
        assert (logger.init_args.save_dir, logger.init_args.version) == (str(tmp_path), 3)


@pytest.mark.slow  # three 2-node fits (about 30 s each on 2 cores, 8 interpreters at once)
def test_two_nodes_fit_once_and_resume_after_kill_9_bitwise_equal(data, tmp_path):
    reference_root, witness = tmp_path / "reference", tmp_path / "witness-reference"
    results = _two_nodes(data, reference_root, witness)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    (run,) = [log.parent for log in reference_root.rglob("metrics.csv")]  # one run: one log, one config, one folder
    assert len(list(reference_root.rglob("config*.yaml"))) == 1 and (run / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints  # best + last, nothing partial
    assert _checkpoint_files(reference_root) == sorted([*checkpoints, "best.ckpt"])
    writes = sorted(p.name for p in witness.glob("writes-rank*.txt"))
    assert writes == ["writes-rank0.txt"], writes  # global rank 0 alone wrote checkpoints (not node 1's first)
    assert pd.read_csv(run / "metrics.csv")["val_images"].dropna().eq(VAL).all()  # each val image once
    epochs = seen_per_epoch(witness)
    assert sorted(epochs) == [0, 1, 2]
    for epoch in epochs:
        _each_image_once(epochs, epoch)

    killed_root, witness = tmp_path / "killed", tmp_path / "witness-killed"
    # 3 steps an epoch; rank 3 (node 1) is killed as step 5 starts (mid epoch 1); last.ckpt was saved at step 4.
    results = _two_nodes(data, killed_root, witness, "--trainer.callbacks+=tests.faults.KillAt",
                         "--trainer.callbacks.step", "5", "--trainer.callbacks.rank", "3")  # fmt: skip
    assert all(code != 0 for code, _ in results), results
    errors = [line for _, stderr in results for line in stderr.splitlines() if line.startswith("error:")]
    assert any(line.startswith("error:") for line in results[0][1].splitlines()), results[0][1][-3000:]
    assert all("rank 3 (pid" in line for line in errors), errors  # the lost rank is named on the other node
    assert not any('cli.py", line' in stderr for _, stderr in results)  # no traceback of ours (torchrun's summary)
    saved = torch.load(next(killed_root.rglob("last.ckpt")), weights_only=True)
    assert saved["global_step"] == 4 and saved["epoch"] == 1
    done = next(v for k, v in saved.items() if k.endswith("ImageNetDataModule"))["batches_done"]
    before = {rank: indices[: done * BATCH] for rank, indices in seen_per_epoch(witness)[1].items()}

    witness = tmp_path / "witness-resumed"
    results = _two_nodes(data, killed_root, witness, "--ckpt_path", "last")
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    epochs = seen_per_epoch(witness)
    assert sorted(epochs) == [1, 2]  # the interrupted epoch continues after the saved batches, then the last one
    _each_image_once({1: {rank: before[rank] + epochs[1][rank] for rank in epochs[1]}}, 1)
    _each_image_once(epochs, 2)
    expected = torch.load(next(reference_root.rglob("last.ckpt")), weights_only=True)
    final = torch.load(next(killed_root.rglob("last.ckpt")), weights_only=True)
    assert final["global_step"] == expected["global_step"] == 9
    different = differing_tensors(expected["state_dict"], final["state_dict"])
    assert not different, different


def test_a_peer_killed_a_moment_ago_is_named_not_taken_for_alive():
    """A killed rank's sockets close before /proc shows it gone: the survivor looks again for a moment (found by
    the two-node run above: "all ranks on this host are alive")."""
    from types import SimpleNamespace

    from imagenet_cls.callbacks.peers import PeerWatch

    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    try:
        watch = PeerWatch()
        watch.peers = [(socket.gethostname(), os.getpid()), (socket.gethostname(), peer.pid)]
        trainer = SimpleNamespace(global_rank=0, strategy=SimpleNamespace(launcher=None))
        line = watch.explain(RuntimeError("Connection closed by peer [127.0.0.1]:1234"), trainer)
    finally:
        peer.wait()
    assert line.startswith(f"lost rank 1 (pid {peer.pid}) exited"), line
