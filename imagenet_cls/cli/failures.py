"""Out-of-memory, a killed DataLoader worker and a lost DDP process become one line with a remedy, not a traceback."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer


class FailureAdvice(Callback):
    """Keeps a one-line explanation of an out-of-memory error or a dead DataLoader worker in ``advice``.

    The CLI adds it to every trainer; ``main`` prints ``advice`` instead of the traceback.
    """

    def __init__(self) -> None:
        self.advice: str | None = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.advice = explain_failure(exception, trainer)


def explain_failure(error: BaseException, trainer: Trainer) -> str | None:
    """One line for out-of-memory, a killed DataLoader worker, a lost DDP peer or a full disk; None otherwise."""
    import torch

    from imagenet_cls.callbacks.peers import PeerWatch
    from imagenet_cls.errors import disk_full
    from imagenet_cls.runs.checkpoints import last_checkpoint_path

    full = disk_full(error)
    if not isinstance(error, RuntimeError) and full is None:  # torch.OutOfMemoryError is a RuntimeError
        return None
    text = str(error)
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    last = last_checkpoint_path(trainer)
    kept = f"; the last checkpoint ({last}) is intact: resume with --ckpt_path last" if last.is_file() else ""
    data = trainer.datamodule
    stage = getattr(trainer.state.fn, "value", trainer.state.fn) or "run"
    if full is not None:
        return f"{stage}: {full}{kept}"
    lost = next((c.explain(error, trainer) for c in trainer.callbacks if isinstance(c, PeerWatch)), None)
    if lost:
        return f"{stage}: {lost}: the run stopped{kept}"
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return (
            f"{stage}: out of memory ({first}): lower --data.batch_size (now {getattr(data, 'batch_size', '?')}) "
            "or use "
            f"--trainer.precision bf16-mixed (now {trainer.precision}), with "
            f"--trainer.accumulate_grad_batches to keep the effective batch size{kept}"
        )
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        return (
            f"{stage}: a data-loading worker died ({first}), usually killed for lack of memory: lower "
            "--data.num_workers "
            f"(now {getattr(data, 'num_workers', '?')}) or --data.batch_size{kept}"
        )
    return None
