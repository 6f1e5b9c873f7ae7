"""The evaluation report's numbers: per-class precision/recall/F1, macro averages, calibration, confused pairs.

From a confusion matrix and per-bin confidence sums: pure functions over NumPy/torch arrays, which
:class:`imagenet_cls.callbacks.report.EvaluationReport` collects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

CALIBRATION_BINS = 15  # torchmetrics' default for the expected calibration error


def precision_recall_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 (each (C,) float64; NaN where undefined: never predicted / no images)."""
    hits = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, hits / predicted, np.nan)
        recall = np.where(actual > 0, hits / actual, np.nan)
        f1 = np.where(predicted + actual > 0, 2 * hits / (predicted + actual), np.nan)
    return precision, recall, f1


def macro_averages(confusion: np.ndarray) -> dict[str, float | int]:
    """Macro precision, recall and F1, as scikit-learn's ``precision_recall_fscore_support`` gives them.

    That is ``average="macro", zero_division=0``: over the classes that occur as truth or as prediction, with
    undefined values (a class never predicted, a class without images) counted as 0.
    """
    precision, recall, f1 = precision_recall_f1(confusion)
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not present.any():
        return {"macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0, "macro_classes": 0}
    average = {name: float(np.nan_to_num(values[present]).mean()) for name, values in
               (("macro_precision", precision), ("macro_recall", recall), ("macro_f1", f1))}  # fmt: skip
    return {**average, "macro_classes": int(present.sum())}


def calibration_sums(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """(CALIBRATION_BINS + 1, 3) float64 sums per confidence bin: images, top-1 probabilities, correct top-1.

    ``confidence`` (N,) is each image's top-1 probability, ``correct`` (N,) whether that class is the true one.
    Bins as torchmetrics makes them: bin i holds [i / bins, (i + 1) / bins), and the last slot exactly 1.0.
    """
    confidence = confidence.double()
    bins = torch.linspace(0, 1, CALIBRATION_BINS + 1, dtype=torch.double)
    slot = torch.bucketize(confidence, bins, right=True) - 1
    sums = torch.zeros((CALIBRATION_BINS + 1, 3), dtype=torch.double)
    for column, values in enumerate((torch.ones_like(confidence), confidence, correct.double())):
        sums[:, column].index_add_(0, slot, values)
    return sums


def calibration_bins(calibration: np.ndarray) -> np.ndarray:
    """(bins, 3) float64 per confidence bin: images, mean top-1 probability, top-1 accuracy (0 where empty).

    The slot of probabilities exactly 1.0 (kept apart for the ECE, as torchmetrics does) joins the last bin.
    """
    counts = calibration[:CALIBRATION_BINS].copy()
    counts[-1] += calibration[CALIBRATION_BINS]
    images = counts[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.nan_to_num(counts[:, 1:] / images[:, None])
    return np.column_stack([images, means])


def expected_calibration_error(calibration: np.ndarray) -> float:
    """ECE: the image-weighted mean gap between accuracy and confidence over the confidence bins.

    torchmetrics' ``multiclass_calibration_error`` (15 bins, ``l1`` norm), from binned sums instead of every
    probability: ``calibration`` holds the (bins + 1, 3) sums of images, top-1 probabilities and correct top-1.
    Weighted by ``images_b / total``, bin b's gap ``|correct_b - confidence_b| / images_b`` sums to the expression
    below.
    """
    total = calibration[:, 0].sum()
    return float(np.abs(calibration[:, 2] - calibration[:, 1]).sum() / total) if total else 0.0


def per_class_rows(
    confusion: np.ndarray, top5_hits: np.ndarray, names: list[str], folders: list[str]
) -> list[dict[str, Any]]:
    """One row per class: images, top-1, top-5, precision, recall, F1 and the class most often predicted instead.

    Precision is empty for a class never predicted; recall and F1 for a class without images.
    """
    precision, recall, f1 = precision_recall_f1(confusion)
    rows = []
    for index, counts in enumerate(confusion):
        images = int(counts.sum())
        others = counts.copy()
        others[index] = 0
        confused = int(others.argmax()) if others.any() else None
        rows.append(
            {
                "index": index,
                "folder": folders[index] if index < len(folders) else str(index),
                "name": names[index],
                "images": images,
                "top1": round(counts[index] / images, 4) if images else "",
                "top5": round(top5_hits[index] / images, 4) if images else "",
                "precision": _rounded(precision[index]),
                "recall": _rounded(recall[index]),
                "f1": _rounded(f1[index]) if images else "",
                "most_confused_with": names[confused] if confused is not None else "",
                "confused_count": int(others[confused]) if confused is not None else 0,
            }
        )
    return rows


def most_confused_pairs(confusion: np.ndarray, names: list[str], top: int) -> list[dict[str, Any]]:
    """The ``top`` (true, predicted) pairs with the most mistakes, with their share of the true class."""
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    flat = np.argsort(off_diagonal, axis=None)[::-1][:top]
    pairs = []
    for true, predicted in zip(*np.unravel_index(flat, confusion.shape), strict=True):
        count = int(off_diagonal[true, predicted])
        if count == 0:
            break
        images = int(confusion[true].sum())
        pairs.append(
            {
                "true": names[true],
                "predicted": names[predicted],
                "count": count,
                "share_of_true": round(count / images, 4) if images else 0.0,
            }
        )
    return pairs


def _rounded(value: float) -> float | str:
    return "" if np.isnan(value) else round(float(value), 4)
