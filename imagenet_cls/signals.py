"""GracefulShutdown: on SIGTERM or SIGINT during fit, checkpoint at the next batch boundary and exit 143 / 130."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)


class GracefulShutdown(Callback):
    """Saves ``last.ckpt`` after the current batch when SIGTERM or SIGINT arrives, then exits with 128 + signal.

    The run resumes from it with ``--ckpt_path last``. A second SIGINT exits at once (130), without saving.
    Lightning itself exits with 0 on SIGTERM, which schedulers read as success.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            os._exit(130)  # the user insists
        log.warning("%s received: saving a checkpoint after this batch, then exiting", signal.Signals(signum).name)
        self.received = signum

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        if self.received is None:
            return
        signum = self.received
        path = self._last_path(trainer)
        trainer.save_checkpoint(path)  # atomic: Lightning writes to a temporary file and renames it
        log.warning("checkpoint saved to %s; resume with --ckpt_path last", path)
        self._restore()
        raise SystemExit(128 + signum)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @staticmethod
    def _last_path(trainer: Trainer) -> Path:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath:
            return Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
