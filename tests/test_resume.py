"""A run killed with SIGKILL mid-epoch and resumed with --ckpt_path last ends bitwise equal to an uninterrupted one."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_MODEL, assert_same_final_weights, differing_tensors

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def _fit(data: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "fit", *TINY_MODEL, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.deterministic", "true", "--trainer.max_epochs", "3",
        "--test_after_fit", "false", "--checkpoint_every_n_steps", "2",
        "--data.batch_size", "4", "--data.num_workers", "2", "--data.auto_augment", "rand-m5-n2-mstd0.5",
        # Randomness in the training process too: mixup, random erasing, dropout; and EMA state to restore.
        "--model.mixup_alpha", "0.4", "--model.random_erase_prob", "0.5", "--model.drop_rate", "0.2",
        "--model.ema_decay", "0.9", "--model.lr", "0.05", *extra,
    ]  # fmt: skip
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=600)


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(class_folders, tmp_path):
    reference = _fit(class_folders, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_root = tmp_path / "killed"
    # 24 training images, batch 4: 6 steps per epoch; killed at step 9 (mid epoch 1), last saved at step 8.
    killed = _fit(
        class_folders, killed_root, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9"
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8 and saved["epoch"] == 1

    resumed = _fit(class_folders, killed_root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert_same_final_weights(
        tmp_path / "reference" / "checkpoints" / "last.ckpt", killed_root / "checkpoints" / "last.ckpt", 18
    )
    expected = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)
    final = torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)
    assert expected["state_dict"].keys() == final["state_dict"].keys()
    best = {k: v["best_model_score"] for k, v in expected["callbacks"].items() if k.startswith("ModelCheckpoint")}
    assert best == {k: v["best_model_score"] for k, v in final["callbacks"].items() if k.startswith("ModelCheckpoint")}


@pytest.mark.slow  # a control for the test above (three fits): make test stays under 15 minutes
def test_resume_without_the_saved_position_would_differ(class_folders, tmp_path):
    """The comparison above can fail: restarting the interrupted epoch from its start gives other weights."""
    reference = _fit(class_folders, tmp_path / "reference", "--trainer.max_epochs", "2")
    killed_root = tmp_path / "killed"
    _fit(class_folders, killed_root, "--trainer.max_epochs", "2", "--trainer.callbacks+=tests.faults.KillAt",
         "--trainer.callbacks.step", "9")  # fmt: skip
    checkpoint = killed_root / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    datamodule_key = next(k for k in saved if k.endswith("ImageNetDataModule"))
    saved[datamodule_key] = {}  # as if the data position had not been saved
    torch.save(saved, checkpoint)
    resumed = _fit(class_folders, killed_root, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert reference.returncode == resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    final = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert differing_tensors(expected, final)


def test_first_nonfinite_names_the_first_bad_floating_tensor():
    from imagenet_cls.callbacks.resume import first_nonfinite

    tensors = [("steps", torch.tensor([2**62])), ("w", torch.ones(3)), ("b", torch.tensor([0.0, float("inf")])),
               ("c", torch.tensor(float("nan")))]  # fmt: skip
    assert first_nonfinite(tensors) == "b"
    assert first_nonfinite(tensors[:2]) is None and first_nonfinite([]) is None


@pytest.mark.slow  # 41 s: make test keeps 1-process kill -9 resumes and the DDP one after SIGTERM
def test_kill_9_of_a_ddp_run_then_resume_equals_an_uninterrupted_ddp_run(class_folders, tmp_path):
    """2 processes (gloo): each saves and gets back its own random states; both are killed mid-epoch."""
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.num_workers", "1"]
    reference = _fit(class_folders, tmp_path / "reference", *ddp)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_root = tmp_path / "killed"
    # 24 training images over 2 processes, batch 4: 3 steps per epoch; killed at step 5 (mid epoch 1), saved at 4.
    killed = _fit(class_folders, killed_root, *ddp, "--trainer.callbacks+=tests.faults.KillAt",
                  "--trainer.callbacks.step", "5")  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["epoch"] == 1
    (rng,) = [v for k, v in saved["callbacks"].items() if k.startswith("ResumeState")]
    assert len(rng["per_rank"]) == 2

    resumed = _fit(class_folders, killed_root, *ddp, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_final_weights(
        tmp_path / "reference" / "checkpoints" / "last.ckpt", killed_root / "checkpoints" / "last.ckpt", 9
    )


def test_the_checkpoint_writer_refuses_nonfinite_weights_and_keeps_the_previous_file(tmp_path):
    """Weights-only saves skip the callbacks' checks; the writer itself refuses (FiniteCheckpointIO)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from imagenet_cls.callbacks.resume import FiniteCheckpointIO, NonFiniteWeights

    path = tmp_path / "best.ckpt"
    io = FiniteCheckpointIO(TorchCheckpointIO())
    io.save_checkpoint({"global_step": 1, "state_dict": {"fc.weight": torch.ones(2)}}, path)
    nan = torch.tensor([float("nan")])
    bad = {"global_step": 2, "state_dict": {"fc.weight": torch.ones(2)}, "current_model_state": {"fc.bias": nan}}
    with pytest.raises(NonFiniteWeights, match=r"first: current_model_state.fc.bias\): .*best.ckpt not written"):
        io.save_checkpoint(bad, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
