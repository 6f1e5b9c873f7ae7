"""Callbacks that inject faults into a real fit (named by class path from YAML in subprocess tests)."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import Callback


class RaiseOutOfMemory(Callback):
    """Raise the error PyTorch raises when the GPU runs out of memory, at optimizer step ``at_step``."""

    def __init__(self, at_step: int = 3) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.at_step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


class SlowBatches(Callback):
    """Sleep before every training batch, so a signal reliably arrives in the middle of one."""

    def __init__(self, seconds: float = 1.0, started_file: str | None = None) -> None:
        self.seconds = seconds
        self.started_file = started_file

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.started_file:
            open(self.started_file, "w").close()  # noqa: SIM115 - a marker for the test
        time.sleep(self.seconds)


class NonFiniteValidation(Callback):
    """Make the whole validation of epoch ``epoch`` non-finite (a NaN bias), then restore the weights."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch
        self.saved: torch.Tensor | None = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            bias = pl_module.backbone.get_classifier().bias
            self.saved = bias.detach().clone()
            with torch.no_grad():
                bias.fill_(float("nan"))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.saved is not None:
            with torch.no_grad():
                pl_module.backbone.get_classifier().bias.copy_(self.saved)
            self.saved = None


class KillAt(Callback):
    """``kill -9`` this process when training reaches optimizer step ``step`` (no cleanup, no checkpoint).

    ``rank``: only the process of that global rank (DDP), else every process.
    """

    def __init__(self, step: int = 5, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class PoisonWeight(Callback):
    """Fill the classifier bias with NaN after optimizer step ``at_step`` (as a diverged update would)."""

    def __init__(self, at_step: int = 7) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.backbone.get_classifier().bias.fill_(float("nan"))
