"""The learning-rate and batch-size finders from YAML on the digits: results in the run folder, and they take effect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagenet_cls.callbacks.lr_finder import BatchSizeFinder, LearningRateFinder
from imagenet_cls.cli import ImageNetCLI
from imagenet_cls.demo import export_digits
from tests.conftest import fit_args

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The demo's 1,797 handwritten digits as 10 class folders of 32x32 PNGs."""
    folder = tmp_path_factory.mktemp("digits")
    export_digits(folder)
    return folder


def fit_with_finders(digits: Path, root: Path, *extra: str) -> ImageNetCLI:
    """One epoch of 20 batches after the recipe's learning-rate search (20 steps instead of 100)."""
    args = fit_args(digits, root, "--config", str(REPO / "config" / "lr_find.yaml"),
                    "--trainer.callbacks.num_training_steps", "20", "--data.batch_size", "8",
                    "--model.optimizer", "adamw", "--model.lr", "0.3", "--model.scheduler", "constant",
                    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "20",
                    "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0", *extra)  # fmt: skip
    return ImageNetCLI(args=args)


def rates_in_use(cli: ImageNetCLI) -> list[float]:
    """The optimizer's learning rate per parameter group after the training steps."""
    return [group["lr"] for group in cli.trainer.optimizers[0].param_groups]


def test_lr_finder_suggestion_becomes_the_rate_used_and_is_saved(digits, tmp_path):
    root = tmp_path / "runs"
    cli = fit_with_finders(digits, root)
    finder = next(c for c in cli.trainer.callbacks if isinstance(c, LearningRateFinder))
    suggestion = finder.suggestion
    assert suggestion is not None and 1e-6 <= suggestion < 0.3

    result = json.loads((root / "lr_find.json").read_text())  # no logger: the run folder is the root
    assert result["suggestion"] == suggestion and result["lr_before"] == 0.3 and result["applied"]
    assert result["lr"] == suggestion and result["batch_size"] == 8
    assert 13 <= result["steps"] <= 20 and len(result["lrs"]) == len(result["losses"]) == result["steps"]
    assert result["lrs"] == sorted(result["lrs"]) and result["lrs"][0] == pytest.approx(1e-6)
    plot = (root / "lr_find.png").read_bytes()
    assert plot.startswith(PNG) and len(plot) > 10_000

    # The suggestion is the rate of the real training (constant schedule), after its steps, not only at the start.
    assert cli.trainer.global_step == 20
    assert rates_in_use(cli) == pytest.approx([suggestion] * len(rates_in_use(cli)))
    assert cli.model.hparams.lr == suggestion
    saved = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["lr"] == suggestion
    assert not list(root.glob(".lr_find*.ckpt"))  # the finder's temporary checkpoint is gone


def test_batch_size_finder_runs_first_and_scaled_lr_uses_it(digits, tmp_path):
    """Listed after the LR finder (appended on the command line), the batch-size search still comes first."""
    root = tmp_path / "runs"
    cli = fit_with_finders(
        digits, root, "--model.lr_base_batch_size", "16",
        "--trainer.callbacks+=imagenet_cls.callbacks.lr_finder.BatchSizeFinder",
        "--trainer.callbacks.init_val", "4", "--trainer.callbacks.max_val", "32",
        "--trainer.callbacks.steps_per_trial", "1",
    )  # fmt: skip
    sizes = json.loads((root / "batch_size_find.json").read_text())
    assert sizes == {"batch_size": 32, "batch_size_before": 8, "mode": "power"}
    assert cli.datamodule.batch_size == 32
    assert next(c for c in cli.trainer.callbacks if isinstance(c, BatchSizeFinder)).optimal_batch_size == 32

    result = json.loads((root / "lr_find.json").read_text())
    suggestion = result["suggestion"]
    assert result["batch_size"] == 32  # the learning rate was searched with the batch size found
    # model.lr is per 16 images; 32 images per step scale it by 2 (linear), so the rate used is the suggestion.
    assert cli.model.hparams.lr == pytest.approx(suggestion / 2)
    assert rates_in_use(cli) == pytest.approx([suggestion] * len(rates_in_use(cli)))


def test_finders_do_not_search_when_fit_resumes(caplog):
    from types import SimpleNamespace

    from imagenet_cls.callbacks.lr_finder import _resuming

    assert not _resuming(SimpleNamespace(ckpt_path=None), "learning-rate")
    with caplog.at_level("INFO", logger="imagenet_cls"):
        assert _resuming(SimpleNamespace(ckpt_path="runs/x/checkpoints/last.ckpt"), "learning-rate")
    assert "learning-rate finder: skipped, fit resumes runs/x/checkpoints/last.ckpt" in caplog.text
