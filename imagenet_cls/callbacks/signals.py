"""GracefulShutdown: on SIGTERM or SIGINT during fit, checkpoint at the next batch boundary and exit 143 / 130."""

from __future__ import annotations

import logging
import os
import signal
import threading

from lightning.pytorch import Callback, LightningModule, Trainer

from imagenet_cls.callbacks.resume import save_last_checkpoint

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

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        # At the start of the next batch, every callback has finished the previous one (EMA updated ...).
        if self.received is not None:
            self._save_and_exit(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A signal during the last batch or validation: the final checkpoints are written; still exit 128 + signal.
        self._restore()
        if self.received is not None:
            signum = self.received
            log.warning("training finished; exiting for %s", signal.Signals(signum).name)
            raise SystemExit(128 + signum)

    def _save_and_exit(self, trainer: Trainer) -> None:
        signum = self.received
        path = save_last_checkpoint(trainer)  # atomic: Lightning writes to a temporary file and renames it
        log.warning("checkpoint saved to %s; resume with --ckpt_path last", path)
        self._restore()
        raise SystemExit(128 + signum)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
