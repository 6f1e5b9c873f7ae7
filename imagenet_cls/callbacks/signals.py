"""GracefulShutdown: on SIGTERM or SIGINT during fit, checkpoint at the next batch boundary and exit 143 / 130.

Under DDP the processes agree first, so they all save the same step and exit together; with SLURM's requeue signal
(Lightning's ``SLURMEnvironment(auto_requeue=True)``) the job is requeued after the checkpoint is written.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from imagenet_cls.callbacks.resume import save_last_checkpoint

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)


class GracefulShutdown(Callback):
    """Saves ``last.ckpt`` after the current batch when SIGTERM or SIGINT arrives, then exits with 128 + signal.

    The run resumes from it with ``--ckpt_path last``. A second SIGINT exits at once (130), without saving.
    Lightning itself exits with 0 on SIGTERM, which schedulers read as success.

    Under DDP every process asks the others at each batch start whether one of them received a signal (one
    all-reduce of a number), so all of them save the same step and exit, whichever process saw it, and whenever:
    SLURM, ``timeout`` and ``kill -- -PGID`` signal the processes at slightly different moments. With Lightning's
    ``SLURMEnvironment(auto_requeue=True)`` (the default under SLURM), its requeue signal (SIGUSR1; ``#SBATCH
    --signal=SIGUSR1@90``) also saves, then the first process requeues the job with ``scontrol requeue``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._requeue_signal: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.received = None
        self._requeue_signal = _requeue_signal(trainer)
        handled = HANDLED + ((self._requeue_signal,) if self._requeue_signal is not None else ())
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in handled}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            os._exit(130)  # the user insists
        log.warning("%s received: saving a checkpoint after this batch, then exiting", signal.Signals(signum).name)
        self.received = signum

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        # At the start of the next batch, every callback has finished the previous one (EMA updated ...).
        signum = self._agreed(trainer)
        if signum:
            self._save_and_exit(trainer, signum)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A signal during the last batch or validation: the final checkpoints are written; still exit 128 + signal.
        signum = self._agreed(trainer)
        if not signum:
            self._restore()
            return
        if signum == self._requeue_signal:
            _requeue(trainer)
        log.warning("training finished; exiting for %s", signal.Signals(signum).name)
        raise SystemExit(128 + signum)  # our handlers stay until Lightning's teardown restores the original ones

    def _agreed(self, trainer: Trainer) -> int:
        """The signal any process received (the highest number if several), 0 if none; the same on every process."""
        received = self.received or 0
        if trainer.world_size == 1:
            return received
        flag = torch.tensor(received, dtype=torch.int32, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(flag, reduce_op="max"))

    def _save_and_exit(self, trainer: Trainer, signum: int) -> None:
        if self.received is None:
            log.warning("%s received by another process: saving a checkpoint", signal.Signals(signum).name)
        path = save_last_checkpoint(trainer)  # atomic: Lightning writes to a temporary file and renames it
        log.warning("checkpoint saved to %s; resume with --ckpt_path last", path)
        if signum == self._requeue_signal:
            _requeue(trainer)
        # Our handlers stay until Lightning's teardown restores the original ones: a later signal (SLURM signals each
        # process at its own moment) must not reach Lightning's SIGTERM handler, which starts a collective.
        raise SystemExit(128 + signum)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _requeue_signal(trainer: Trainer) -> int | None:
    """SLURM's requeue signal when Lightning's SLURMEnvironment has ``auto_requeue`` on, else None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and hasattr(signal, "SIGUSR1"):
        return int(environment.requeue_signal or signal.SIGUSR1)
    return None


def _requeue(trainer: Trainer) -> None:
    """Put this SLURM job back in the queue (first process only); the requeued run resumes from ``last.ckpt``."""
    if not trainer.is_global_zero:
        return
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        log.warning("no SLURM_JOB_ID: not requeued")
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("requeueing SLURM job %s failed: %s", job, error)
        return
    if result.returncode == 0:
        log.warning("SLURM job %s requeued", job)
    else:
        log.warning("requeueing SLURM job %s failed: %s", job, result.stderr.strip() or result.returncode)
