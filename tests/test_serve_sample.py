"""Serving the offline EfficientNet-Lite0 answers the 1000 sample images as predict does (skipped without them)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests

from bench.common import REPO, sample_dir
from bench.serving import Server
from imagenet_cls.cli import main

SAMPLE = sample_dir()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SAMPLE is None, reason="../shared/data/imagenet-sample is absent")]
LITE0 = str(REPO / "config" / "efficientnet_lite0.yaml")


def _post(url: str, paths: list[Path]) -> list[dict]:
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    answer = requests.post(f"{url}/predict?top_k=1", files=files, timeout=300)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_served_lite0_top1_on_the_sample_equals_predict(tmp_path):
    paths = sorted(SAMPLE.glob("*.JPEG"))
    assert len(paths) == 1000
    server = Server(
        ["--config", LITE0, "--max_batch_size", "8"],
        tmp_path / "serve.log",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    try:
        chunks = [paths[i : i + 10] for i in range(0, len(paths), 10)]  # 10 images a request, 4 in flight
        with ThreadPoolExecutor(4) as pool:
            served = [p for part in pool.map(lambda chunk: _post(server.url, chunk), chunks) for p in part]
    finally:
        assert server.stop() == 0
    served_top = {p["image"]: p["top_k"][0] for p in served}
    assert len(served_top) == 1000
    served_top1 = sum(top["folder"] == name.split("_")[0] for name, top in served_top.items()) / 1000
    out = tmp_path / "predict"
    args = ["predict", "--config", LITE0, "--data.predict_path", str(SAMPLE), "--writer.output_dir", str(out)]
    assert main([*args, "--writer.write_images", "false", "--trainer.enable_progress_bar", "false"]) == 0
    rows = pd.read_csv(out / "predictions.csv")
    rows["name"] = rows["path"].map(lambda p: Path(p).name)
    predict_top1 = float((rows["pred_folder"] == rows["name"].str.split("_").str[0]).mean())
    same = sum(served_top[row.name]["index"] == row.pred_index for row in rows.itertuples())
    gaps = [abs(served_top[row.name]["probability"] - row.prob) for row in rows.itertuples()]
    print(f"served top-1 {served_top1:.3f}, predict top-1 {predict_top1:.3f}, same top-1 class {same}/1000")
    assert served_top1 == predict_top1 == 0.883  # validate's val_acc of this model on these images
    assert same == 1000 and max(gaps) < 1e-5
