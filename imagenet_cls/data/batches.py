"""The batches the data module yields and the model, writer and report read: named, never bare tuples."""

from __future__ import annotations

from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
from torch.utils.data import default_collate


class BadSample(NamedTuple):
    """A file skipped because it could not be decoded (``--data.skip_bad_images``)."""

    path: str
    error: str


class LabeledBatch(NamedTuple):
    """A train/val/test batch."""

    images: torch.Tensor  # (B, 3, H, W) uint8; normalised by the model on its device
    targets: torch.Tensor  # (B,) int64 class indices
    skipped: list[str]  # paths of undecodable files left out of this batch (skip_bad_images)


class PredictBatch(TypedDict):
    """A predict batch: the model input, and per file its index, path, output path, display copy and error."""

    image: torch.Tensor  # (B, 3, H, W) uint8
    index: list[int]  # position in the input list
    path: list[str]
    relative: list[str]  # output path under the run's images/ folder (mirrors the input tree)
    display: list[np.ndarray | None]  # RGB uint8 (H, W, 3) within the display size; None for a failed file
    error: list[str]  # "" when the file decoded


def collate_labeled(items: list[tuple[torch.Tensor, int] | BadSample]) -> LabeledBatch:
    """A :class:`LabeledBatch`; an all-bad batch has empty images and targets."""
    good = [item for item in items if not isinstance(item, BadSample)]
    skipped = [item.path for item in items if isinstance(item, BadSample)]
    if not good:
        return LabeledBatch(torch.empty((0, 3, 1, 1), dtype=torch.uint8), torch.empty((0,), dtype=torch.long), skipped)
    images, targets = default_collate(good)
    return LabeledBatch(images, targets, skipped)


def collate_predict(items: list[dict[str, Any]]) -> PredictBatch:
    """Stack the model inputs; keep paths, display images and errors as lists (they differ in size)."""
    batch = {key: [item[key] for item in items] for key in ("index", "path", "relative", "display", "error")}
    return PredictBatch(image=torch.stack([item["image"] for item in items]), **batch)
