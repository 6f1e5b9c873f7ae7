"""Issue: fine-tuning from the offline ImageNet weights beats training from scratch for the same epochs."""

from __future__ import annotations

from bench.common import REPO, WORK, Result


def _test_acc(name: str, *extra: str) -> float:
    import shutil

    from imagenet_cls.cli import ImageNetCLI
    from imagenet_cls.demo import export_digits

    export_digits(REPO / "dataset" / "digits")
    root = WORK / f"finetune-{name}"
    shutil.rmtree(root, ignore_errors=True)  # a fresh run each time (a fit refuses a folder with checkpoints)
    cli = ImageNetCLI(
        args=[
            "fit",
            "--config",
            str(REPO / "config" / "finetune_digits.yaml"),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(root),
            *extra,
        ]
    )
    return float(cli.trainer.callback_metrics["test_acc"])


def run() -> list[Result]:
    pretrained = _test_acc("pretrained")
    scratch = _test_acc("scratch", "--model.pretrained", "false")
    return [
        Result(
            "digits test_acc, 3 epochs: pretrained vs scratch",
            pretrained,
            scratch,
            "accuracy",
            note="config/finetune_digits.yaml, tf_efficientnet_lite0 at 64 px",
        )
    ]
