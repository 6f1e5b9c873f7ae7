"""EvaluationReport: per-class accuracy, a confusion picture and the worst mistakes, after validate, test and fit."""

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

log = logging.getLogger(__name__)


@dataclass
class _Tally:
    """What one evaluation epoch saw: confusion counts, top-k hits per class, and the most confident mistakes."""

    confusion: torch.Tensor  # (C, C) int64, rows true, columns predicted
    top5_hits: torch.Tensor  # (C,) int64
    mistakes: torch.Tensor = field(default_factory=lambda: torch.empty((0, 4)))  # (prob, index, true, predicted)
    position: int = 0  # samples of this rank's loader seen so far (skipped files included)


class EvaluationReport(Callback):
    """Writes an evaluation report after ``validate`` and ``test``, and for the last validation of ``fit``.

    Files, in ``<run folder>/report/<val|test>/``: ``per_class.csv`` (images, top-1, top-5 and the class most
    often predicted instead, per class), ``confusion_matrix.png`` (a heat map, up to ``max_matrix_classes``
    classes) or ``confused_pairs.png`` + ``confused_pairs.csv`` (the most-confused pairs, for more classes),
    ``misclassified.jpg`` (the most confident mistakes with true and predicted label and probability) and
    ``summary.json``. With the W&B logger, the pictures and the per-class table are logged too.

    Args:
        gallery_size: Number of misclassified images in the gallery.
        max_matrix_classes: Largest number of classes drawn as a full confusion matrix.
        top_pairs: Number of most-confused class pairs listed for larger class sets.
    """

    def __init__(self, gallery_size: int = 16, max_matrix_classes: int = 30, top_pairs: int = 25) -> None:
        self.gallery_size = gallery_size
        self.max_matrix_classes = max_matrix_classes
        self.top_pairs = top_pairs
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
        # Evaluation loaders are not shuffled: position p of rank r is sample (r + p * world) of the split
        # (Lightning's DistributedSampler with shuffle off; one process: p).
        positions = torch.arange(tally.position, tally.position + count)
        indices = (trainer.global_rank + positions * trainer.world_size) % len(dataset)
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
        confusion, hits5, mistakes = (
            pl_module.all_gather(t.to(pl_module.device)).cpu() for t in (tally.confusion, tally.top5_hits, padded)
        )
        if confusion.ndim == 3:  # (world, ...) under DDP
            confusion, hits5, mistakes = confusion.sum(0), hits5.sum(0), mistakes.flatten(0, 1)
        mistakes = mistakes[mistakes[:, 0] >= 0]
        mistakes = mistakes[mistakes[:, 0].argsort(descending=True)[: self.gallery_size]]
        return {"confusion": confusion.numpy(), "top5_hits": hits5.numpy(), "mistakes": mistakes.numpy()}

    def _write(self, trainer: Trainer, pl_module: LightningModule, split: str, gathered: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        from imagenet_cls.callbacks import report_drawing as drawing

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
        if len(confusion) <= self.max_matrix_classes:
            files["confusion"] = drawing.write_confusion_matrix(
                folder / "confusion_matrix.png", confusion, names, title
            )
        else:
            pairs = most_confused_pairs(confusion, names, self.top_pairs)
            _write_csv(folder / "confused_pairs.csv", pairs)
            files["confused_pairs"] = drawing.write_confused_pairs(folder / "confused_pairs.png", pairs, title)
        dataset = trainer.datamodule.datasets[split]
        indices = {dataset.describe(int(index)): int(index) for index in gathered["mistakes"][:, 1]}
        gallery = [
            (dataset.describe(int(index)), names[int(true)], names[int(predicted)], float(prob))
            for prob, index, true, predicted in gathered["mistakes"]
        ]
        if gallery:  # images read through the dataset: files, or items of an optimized dataset
            files["misclassified"] = drawing.write_gallery(
                folder / "misclassified.jpg", gallery, title, open_image=lambda name: dataset.rgb(indices[name])
            )
        summary = {"split": split, "images": total, "top1": top1, "top5": top5, "epoch": trainer.current_epoch}
        summary["files"] = {key: path.name for key, path in files.items()}
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("%s report: %s", split, folder)
        _log_to_wandb(trainer, split, files, rows)


def per_class_rows(
    confusion: np.ndarray, top5_hits: np.ndarray, names: list[str], folders: list[str]
) -> list[dict[str, Any]]:
    """One row per class: images, top-1 and top-5 accuracy, and the class most often predicted instead."""
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
        if rows:
            logger.log_table(
                key=f"report/{split}/per_class", columns=list(rows[0]), data=[list(r.values()) for r in rows]
            )
