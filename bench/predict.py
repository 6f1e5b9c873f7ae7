"""Issues 3 and 6: CPU predict against timm's inference.py, bf16 agreement, and memory that does not grow."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.common import PEAK_RSS_MB, REPO, WORK, Result, run_python, sample_dir, timm_reference

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


OURS = (
    PEAK_RSS_MB
    + """
import json, sys
from imagenet_cls.cli import ImageNetCLI
args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {args!r}
cli = ImageNetCLI(args=args)
writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PredictionWriter")
print(json.dumps({{"seconds": writer.seconds,
                  "peak_rss_mb": peak_rss_mb()}}))
"""
)


def _ours(args: list[str]) -> dict:
    return json.loads(run_python(OURS.format(args=args)).strip().splitlines()[-1])


def _predict_args(
    folder: Path, output: Path, model: list[str] = LITE0, workers: int = 2, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        "predict",
        *model,
        "--data.mode",
        "predict",
        "--data.predict_path",
        str(folder),
        "--data.batch_size",
        "64",
        "--data.num_workers",
        str(workers),
        "--writer.output_dir",
        str(output),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def throughput() -> list[Result]:
    """Our CPU predict (default precision, writer on) against timm's inference.py loop, and our top-1 agreement with
    its float32 predictions (the same pixels: our eval preprocessing equals timm's)."""
    import pandas as pd

    folder = sample_dir()
    count = len(list(folder.glob("*.JPEG")))
    ours = _ours(_predict_args(folder, WORK / "out_auto"))
    timm_seconds, timm_csv = timm_reference()
    auto = pd.read_csv(WORK / "out_auto" / "predictions.csv")
    exact = pd.read_csv(timm_csv).set_index("filename")["top0"]
    agreement = (auto["pred_index"].values == exact.loc[auto["path"].map(lambda p: Path(p).name)].values).mean()
    return [
        Result(
            "CPU predict, writer on (ours vs timm inference.py)",
            count / ours["seconds"],
            count / timm_seconds,
            "img/s",
            note=f"tf_efficientnet_lite0, {count} images, target >= 3.0; top-1 agreement with timm's float32 "
            f"{agreement * 100:.1f}% (target >= 99.5)",
        ),
    ]


def memory(small: int = 500, large: int = 5000) -> Result:
    peaks = {}
    for count in (small, large):
        folder = linked_copies(count)
        tiny = ["--model.model_name", "test_resnet", "--model.num_classes", "1000", "--model.image_size", "64"]
        peaks[count] = _ours(_predict_args(folder, WORK / f"out_mem{count}", model=tiny, workers=0))["peak_rss_mb"]
    return Result(
        f"predict peak RSS, {large} vs {small} images",
        peaks[large],
        peaks[small],
        "MB",
        higher_is_better=False,
        note=f"grows {peaks[large] - peaks[small]:+.1f} MB (target <= +50)",
    )


def run() -> list[Result]:
    return [*throughput(), memory()]
