"""The metrics the model logs: their names (the only ones callbacks may monitor) and their torchmetrics objects."""

from __future__ import annotations

from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

EVALUATED_METRICS = ("loss", "acc", "acc5", "images")  # per stage: val_acc, test_images, ...
# Every metric the model logs; callbacks may only monitor these (checked by the CLI).
LOGGED_METRICS = (
    "train_loss",
    "train_acc",
    *(f"{stage}_{name}" for stage in ("val", "test") for name in EVALUATED_METRICS),
)


def create_metrics(num_classes: int) -> dict[str, Metric]:
    """The model's metric objects by attribute name: top-1/top-5 accuracy per stage and exact mean losses.

    The losses are sums of per-image losses over their count, over all processes (Lightning's own mean of a logged
    loss floors the image count it divides by under DDP: 13 images on 2 processes are divided by 12).
    """
    top5 = min(5, num_classes)
    return {
        "train_acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "val_acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "val_acc5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
        "test_acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "test_acc5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
        "val_loss_mean": MeanMetric(),
        "test_loss_mean": MeanMetric(),
    }
