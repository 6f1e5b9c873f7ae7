"""Issue: offline pretrained EfficientNet-Lite0 evaluated by our CLI agrees with timm's own evaluation."""

from __future__ import annotations

from pathlib import Path

from bench.common import REPO, WORK, Result, sample_as_val_folders, sample_dir, timm_inference


def timm_top1(data_dir: Path) -> tuple[float, int]:
    """timm's evaluation of the same weights (its inference.py loop: the uint8 prefetching loader, normalised in
    the loop), scored against the sample's wnids in sorted order (the head's order). Uses this run's timm
    predictions from bench.predict, or runs timm now."""
    import pandas as pd

    from bench.predict import TIMM_CSV

    csv = TIMM_CSV
    if not csv.is_file():
        timm_inference(sample_dir(), csv)
    rows = pd.read_csv(csv)
    wnids = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    truth = rows["filename"].map(lambda name: wnids.index(name.split("_")[0]))
    return float((rows["top0"] == truth).mean()), len(rows)


def our_top1(data_dir: Path) -> float:
    """``python cli.py validate --config config/efficientnet_lite0.yaml --data.data_dir DIR`` (in process)."""
    from imagenet_cls.cli import ImageNetCLI

    cli = ImageNetCLI(
        args=[
            "validate",
            "--config",
            str(REPO / "config" / "efficientnet_lite0.yaml"),
            "--data.data_dir",
            str(data_dir),
            "--data.num_workers",
            "2",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    return float(cli.trainer.callback_metrics["val_acc"])


def run() -> list[Result]:
    data = sample_as_val_folders(WORK / "imagenet-sample")
    ours = our_top1(data)
    theirs, count = timm_top1(data / "val")
    return [
        Result(
            "pretrained lite0 top-1 (ours vs timm eval)",
            ours * 100,
            theirs * 100,
            "% top-1",
            note=f"{count} images, difference {abs(ours - theirs) * 100:.2f} points (target <= 0.2)",
        ),
    ]
