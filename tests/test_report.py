"""The evaluation report: per-class CSV, confusion picture, gallery of the most confident mistakes."""

import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest

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


def test_precision_recall_f1_and_macro_averages_match_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    from imagenet_cls.callbacks.report import macro_averages, precision_recall_f1

    # class 2 is never predicted, class 3 has no images but is predicted, class 4 occurs nowhere
    confusion = np.array([[5, 1, 0, 2, 0], [2, 6, 0, 0, 0], [1, 3, 0, 1, 0], [0] * 5, [0] * 5])
    truth = np.repeat(np.arange(5), confusion.sum(axis=1))
    predicted = np.concatenate([np.repeat(np.arange(5), row) for row in confusion])
    precision, recall, f1 = precision_recall_f1(confusion)
    expected = precision_recall_fscore_support(truth, predicted, labels=range(5), zero_division=0)
    for ours, theirs in zip((precision, recall, f1), expected[:3], strict=True):
        np.testing.assert_allclose(np.nan_to_num(ours), theirs)
    assert np.isnan(precision[2]) and np.isnan(recall[3]) and np.isnan(f1[4])  # undefined, not 0, in the CSV
    macro = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    averages = macro_averages(confusion)
    assert averages["macro_classes"] == 4
    np.testing.assert_allclose([averages[f"macro_{k}"] for k in ("precision", "recall", "f1")], macro[:3])
    rows = per_class_rows(confusion, confusion.sum(axis=1), list("abcde"), list("abcde"))
    assert rows[0]["precision"] == round(5 / 8, 4) and rows[2]["precision"] == "" and rows[3]["recall"] == ""


def test_expected_calibration_error_matches_torchmetrics():
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    from imagenet_cls.callbacks.report import calibration_bins, calibration_sums, expected_calibration_error

    torch.manual_seed(0)
    logits = torch.randn(600, 10) * torch.linspace(0.1, 8, 600)[:, None]
    logits[:50, 3] = 200.0  # probability exactly 1.0 in float32: torchmetrics keeps it in a bin of its own
    targets = torch.randint(0, 10, (600,))
    targets[:40] = 3
    probs = logits.softmax(dim=-1)
    top = probs.max(dim=-1)
    sums = sum(  # batch by batch, as the report collects them
        calibration_sums(top.values[i : i + 64], top.indices[i : i + 64] == targets[i : i + 64])
        for i in range(0, 600, 64)
    )
    expected = multiclass_calibration_error(probs, targets, num_classes=10, n_bins=15, norm="l1")
    assert expected_calibration_error(sums.numpy()) == pytest.approx(float(expected), abs=1e-6)
    bins = calibration_bins(sums.numpy())
    assert bins.shape == (15, 3) and bins[:, 0].sum() == 600 and bins[-1, 0] >= 50
    assert ((bins[:, 1] >= np.arange(15) / 15) | (bins[:, 0] == 0)).all()  # mean confidence within its bin


def test_validate_report_adds_calibration_metrics_cam_and_names_with_spaces(tmp_path, monkeypatch):
    from imagenet_cls.callbacks import report_drawing

    shown = {}
    for name in ("write_confusion_matrix", "write_gallery"):
        original = getattr(report_drawing, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            shown.setdefault(_name, []).append(args[1] if _name == "write_gallery" else args[2])
            return _original(*args, **kwargs)

        monkeypatch.setattr(report_drawing, name, spy)
    classes = {"n00000001": (220, 40, 40), "n00000002": (40, 200, 40), "n00000003": (40, 40, 220)}
    root = tmp_path / "data"
    make_class_folders(root / "train", per_class=1, classes=classes)
    make_class_folders(root / "val", per_class=4, classes=classes)
    names = tmp_path / "names.txt"
    names.write_text("n00000001 0 academic_gown\nn00000002 1 great_white_shark\nn00000003 2 red_wine\n")
    args = ["validate", *TINY_MODEL, *FAST_TRAINER, "--data.data_dir", str(root), "--data.num_workers", "0"]
    args += untrained_weights(tmp_path)
    assert main([*args, "--data.class_map", str(names), "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    (report,) = (tmp_path / "runs" / "validate").glob("*/report/val")
    summary = json.loads((report / "summary.json").read_text())
    assert 0 <= summary["ece"] <= 1 and summary["calibration_bins"] == 15
    rows = pd.read_csv(report / "per_class.csv", keep_default_na=False)
    assert list(rows["name"]) == ["academic_gown", "great_white_shark", "red_wine"]  # the class map's spelling
    assert {"precision", "recall", "f1"} <= set(rows.columns)
    assert summary["macro_recall"] == pytest.approx(rows["recall"].astype(float).mean(), abs=1e-4)
    assert summary["files"]["reliability"] == "reliability_diagram.png"
    diagram = cv2.imread(str(report / "reliability_diagram.png"))
    assert diagram is not None and diagram.shape[0] > 500
    assert shown["write_confusion_matrix"] == [["academic gown", "great white shark", "red wine"]]
    gallery = [caption for mistakes in shown["write_gallery"] for (_, *caption, _) in mistakes]
    assert gallery and all("_" not in name for pair in gallery for name in pair)
    if summary["top1"] < 1:  # mistakes: the gallery and its class-activation twin, tile for tile
        plain, cam = (cv2.imread(str(report / f"{n}.jpg")) for n in ("misclassified", "misclassified_cam"))
        assert plain.shape == cam.shape and summary["files"]["misclassified_cam"] == "misclassified_cam.jpg"
