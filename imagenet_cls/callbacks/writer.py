"""PredictionWriter: annotated copies of the predicted images and a CSV of the predictions, batch by batch."""

from __future__ import annotations

import csv
import heapq
import json
import logging
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from imagenet_cls.errors import UserError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class PredictionWriter(BasePredictionWriter):
    """Writes, for every predicted image, an annotated copy and a row of ``predictions.csv``.

    Annotated copies mirror the input tree under ``output_dir``, fit within 800x600 and carry the predicted
    class index, name and probability. Rows are appended per batch to a partial file per rank, which becomes
    ``predictions.csv`` (rows in input order) only when the run completes. Nothing is kept in memory.

    Args:
        output_dir: Where to write; default ``<trainer.default_root_dir>/predictions/<date-time>``.
        top_k: Number of top classes written to the CSV (columns ``top<i>_index/_folder/_name/_prob``).
        draw_top_k: Number of top classes drawn on each image.
        write_images: Write annotated images (the CSV is always written).
        write_json: Also write ``predictions.json`` (records).
        threshold: Below this top-1 probability the predicted name is ``unknown``.
        show: Show each annotated image in an OpenCV window (press a key for the next); only where a display
            exists, otherwise a warning.
        cam: Draw a class-activation heat map (Grad-CAM) of the predicted class over the part of each annotated
            image the model saw (its centre crop); costs a backward pass per batch.
    """

    def __init__(
        self,
        output_dir: Path | None = None,
        top_k: int = 5,
        draw_top_k: int = 1,
        write_images: bool = True,
        write_json: bool = False,
        threshold: float = 0.0,
        show: bool = False,
        cam: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.top_k = top_k
        self.draw_top_k = draw_top_k
        self.write_images = write_images
        self.write_json = write_json
        self.threshold = threshold
        self.show = show
        self.cam = cam
        self._rows_file = None
        self._csv = None
        self._counts = {"images": 0, "errors": 0}
        self._failed: list[str] = []
        self.seconds = 0.0

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self.class_folders, self.class_names = _class_lists(pl_module)
        if self.show and not _display_available():
            log.warning("PredictionWriter(show=True): no display found; writing files only")
            self.show = False

    def prediction_folder(self) -> Path | None:
        """``output_dir`` as given (the run folder decides the default): see ``runs.folders.PredictionOutput``."""
        return self.output_dir

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from imagenet_cls.runs.folders import run_folder

        self.run_dir = run_folder(trainer, "predict")  # decided by RunFolder.setup, the same on every rank
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._started = time.perf_counter()
        self._counts = {"images": 0, "errors": 0}
        self._failed = []
        self._rows_file = open(self._part_path(trainer.global_rank), "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._rows_file)
        self._csv.writerow(["index", *self.columns()])
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="annotate")
        self._pending: list[Future] = []
        if self.cam and self.write_images:
            from imagenet_cls.callbacks.cam import ClassActivationMaps
            from imagenet_cls.data.transforms import create_eval_transform

            self._cams = ClassActivationMaps.for_module(pl_module)
            self._transform = create_eval_transform(pl_module.data_config)  # the crop the model saw

    def columns(self) -> list[str]:
        """The CSV columns (after the internal ``index``)."""
        top = [f"top{i}_{field}" for i in range(1, self.top_k + 1) for field in ("index", "folder", "name", "prob")]
        return ["path", "output", "pred_index", "pred_folder", "pred_name", "prob", *top, "error"]

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: torch.Tensor,
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        k = max(self.top_k, self.draw_top_k, 1)
        probs, indices = prediction.float().topk(min(k, prediction.shape[-1]), dim=-1)
        probs, indices = probs.cpu().tolist(), indices.cpu().tolist()
        heat = self._heat_maps(batch, indices) if self.cam and self.write_images else {}
        for i, path in enumerate(batch["path"]):
            self._counts["images"] += 1
            error = batch["error"][i]
            if error:
                self._counts["errors"] += 1
                self._failed.append(path)
                self._csv.writerow(
                    [
                        batch["index"][i],
                        *_safe([path, "", "", "", "", ""]),
                        *[""] * 4 * self.top_k,
                        spreadsheet_safe(error),
                    ]
                )
                continue
            top = list(zip(indices[i], probs[i]))
            label = self._label(*top[0])
            output = ""
            if self.write_images:
                if batch["display"][i] is None:
                    raise UserError("PredictionWriter(write_images=True) got no display copy: call set_display(True)")
                output = self._write_image(batch["relative"][i], batch["display"][i], top, heat.get(i))
            cells = [path, output, top[0][0], self.class_folders[top[0][0]], label, f"{top[0][1]:.6f}"]
            for rank in range(self.top_k):
                if rank < len(top):
                    index, prob = top[rank]
                    cells += [index, self.class_folders[index], self.class_names[index], f"{prob:.6f}"]
                else:
                    cells += ["", "", "", ""]
            self._csv.writerow([batch["index"][i], *_safe(cells), ""])
        self._rows_file.flush()
        self._wait_for_images(keep=len(batch["path"]))  # at most about one batch in flight

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._wait_for_images()
        self._encoder.shutdown()
        self._rows_file.close()
        self.seconds = time.perf_counter() - self._started
        counts = torch.tensor([self._counts["images"], self._counts["errors"]])
        counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu().tolist()
        trainer.strategy.barrier("predictions_written")
        if trainer.is_global_zero:
            csv_path = self._merge_parts(trainer.world_size)
            images, errors = int(counts[0]), int(counts[1])
            log.info(
                "predict: %d images in %.1f s (%.1f img/s), %d failed; CSV %s%s",
                images,
                self.seconds,
                images / max(self.seconds, 1e-9),
                errors,
                csv_path,
                f"; annotated images under {self.run_dir}" if self.write_images else "",
            )
            if errors:
                log.warning("predict: files that could not be read: %s", ", ".join(self._failed[:10]))
            if images and errors == images:
                raise UserError(
                    f"predict: none of the {images} files could be read (see the error column of {csv_path})"
                )
        trainer.strategy.barrier("predictions_merged")

    # ---- helpers --------------------------------------------------------------------------------------------
    def _label(self, index: int, prob: float) -> str:
        return "unknown" if prob < self.threshold else self.class_names[index]

    def _heat_maps(self, batch: dict[str, Any], indices: list[list[int]]) -> dict[int, np.ndarray]:
        """Grad-CAM maps of the predicted classes, by position in the batch (readable images only)."""
        readable = [i for i, error in enumerate(batch["error"]) if not error]
        if not readable:
            return {}
        maps = self._cams(batch["image"][readable], [indices[i][0] for i in readable])
        return dict(zip(readable, maps, strict=True))

    def _write_image(self, relative: str, display, top: list[tuple[int, float]], heat: np.ndarray | None = None) -> str:
        import cv2

        from imagenet_cls.callbacks.annotate import prediction_lines

        lines = prediction_lines(top, self.class_names, self._label(*top[0]), self.draw_top_k)
        if heat is not None:  # over the model's centre crop of the displayed image
            from imagenet_cls.callbacks.cam import crop_box, overlay_in_box

            display = overlay_in_box(display, heat, crop_box(self._transform, *display.shape[:2]))
        target = self.run_dir / "images" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.show:  # GUI calls stay on the main thread
            annotated = _draw_and_save(display, lines, target)
            cv2.imshow("Predicted output", annotated)
            cv2.waitKey(0)
        else:  # encoding overlaps the next batch's forward pass (OpenCV releases the GIL)
            self._pending.append(self._encoder.submit(_draw_and_save, display, lines, target))
        return str(Path("images") / relative)

    def _wait_for_images(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` images are still being encoded (bounds memory); re-raise write errors."""
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def _part_path(self, rank: int) -> Path:
        return self.run_dir / f".predictions.rank{rank}.csv.partial"

    def _merge_parts(self, world_size: int) -> Path:
        """Stream the per-rank parts (each in index order) into one CSV in input order: constant memory."""
        parts = [self._part_path(rank) for rank in range(world_size)]
        files = [open(p, newline="", encoding="utf-8") for p in parts]  # noqa: SIM115 - closed below
        final = self.run_dir / "predictions.csv"
        tmp = final.with_suffix(".csv.tmp")
        json_out = open(self.run_dir / "predictions.json.tmp", "w", encoding="utf-8") if self.write_json else None  # noqa: SIM115
        try:
            readers = [csv.reader(f) for f in files]
            header = [next(r) for r in readers][0][1:]
            rows = heapq.merge(*readers, key=lambda row: int(row[0]))
            with open(tmp, "w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(header)
                previous = None
                for row in rows:
                    if row[0] == previous:  # a sample a distributed sampler repeated
                        continue
                    previous = row[0]
                    writer.writerow(row[1:])
                    if json_out is not None:
                        json_out.write(
                            ("[\n" if json_out.tell() == 0 else ",\n") + json.dumps(dict(zip(header, row[1:])))
                        )
            if json_out is not None:
                json_out.write("[\n]\n" if json_out.tell() == 0 else "\n]\n")
        finally:
            for f in files:
                f.close()
            if json_out is not None:
                json_out.close()
        os.replace(tmp, final)  # a killed run never leaves a half-written predictions.csv
        if json_out is not None:
            os.replace(self.run_dir / "predictions.json.tmp", self.run_dir / "predictions.json")
        for part in parts:
            part.unlink()
        return final


def _class_lists(pl_module: LightningModule) -> tuple[list[str], list[str]]:
    """The model's class folders and names (decided by the CLI: checkpoint, class map or data folder)."""
    hparams = pl_module.hparams
    num_classes = int(hparams.get("num_classes"))
    folders = list(hparams.get("classes") or [str(i) for i in range(num_classes)])
    return folders, list(hparams.get("class_names") or folders)


def _draw_and_save(display, lines: list[str], target: Path):
    import cv2

    from imagenet_cls.callbacks.annotate import annotate

    annotated = annotate(display, lines)
    if not cv2.imwrite(str(target), annotated):
        raise OSError(f"could not write {target}")
    return annotated


def _safe(cells: list[Any]) -> list[Any]:
    return [spreadsheet_safe(cell) for cell in cells]


def spreadsheet_safe(cell: Any) -> Any:
    """Prefix text a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) with a quote."""
    if isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES):
        return "'" + cell
    return cell


def _display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True
