"""Progress for logs that are files: plain lines when stdout is not a terminal, Rich's bar when it is.

Rich's bar redraws one screen region; with stdout redirected (SLURM, nohup, CI, ``> log.txt``) it prints nothing
until the stage ends, so hours of training leave an empty log. :class:`PlainProgressBar` prints a line every few
percent of a stage (or every few minutes) and one summary line per epoch and per evaluation, e.g. (a tiny run)::

    epoch 0/1 train 8/9 (89%) 4.17 img/s, 0:00:07 elapsed, ETA 0:00:00, train_loss 3.594
    epoch 0/1 val done in 0:00:00 (45.0 img/s): val_acc 0.3333, val_acc5 1, val_images 12, val_loss 28.42
    epoch 0/1 done in 0:00:08 (4.18 img/s): lr 0.05868, train_acc 0.2778, train_loss 1.865, val_acc 0.3333, ...

Epochs count from 0, as in checkpoint names (``epoch=03``) and Lightning's own bar.
:class:`AutoProgressBar` (in the default callbacks) picks one of the two when the run starts.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar


def stdout_is_interactive() -> bool:
    """Whether stdout is a terminal Rich can animate, or a Jupyter notebook.

    Rich's own test, so ``TTY_INTERACTIVE=0`` forces plain lines and ``TTY_INTERACTIVE=1`` the bar.
    """
    from rich.console import Console

    console = Console()
    return console.is_interactive or console.is_jupyter


class AutoProgressBar(ProgressBar):
    """Rich's progress bar when stdout is a terminal; :class:`PlainProgressBar` lines when it is a file or a pipe.

    Constructing one returns a ``RichProgressBar`` or a ``PlainProgressBar``, so Lightning sees the real class.
    To force one, list that class in ``trainer.callbacks`` instead, or set ``TTY_INTERACTIVE=0`` (plain lines).

    Args:
        every_percent: Plain lines only: a progress line each time this share of a stage's batches is done.
        every_seconds: Plain lines only: also a line when this many seconds passed since the last one.
    """

    def __new__(cls, every_percent: float = 10.0, every_seconds: float = 300.0) -> ProgressBar:  # type: ignore[misc]
        if stdout_is_interactive():
            from lightning.pytorch.callbacks import RichProgressBar

            return RichProgressBar()
        return PlainProgressBar(every_percent=every_percent, every_seconds=every_seconds)

    def __init__(self, every_percent: float = 10.0, every_seconds: float = 300.0) -> None:  # never runs: see __new__
        super().__init__()


class _Stage:
    """Counters of one running stage (an epoch's training, one validation, a test or a predict run)."""

    def __init__(self, label: str, total: float, by_share: bool = True) -> None:
        self.label = label
        self.total = total  # batches; inf when the loader has no length
        self.by_share = by_share  # lines every few percent; else only every few minutes
        self.batches = 0
        self.images = 0
        self.started = self.last_line = time.monotonic()
        self.last_bucket = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> str:
        """Images per second when batches have a size, else iterations per second."""
        elapsed = max(self.elapsed(), 1e-9)
        count, unit = (self.images, "img/s") if self.images else (self.batches, "it/s")
        rate = count / elapsed
        return f"{rate:.1f} {unit}" if rate >= 10 else f"{rate:.3g} {unit}"


class PlainProgressBar(ProgressBar):
    """Progress as plain lines on stdout, for logs that are files (SLURM, nohup, CI); nothing is redrawn.

    Each stage (an epoch's training, a validation, a test, a predict run) prints a line with its batch count,
    images per second, elapsed time, ETA and step metrics (the training loss) every ``every_percent`` of its
    batches or every ``every_seconds``, whichever comes first; then one summary line with its metrics. The
    validation within fit prints progress lines by time only (it is usually short).

    Args:
        every_percent: A progress line each time this share of a stage's batches is done (0: only by time).
        every_seconds: Also a line when this many seconds passed since the stage's last line (0: only by share).
    """

    def __init__(self, every_percent: float = 10.0, every_seconds: float = 300.0) -> None:
        super().__init__()
        if every_percent < 0 or every_seconds < 0:
            raise ValueError("PlainProgressBar: every_percent and every_seconds must be >= 0 (0 turns one off)")
        self.every_percent = every_percent
        self.every_seconds = every_seconds
        self._enabled = True
        self._train: _Stage | None = None
        self._eval: _Stage | None = None

    # ---- Lightning's progress-bar interface --------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        # The finders re-enable the bar after their search: on other ranks than 0 it stays off.
        self._enabled = self._trainer is None or self._trainer.is_global_zero

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    # ---- training ----------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train = _Stage(f"{self._epoch(trainer)} train", self.total_train_batches)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._train is not None:
            self._advance(self._train, batch, self._step_metrics(trainer, pl_module, outputs))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stage, self._train = self._train, None
        if stage is None or not self._enabled:
            return
        # Validation at the end of the epoch has run by now: its metrics join the training ones.
        metrics = {
            name: value
            for name, value in trainer.callback_metrics.items()
            if not name.endswith(("_step", "_epoch")) and not name.startswith(("test_", "lr-"))
        }
        rates = sorted({_number(v) for k, v in trainer.callback_metrics.items() if k.startswith("lr-")}, key=float)
        if rates:  # LearningRateMonitor's lr-<Optimizer>/pg<N>: one value, or the range over parameter groups
            metrics["lr"] = rates[0] if len(rates) == 1 else f"{rates[0]}..{rates[-1]}"
        self._write(f"{self._epoch(trainer)} done in {_clock(stage.elapsed())} ({stage.rate()}){_format(metrics)}")

    # ---- validation, test, predict -----------------------------------------------------------------------------
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            fitting = trainer.state.fn == "fit"
            label = f"{self._epoch(trainer)} val" if fitting else "validate"
            # Within fit, a validation is usually short: its summary line, and progress lines only by time.
            self._eval = _Stage(label, _sum(trainer.num_val_batches), by_share=not fitting)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if self._eval is not None and not trainer.sanity_checking:
            self._advance(self._eval, batch)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end_eval(trainer, "val_")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval = _Stage("test", _sum(trainer.num_test_batches))

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if self._eval is not None:
            self._advance(self._eval, batch)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_eval(trainer, "test_")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval = _Stage("predict", _sum(trainer.num_predict_batches))

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if self._eval is not None:
            self._advance(self._eval, batch)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_eval(trainer, None)

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _end_eval(self, trainer: Trainer, prefix: str | None) -> None:
        stage, self._eval = self._eval, None
        if stage is None or not self._enabled:
            return
        metrics = {} if prefix is None else {k: v for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        self._write(f"{stage.label} done in {_clock(stage.elapsed())} ({stage.rate()}){_format(metrics)}")

    def _advance(self, stage: _Stage, batch: Any, metrics: dict[str, Any] | None = None) -> None:
        """Count one batch; print a line when the stage crossed another ``every_percent`` or ``every_seconds``."""
        stage.batches += 1
        stage.images += _batch_size(batch)
        if not self._enabled:
            return
        now = time.monotonic()
        finite = math.isfinite(stage.total) and stage.total > 0
        by_share = finite and stage.by_share and self.every_percent > 0
        bucket = int(100 * stage.batches / stage.total // self.every_percent) if by_share else 0
        due_by_share = bucket > stage.last_bucket and stage.batches < stage.total
        due_by_time = self.every_seconds and now - stage.last_line >= self.every_seconds
        if not (due_by_share or due_by_time):
            return
        stage.last_bucket, stage.last_line = bucket, now
        elapsed = stage.elapsed()
        if finite:
            eta = elapsed / stage.batches * (stage.total - stage.batches)
            where = f"{stage.batches}/{int(stage.total)} ({100 * stage.batches / stage.total:.0f}%)"
            timing = f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        else:
            where, timing = f"{stage.batches}", f"{_clock(elapsed)} elapsed"
        extra = "".join(f", {name} {_number(value)}" for name, value in (metrics or {}).items())
        self._write(f"{stage.label} {where} {stage.rate()}, {timing}{extra}")

    def _step_metrics(self, trainer: Trainer, pl_module: LightningModule, outputs: Any) -> dict[str, Any]:
        """The progress-bar metrics logged this step (``train_loss_step`` shown as ``train_loss``), else the loss."""
        metrics = {
            name.removesuffix("_step"): value
            for name, value in self.get_metrics(trainer, pl_module).items()
            if name.endswith("_step")
        }
        if not metrics:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                metrics["loss"] = loss.item()
        return metrics

    @staticmethod
    def _epoch(trainer: Trainer) -> str:
        last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else None
        return f"epoch {trainer.current_epoch}" + (f"/{last}" if last is not None else "")

    def _write(self, line: str) -> None:
        # stdout, flushed per line: redirected stdout is block-buffered and would hold lines back for minutes.
        print(line, file=sys.stdout, flush=True)


def _batch_size(batch: Any) -> int:
    """Images in ``batch``, 0 when unknown.

    The length of the batch tensor, of its first element, or of a dict's first tensor (predict's
    ``{"image": (B, 3, H, W), ...}``).
    """
    if isinstance(batch, dict):
        batch = next((value for value in batch.values() if isinstance(value, torch.Tensor)), None)
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    return len(first) if isinstance(first, torch.Tensor) and first.ndim > 0 else 0


def _sum(batches: int | float | list) -> float:
    """Batches over all dataloaders of a stage (Lightning gives a list, one count per loader)."""
    return float(sum(batches)) if isinstance(batches, list) else float(batches)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "?"


def _number(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))  # counts such as val_images
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _format(metrics: dict[str, Any]) -> str:
    return (": " + ", ".join(f"{name} {_number(metrics[name])}" for name in sorted(metrics))) if metrics else ""
