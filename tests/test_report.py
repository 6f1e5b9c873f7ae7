"""The evaluation report: per-class CSV, confusion picture, gallery of the most confident mistakes."""

import json
import re

import cv2
import numpy as np
import pandas as pd

from imagenet_cls.callbacks.report import most_confused_pairs, per_class_rows
from imagenet_cls.cli import main
from tests.conftest import FAST_TRAINER, TINY_MODEL, make_class_folders, untrained_weights


def test_per_class_rows_and_most_confused_pairs_from_a_known_matrix():
    confusion = np.array([[8, 2, 0], [1, 9, 0], [0, 5, 5]])
    hits5 = np.array([10, 10, 9])
    rows = per_class_rows(confusion, hits5, ["cat", "dog", "fox"], ["n1", "n2", "n3"])
    assert [r["images"] for r in rows] == [10, 10, 10]
    assert [r["top1"] for r in rows] == [0.8, 0.9, 0.5] and rows[2]["top5"] == 0.9
    assert rows[2]["most_confused_with"] == "dog" and rows[2]["confused_count"] == 5
    pairs = most_confused_pairs(confusion, ["cat", "dog", "fox"], top=10)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("fox", "dog", 5),
        ("cat", "dog", 2),
        ("dog", "cat", 1),
    ]
    assert pairs[0]["share_of_true"] == 0.5


def test_validate_writes_the_report_for_many_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    classes = {f"n{i:08d}": tuple(int(c) for c in rng.integers(0, 256, 3)) for i in range(35)}
    root = tmp_path / "data"
    make_class_folders(root / "train", per_class=1, classes=classes)
    make_class_folders(root / "val", per_class=2, classes=classes)
    args = [
        "validate",
        *TINY_MODEL,
        *FAST_TRAINER,
        "--data.data_dir",
        str(root),
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "16",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        *untrained_weights(tmp_path, num_classes=35),
    ]
    assert main(args) == 0  # an untrained network: many mistakes
    val_acc = float(re.search(r"val_acc\s+│\s+([0-9.]+)", capsys.readouterr().out).group(1))
    (report,) = (tmp_path / "runs" / "validate").glob("*/report/val")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["images"] == 70 and abs(summary["top1"] - val_acc) < 1e-6
    rows = pd.read_csv(report / "per_class.csv")
    assert len(rows) == 35 and rows["images"].sum() == 70
    assert abs((rows["top1"] * rows["images"]).sum() / 70 - val_acc) < 1e-3
    pairs = pd.read_csv(report / "confused_pairs.csv")
    assert len(pairs) > 0 and list(pairs["count"]) == sorted(pairs["count"], reverse=True)
    assert not (report / "confusion_matrix.png").exists()  # 35 > max_matrix_classes: pairs instead
    assert cv2.imread(str(report / "confused_pairs.png")) is not None
    mistakes = round(70 * (1 - val_acc))
    gallery = cv2.imread(str(report / "misclassified.jpg"))
    rows_of_tiles = -(-min(16, mistakes) // 4)
    assert gallery.shape[0] == 56 + rows_of_tiles * (224 + 64)


def test_the_report_is_a_default_callback_that_can_be_dropped(class_folders, tmp_path):
    args = [
        "validate",
        *TINY_MODEL,
        *FAST_TRAINER,
        "--data.data_dir",
        str(class_folders),
        "--data.num_workers",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        *untrained_weights(tmp_path),
        "--trainer.callbacks",
        "[]",
    ]
    assert main(args) == 0
    assert not list((tmp_path / "runs").rglob("report"))
