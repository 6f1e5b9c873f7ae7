"""The real entry point, end to end: fit -> validate -> test -> predict through cli.py, and user mistakes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from imagenet_cls.cli import ImageNetCLI, main
from tests.conftest import FAST_TRAINER, TINY_MODEL, fit_args, make_class_folders, untrained_weights

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        cwd=cwd,
        timeout=600,
    )


def test_fit_validate_test_predict_through_cli_py(class_folders, tmp_path):
    """The user's path: default callbacks and W&B logger (offline without a key), then evaluate and predict."""
    # No W&B credentials anywhere: no key variable, no mode variable, a HOME without .netrc.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}
    runs = tmp_path / "runs"
    fit = run_cli(
        "fit",
        *TINY_MODEL,
        "--data.data_dir",
        str(class_folders),
        "--data.num_workers",
        "1",
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        "3",
        "--trainer.default_root_dir",
        str(runs),
        "--model.optimizer",
        "adamw",
        "--model.lr",
        "0.01",
        "--trainer.accelerator",
        "cpu",
        env=env,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "W&B: no API key found; logging offline" in fit.stderr
    assert "Traceback" not in fit.stderr
    run_dir = next((runs / "ImageNet").iterdir())
    best = list((run_dir / "checkpoints").glob("test_resnet-epoch=*-val_acc=*.ckpt"))
    assert len(best) == 1 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()
    assert list((runs / "wandb").glob("offline-run-*"))
    assert re.search(r"test_acc\s+│\s+1\.0", fit.stdout), fit.stdout[-2000:]  # the test after fit ran
    for split in ("val", "test"):  # the evaluation report of the last validation and of the test
        summary = json.loads((run_dir / "report" / split / "summary.json").read_text())
        assert summary["images"] == 3 and summary["top1"] == 1.0
        assert pd.read_csv(run_dir / "report" / split / "per_class.csv")["name"].tolist() == ["red", "green", "blue"]
        assert (run_dir / "report" / split / "confusion_matrix.png").is_file()
        assert list((runs / "wandb").rglob(f"media/images/report/{split}/confusion_*.png"))  # logged to W&B too

    checkpoint = torch.load(best[0], weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["classes"] == ["n00000001", "n00000002", "n00000003"]
    assert hparams["class_names"] == ["red", "green", "blue"] and hparams["num_classes"] == 3

    for stage, metric in (
        ("validate", "val_acc"),
        ("test", "test_acc"),
    ):  # no --config: everything comes from the checkpoint
        result = run_cli(
            stage,
            "--ckpt_path",
            str(best[0]),
            "--data.data_dir",
            str(class_folders),
            "--trainer.logger",
            "false",
            "--data.num_workers",
            "0",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.search(rf"{metric}\s+│\s+1\.0", result.stdout), result.stdout[-2000:]

    out = tmp_path / "predictions"
    predict = run_cli(
        "predict",
        "--ckpt_path",
        str(best[0]),
        "--data.mode",
        "predict",
        "--data.predict_path",
        str(class_folders),
        "--writer.output_dir",
        str(out),
        "--data.num_workers",
        "0",
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    rows = pd.read_csv(out / "predictions.csv")
    assert len(rows) == 30 and (rows["error"].isna()).all()
    assert (rows["pred_folder"] == rows["path"].map(lambda p: Path(p).parent.name)).mean() == 1.0
    assert set(rows["pred_name"]) == {"red", "green", "blue"}
    assert len(list((out / "images").rglob("*.jpg"))) == 30
    assert (out / "config.yaml").is_file() and not (out / "report").exists()


def _error_of(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


def test_user_mistakes_are_one_line_errors(class_folders, tmp_path, capsys):
    base = ["fit", *FAST_TRAINER, *TINY_MODEL, "--trainer.fast_dev_run", "true", "--data.num_workers", "0"]
    assert "--data.data_dir" in _error_of(capsys, *base, "--data.data_dir", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "holds no class folders" in _error_of(capsys, *base, "--data.data_dir", str(tmp_path / "empty"))
    message = _error_of(capsys, *base, "--data.data_dir", str(class_folders), "--model.model_name", "resnet_50")
    assert "did you mean" in message and "resnet50" in message
    (class_folders / "n00000009").mkdir()
    assert "n00000009 holds no image" in _error_of(capsys, *base, "--data.data_dir", str(class_folders))


def test_monitor_that_is_never_logged(class_folders, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "    init_args: {monitor: val_accuracy, mode: max}\n"
    )
    message = _error_of(
        capsys,
        "fit",
        "--config",
        str(config),
        *FAST_TRAINER,
        *TINY_MODEL,
        "--data.data_dir",
        str(class_folders),
        "--trainer.fast_dev_run",
        "true",
    )
    assert "monitor='val_accuracy'" in message and "val_acc" in message


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_class_folders(root / "data", per_class=6)
    cli = ImageNetCLI(
        args=[
            "fit",
            *FAST_TRAINER,
            *TINY_MODEL,
            "--data.data_dir",
            str(data),
            "--data.num_workers",
            "0",
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(root / "runs"),
            "--data.split",
            "[0.5, 0.5, 0.0]",
        ]
    )
    return cli, Path(cli.trainer.checkpoint_callback.best_model_path), data


def test_checkpoint_that_does_not_match(fitted, tmp_path, capsys):
    _, ckpt, _ = fitted
    other = make_class_folders(tmp_path / "other", classes={"cats": (1, 1, 1), "dogs": (200, 200, 200)})
    message = _error_of(capsys, "test", "--ckpt_path", str(ckpt), "--data.data_dir", str(other), *FAST_TRAINER)
    assert "has 2 classes (cats, dogs)" in message and "trained on 3 (n00000001" in message
    message = _error_of(
        capsys,
        "test",
        "--ckpt_path",
        str(ckpt),
        "--data.data_dir",
        str(other),
        "--model.model_name",
        "resnet18",
        *FAST_TRAINER,
    )
    assert "--model.model_name 'resnet18' contradicts the checkpoint" in message
    assert "is not a file" in _error_of(
        capsys, "test", "--ckpt_path", str(tmp_path / "no.ckpt"), "--data.data_dir", str(other), *FAST_TRAINER
    )


def test_no_test_split_skips_the_test_after_fit(fitted):
    cli, _, _ = fitted
    assert "test_acc" not in cli.trainer.callback_metrics and "val_acc" in cli.trainer.callback_metrics


def test_cpu_mixed_precision_falls_back_to_32(class_folders, caplog):
    cli = ImageNetCLI(
        args=[
            "fit",
            *FAST_TRAINER,
            *TINY_MODEL,
            "--data.data_dir",
            str(class_folders),
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.fast_dev_run",
            "true",
            "--data.num_workers",
            "0",
        ]
    )
    assert cli.trainer.precision == "32-true"
    assert "precision bf16-mixed requested on CPU: using 32-true" in caplog.text


def test_csv_logger_and_checkpoint_naming(class_folders, tmp_path):
    cli = ImageNetCLI(
        args=[
            "fit",
            *FAST_TRAINER,
            *TINY_MODEL,
            "--data.data_dir",
            str(class_folders),
            "--trainer.logger",
            "CSVLogger",
            "--trainer.logger.save_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "1",
            "--data.num_workers",
            "0",
            "--test_after_fit",
            "false",
            "--trainer.log_every_n_steps",
            "1",
        ]
    )
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "config.yaml").is_file()
    names = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert sorted(names)[0].startswith("last") and re.fullmatch(
        r"test_resnet-epoch=00-val_acc=\d\.\d\d\.ckpt", sorted(names)[1]
    )
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert {"train_loss_step", "train_acc", "val_loss", "val_acc", "val_acc5"} <= set(metrics.columns)
    assert any(column.startswith("lr-SGD") for column in metrics.columns)  # LearningRateMonitor
    assert cli.trainer.early_stopping_callback.patience == 10


def test_resume_last_and_refuse_to_overwrite(class_folders, tmp_path, capsys):
    root = tmp_path / "runs"
    base = [
        "fit",
        *FAST_TRAINER,
        *TINY_MODEL,
        "--data.data_dir",
        str(class_folders),
        "--data.num_workers",
        "0",
        "--trainer.default_root_dir",
        str(root),
        "--test_after_fit",
        "false",
    ]
    assert "no last*.ckpt under" in _error_of(capsys, *base, "--ckpt_path", "last")
    first = ImageNetCLI(args=[*base, "--trainer.max_epochs", "1"])
    assert first.trainer.current_epoch == 1
    before = (root / "checkpoints" / "last.ckpt").read_bytes()
    assert "already holds checkpoints" in _error_of(capsys, *base, "--trainer.max_epochs", "2")
    assert (root / "checkpoints" / "last.ckpt").read_bytes() == before  # nothing was overwritten
    resumed = ImageNetCLI(args=[*base, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * first.trainer.global_step


def test_a_requeued_slurm_job_resumes_by_itself(class_folders, tmp_path, monkeypatch):
    base = fit_args(class_folders, tmp_path / "runs")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued before any checkpoint: a fresh start
    first = ImageNetCLI(args=[*base, "--trainer.max_epochs", "1"])
    assert first.trainer.current_epoch == 1
    resumed = ImageNetCLI(args=[*base, "--trainer.max_epochs", "2"])  # no --ckpt_path last needed
    assert resumed.trainer.global_step == 2 * first.trainer.global_step


def test_checkpoint_carrying_code_is_refused(fitted, tmp_path, capsys):
    _, ckpt, data = fitted
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["model_name"] = Payload()
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    message = _error_of(capsys, "test", "--ckpt_path", str(evil), "--data.data_dir", str(data), *FAST_TRAINER)
    assert "holds pickled objects that could run code" in message and "--weights_only false" in message
    assert not marker.exists()
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert "_instantiator" not in saved and "_class_path" not in saved  # nothing to import and call


@pytest.mark.slow  # make test keeps SIGTERM saving (test_faults.py) and resuming (its SLURM requeue test)
@pytest.mark.parametrize(("signum", "code"), [(15, 143), (2, 130)])
def test_signal_during_fit_checkpoints_exits_and_resumes(class_folders, tmp_path, signum, code):
    import time

    root = tmp_path / "runs"
    config = tmp_path / "no_early_stop.yaml"  # early stopping could end the run before the signal arrives
    config.write_text(
        "trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "    init_args: {monitor: val_acc, mode: max, save_last: true}\n"
        "  - class_path: imagenet_cls.callbacks.signals.GracefulShutdown\n"
    )
    args = [str(REPO / "cli.py"), *fit_args(class_folders, root, "--config", str(config), "--data.batch_size", "2")]
    process = subprocess.Popen(
        [sys.executable, *args, "--trainer.max_epochs", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = root / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert last.exists(), process.communicate()[1][-2000:]
    saved_epoch = torch.load(last, weights_only=True)["epoch"]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert "resume with --ckpt_path last" in stderr
    interrupted = torch.load(last, weights_only=True)
    assert interrupted["global_step"] > 0 and interrupted["epoch"] >= saved_epoch
    resumed = subprocess.run(
        [sys.executable, *args, "--trainer.max_epochs", str(interrupted["epoch"] + 2), "--ckpt_path", "last"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr
    final = torch.load(last, weights_only=True)
    assert final["global_step"] > interrupted["global_step"] and final["epoch"] > interrupted["epoch"]


def test_ema_weights_are_validated_and_saved_as_best(class_folders, tmp_path):
    config = tmp_path / "ema.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "    init_args: {monitor: val_loss, mode: min, save_top_k: 1}\n"
    )
    ema = ["--model.ema_decay", "0.5", "--model.optimizer", "adamw", "--model.lr", "0.01"]
    fit = ImageNetCLI(
        args=fit_args(class_folders, tmp_path / "runs", "--config", str(config), "--trainer.max_epochs", "2", *ema)
    )
    best = fit.trainer.checkpoint_callback
    checkpoint = torch.load(best.best_model_path, weights_only=True)
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if k.startswith("backbone."))

    def val_loss(state_dict) -> float:
        path = tmp_path / "weights.ckpt"
        torch.save({**checkpoint, "state_dict": state_dict}, path)
        check = ImageNetCLI(
            args=[
                "validate",
                "--ckpt_path",
                str(path),
                "--data.data_dir",
                str(class_folders),
                *FAST_TRAINER,
                "--data.num_workers",
                "0",
                "--data.batch_size",
                "4",
            ]
        )
        return float(check.trainer.callback_metrics["val_loss"])

    # The score that made this checkpoint the best one was computed with the EMA weights, not the raw ones.
    assert val_loss(ema) == pytest.approx(float(best.best_model_score), rel=1e-4)
    assert val_loss(raw) != pytest.approx(float(best.best_model_score), rel=1e-4)


def test_ckpt_path_best_and_predict_without_data_mode(fitted, tmp_path, capsys):
    """best.ckpt in the run folder follows the best checkpoint; predict needs no --data.mode predict."""
    cli, best, data = fitted
    root = Path(cli.trainer.default_root_dir)
    link = root / "best.ckpt"
    assert link.is_symlink() and os.path.samefile(link, best)
    out = tmp_path / "predictions"
    args = ["predict", "--ckpt_path", "best", "--trainer.default_root_dir", str(root), "--data.predict_path"]
    assert main([*args, str(data), "--writer.output_dir", str(out), "--data.num_workers", "0", *FAST_TRAINER]) == 0
    assert len(pd.read_csv(out / "predictions.csv")) == 18
    message = _error_of(capsys, "test", "--ckpt_path", "best", "--trainer.default_root_dir", str(tmp_path / "empty"))
    assert "--ckpt_path best: no best.ckpt under" in message


def test_evaluation_keeps_the_model_classes(fitted, tmp_path, capsys):
    """validate on some of the model's classes maps folders by name; unknown folders and no weights are errors."""
    _, best, _ = fitted
    subset = make_class_folders(tmp_path / "subset", per_class=4, classes={"n00000003": (40, 60, 220)})
    args = ["--data.data_dir", str(subset), "--data.num_workers", "0", "--data.split", "[0.0, 1.0, 0.0]"]
    cli = ImageNetCLI(args=["validate", "--ckpt_path", str(best), *args, *FAST_TRAINER])
    assert cli.model.hparams.num_classes == 3 and cli.model.hparams.classes[2] == "n00000003"
    assert cli.datamodule.datasets["val"].samples[0][1] == 2  # the model's index of n00000003, not 0
    assert cli.trainer.callback_metrics["val_images"] == 4
    restricted = ImageNetCLI(
        args=["validate", "--ckpt_path", str(best), *args, *FAST_TRAINER, "--data.class_subset", "true"]
    )
    assert restricted.trainer.callback_metrics["val_acc"] == 1.0  # one class present: the only one scored
    stranger = make_class_folders(tmp_path / "stranger", per_class=2, classes={"n09999999": (1, 2, 3)})
    message = _error_of(capsys, "validate", "--ckpt_path", str(best), "--data.data_dir", str(stranger), *FAST_TRAINER)
    assert "n09999999 unknown to the model" in message
    message = _error_of(capsys, "validate", *TINY_MODEL, "--data.data_dir", str(subset), *FAST_TRAINER)
    assert "validate needs trained weights" in message
    five_classes = untrained_weights(tmp_path, num_classes=5)  # then --model.num_classes 3 below wins
    args = ["validate", *TINY_MODEL, *five_classes, "--model.num_classes", "3", *FAST_TRAINER, "--data.data_dir"]
    message = _error_of(capsys, *args, str(make_class_folders(tmp_path / "three")))
    assert "classifier for another number of classes" in message and "only fit re-initialises a head" in message
