"""EvaluationReport: per-class metrics, calibration, a confusion picture and the worst mistakes, after evaluation.

Written after validate, test and fit; the mistakes also with their class-activation maps.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from imagenet_cls.callbacks.report_metrics import (  # noqa: F401 (old import paths of the pure functions)
    CALIBRATION_BINS,
    _rounded,
    calibration_bins,
    calibration_sums,
    expected_calibration_error,
    macro_averages,
    most_confused_pairs,
    per_class_rows,
    precision_recall_f1,
)
from imagenet_cls.data.loaders import evaluation_share

log = logging.getLogger(__name__)


@dataclass
class _Tally:
    """What one evaluation epoch saw: confusion counts, top-k hits per class, and the most confident mistakes."""

    confusion: torch.Tensor  # (C, C) int64, rows true, columns predicted
    top5_hits: torch.Tensor  # (C,) int64
    # (CALIBRATION_BINS + 1, 3) float64 per confidence bin: images, sum of top-1 probabilities, correct top-1
    calibration: torch.Tensor = field(
        default_factory=lambda: torch.zeros((CALIBRATION_BINS + 1, 3), dtype=torch.double)
    )
    mistakes: torch.Tensor = field(default_factory=lambda: torch.empty((0, 4)))  # (prob, index, true, predicted)
    position: int = 0  # samples of this rank's loader seen so far (skipped files included)


class EvaluationReport(Callback):
    """Writes an evaluation report after ``validate`` and ``test``, and for the last validation of ``fit``.

    Files, in ``<run folder>/report/<val|test>/``: ``per_class.csv`` (images, top-1, top-5, precision, recall,
    F1 and the class most often predicted instead, per class), ``confusion_matrix.png`` (a heat map, up to
    ``max_matrix_classes`` classes) or ``confused_pairs.png`` + ``confused_pairs.csv`` (the most-confused pairs,
    for more classes), ``reliability_diagram.png`` (accuracy against confidence, with the expected calibration
    error), ``misclassified.jpg`` (the most confident mistakes with true and predicted label and probability),
    ``misclassified_cam.jpg`` (the same mistakes as the model saw them, with a Grad-CAM heat map of the predicted
    class) and ``summary.json`` (top-1, top-5, ECE, macro precision, recall and F1). With the W&B logger, the
    pictures and the per-class table are logged too.

    Args:
        gallery_size: Number of misclassified images in the gallery.
        max_matrix_classes: Largest number of classes drawn as a full confusion matrix.
        top_pairs: Number of most-confused class pairs listed for larger class sets.
        cam: Also draw the gallery with class-activation heat maps (``misclassified_cam.jpg``).
    """

    def __init__(
        self, gallery_size: int = 16, max_matrix_classes: int = 30, top_pairs: int = 25, cam: bool = True
    ) -> None:
        self.gallery_size = gallery_size
        self.max_matrix_classes = max_matrix_classes
        self.top_pairs = top_pairs
        self.cam = cam
        self._tally: _Tally | None = None
        self._pending_fit_report: dict[str, Any] | None = None

    # ---- collecting ------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._collect(trainer, outputs, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, outputs, batch, "test")

    def _start(self, pl_module: LightningModule) -> None:
        classes = pl_module.hparams.num_classes
        self._tally = _Tally(torch.zeros((classes, classes), dtype=torch.long), torch.zeros(classes, dtype=torch.long))

    def _collect(self, trainer: Trainer, outputs: Any, batch: Any, split: str) -> None:
        tally = self._tally
        if tally is None or not isinstance(outputs, dict) or "logits" not in outputs:
            return
        targets = batch.targets.cpu()
        skipped = set(batch.skipped)
        count = len(targets) + len(skipped)
        dataset = trainer.datamodule.datasets[split]
        # Evaluation loaders are not shuffled: position p of rank r is sample p of r's contiguous share of the split
        # (the data module's EvalSampler, which never repeats a sample; one process: p).
        share = evaluation_share(len(dataset), trainer.world_size, trainer.global_rank)
        indices = torch.tensor(share[tally.position : tally.position + count], dtype=torch.long)
        tally.position += count
        if skipped:
            keep = [i for i in indices.tolist() if dataset.describe(i) not in skipped]
            indices = torch.tensor(keep[: len(targets)], dtype=torch.long)
        if not len(targets):
            return
        probs = outputs["logits"].float().softmax(dim=-1).cpu()
        top = probs.topk(min(5, probs.shape[1]), dim=-1)
        predicted = top.indices[:, 0]
        tally.confusion.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
        tally.calibration += calibration_sums(top.values[:, 0], predicted == targets)
        hits5 = (top.indices == targets[:, None]).any(dim=-1)
        tally.top5_hits += torch.bincount(targets[hits5], minlength=len(tally.top5_hits))
        wrong = predicted != targets
        candidates = torch.stack(
            [top.values[:, 0], indices.double(), targets.double(), predicted.double()], dim=1
        ).double()[wrong]
        mistakes = torch.cat([tally.mistakes.double(), candidates])
        tally.mistakes = mistakes[mistakes[:, 0].argsort(descending=True)[: self.gallery_size]]

    # ---- writing ---------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._tally is None:
            return
        gathered = self._gather(pl_module)
        if trainer.state.fn == "fit":  # the report of fit is the last validation's, written when fit ends
            self._pending_fit_report = gathered
        else:
            self._write(trainer, pl_module, "val", gathered)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._tally is not None:
            self._write(trainer, pl_module, "test", self._gather(pl_module))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending_fit_report is not None:
            self._write(trainer, pl_module, "val", self._pending_fit_report)
            self._pending_fit_report = None

    def _gather(self, pl_module: LightningModule) -> dict[str, Any]:
        """Sum the counts over processes and keep the most confident mistakes of all of them."""
        tally = self._tally
        self._tally = None
        padded = torch.full((self.gallery_size, 4), -1.0, dtype=torch.double)
        padded[: len(tally.mistakes)] = tally.mistakes
        confusion, hits5, mistakes, calibration = (
            pl_module.all_gather(t.to(pl_module.device)).cpu()
            for t in (tally.confusion, tally.top5_hits, padded, tally.calibration)
        )
        if confusion.ndim == 3:  # (world, ...) under DDP
            confusion, hits5, mistakes = confusion.sum(0), hits5.sum(0), mistakes.flatten(0, 1)
            calibration = calibration.sum(0)
        mistakes = mistakes[mistakes[:, 0] >= 0]
        mistakes = mistakes[mistakes[:, 0].argsort(descending=True)[: self.gallery_size]]
        return {
            "confusion": confusion.numpy(),
            "top5_hits": hits5.numpy(),
            "mistakes": mistakes.numpy(),
            "calibration": calibration.numpy(),
        }

    def _write(self, trainer: Trainer, pl_module: LightningModule, split: str, gathered: dict[str, Any]) -> None:
        # Long on purpose: the report's files one after another, in the order the README lists them.
        if not trainer.is_global_zero:
            return
        from imagenet_cls.callbacks import report_drawing as drawing
        from imagenet_cls.callbacks.annotate import display_name

        folder = _report_folder(trainer, split) / split
        folder.mkdir(parents=True, exist_ok=True)
        names = list(pl_module.hparams.class_names or pl_module.hparams.classes or [])
        confusion, hits5 = gathered["confusion"], gathered["top5_hits"]
        names += [str(i) for i in range(len(names), len(confusion))]
        rows = per_class_rows(confusion, hits5, names, list(pl_module.hparams.classes or names))
        _write_csv(folder / "per_class.csv", rows)
        files = {"per_class": folder / "per_class.csv"}
        total = int(confusion.sum())
        top1 = float(np.trace(confusion) / total) if total else 0.0
        top5 = float(hits5.sum() / total) if total else 0.0
        title = f"{split}: top-1 {top1:.4f}, top-5 {top5:.4f} over {total} images"
        shown = [display_name(name) for name in names]  # pictures: academic gown; CSV files: academic_gown
        if len(confusion) <= self.max_matrix_classes:
            files["confusion"] = drawing.write_confusion_matrix(
                folder / "confusion_matrix.png", confusion, shown, title
            )
        else:
            pairs = most_confused_pairs(confusion, names, self.top_pairs)
            _write_csv(folder / "confused_pairs.csv", pairs)
            shown_pairs = [
                {**p, "true": display_name(p["true"]), "predicted": display_name(p["predicted"])} for p in pairs
            ]
            files["confused_pairs"] = drawing.write_confused_pairs(folder / "confused_pairs.png", shown_pairs, title)
        calibration = calibration_bins(gathered["calibration"])
        ece = expected_calibration_error(gathered["calibration"])
        files["reliability"] = drawing.write_reliability_diagram(
            folder / "reliability_diagram.png", calibration, ece, title
        )
        dataset = trainer.datamodule.datasets[split]
        mistakes = gathered["mistakes"]
        indices = {dataset.describe(int(index)): int(index) for index in mistakes[:, 1]}
        gallery = [
            (dataset.describe(int(index)), shown[int(true)], shown[int(predicted)], float(prob))
            for prob, index, true, predicted in mistakes
        ]
        if gallery:  # images read through the dataset: files, or items of an optimized dataset
            files["misclassified"] = drawing.write_gallery(
                folder / "misclassified.jpg", gallery, title, open_image=lambda name: dataset.rgb(indices[name])
            )
            if self.cam:
                pictures = _cam_pictures(pl_module, dataset, mistakes)
                if pictures is not None:
                    files["misclassified_cam"] = drawing.write_gallery(
                        folder / "misclassified_cam.jpg", gallery, title, pictures=pictures
                    )
        summary = {"split": split, "images": total, "top1": top1, "top5": top5, "epoch": trainer.current_epoch}
        summary["ece"] = ece
        summary["calibration_bins"] = CALIBRATION_BINS
        summary.update(macro_averages(confusion))
        summary["files"] = {key: path.name for key, path in files.items()}
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("%s report: %s", split, folder)
        _log_to_wandb(trainer, split, files, rows)


def _cam_pictures(pl_module: LightningModule, dataset: Any, mistakes: np.ndarray) -> list[np.ndarray] | None:
    """The gallery's images as the model saw them (its input crop), with a Grad-CAM map of the predicted class.

    None (and a warning) when the model cannot be explained or an image cannot be read again.
    """
    from imagenet_cls.callbacks.cam import ClassActivationMaps, overlay

    try:
        inputs = [dataset[int(index)] for index in mistakes[:, 1]]
        if any(not isinstance(item, tuple) for item in inputs):  # a file that cannot be read now
            return None
        images = torch.stack([item[0] for item in inputs])  # (N, 3, H, W) uint8
        heat = ClassActivationMaps.for_module(pl_module)(images, mistakes[:, 3].astype(int).tolist())
    except Exception as error:  # the report must never fail because of an explanation  # noqa: BLE001
        log.warning("report: no class-activation maps for the gallery (%s: %s)", type(error).__name__, error)
        return None
    return [overlay(image.permute(1, 2, 0).numpy(), map_) for image, map_ in zip(images, heat, strict=True)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from imagenet_cls.callbacks.writer import spreadsheet_safe

    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        if rows:
            writer.writerow(rows[0].keys())
        for row in rows:
            writer.writerow([spreadsheet_safe(value) for value in row.values()])


def _report_folder(trainer: Trainer, split: str) -> Path:
    """``<run folder>/report``."""
    from imagenet_cls.runs.folders import run_folder

    return run_folder(trainer, trainer.state.fn) / "report"  # fit's validation reports into the fit's folder


def _log_to_wandb(trainer: Trainer, split: str, files: dict[str, Path], rows: list[dict[str, Any]]) -> None:
    for logger in trainer.loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        pictures = {key: path for key, path in files.items() if path.suffix in (".png", ".jpg")}
        for key, path in pictures.items():
            logger.log_image(key=f"report/{split}/{key}", images=[str(path)])
        if rows:  # an undefined metric ("" in the CSV: a class without images) is None to W&B's typed columns
            data = [[None if value == "" else value for value in row.values()] for row in rows]
            logger.log_table(key=f"report/{split}/per_class", columns=list(rows[0]), data=data)
