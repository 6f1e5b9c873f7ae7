"""A 1000-class ImageNet model evaluated on 13 of its classes, on real sample images (slow; skipped without them)."""

import os
from pathlib import Path

import pandas as pd
import pytest

from bench.common import REPO, sample_dir
from imagenet_cls.cli import ImageNetCLI, main

SAMPLE = sample_dir()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SAMPLE is None, reason="../shared/data/imagenet-sample is absent")]
LITE0 = ["--config", str(REPO / "config" / "efficientnet_lite0.yaml"), "--trainer.enable_progress_bar", "false"]


def _thirteen_classes(root: Path) -> Path:
    """``val/<wnid>/<file>`` for the first 13 wnids of the sample, hard-linked (nothing copied)."""
    for image in sorted(SAMPLE.glob("*.JPEG"))[:13]:
        folder = root / "val" / image.name.split("_")[0]
        folder.mkdir(parents=True)
        os.link(image, folder / image.name)
    return root


def test_a_subset_keeps_the_models_classes_and_class_subset_restricts_them(tmp_path):
    data = _thirteen_classes(tmp_path / "subset")
    out = tmp_path / "predictions"
    predict = [*LITE0, "--data.predict_path", str(data / "val"), "--writer.output_dir", str(out)]
    assert main(["predict", *predict, "--writer.write_images", "false"]) == 0
    rows = pd.read_csv(out / "predictions.csv")
    truth = rows["path"].map(lambda p: Path(p).parent.name)
    top1_1000 = float((rows["pred_folder"] == truth).mean())  # per-image predictions over all 1000 classes

    evaluate = ["validate", *LITE0, "--data.data_dir", str(data), "--data.num_workers", "0"]
    off = ImageNetCLI(args=evaluate)
    assert off.model.hparams.num_classes == 1000  # pretrained head kept, not re-initialised for 13 classes
    assert off.trainer.callback_metrics["val_images"] == 13
    assert abs(float(off.trainer.callback_metrics["val_acc"]) - top1_1000) < 1e-6  # the same per-image choices
    on = ImageNetCLI(args=[*evaluate, "--data.class_subset", "true"])
    assert float(on.trainer.callback_metrics["val_acc"]) >= top1_1000
