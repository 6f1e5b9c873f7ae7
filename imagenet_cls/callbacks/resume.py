"""Exact resume in the middle of an epoch.

A data order that can skip what was done, per-sample random seeds, and the RNG states of the training process saved
in every checkpoint.

How the pieces fit: :class:`ResumableSampler` draws each epoch's order from ``(seed, epoch)`` alone and hands each
sample its own seed, so augmentations do not depend on which worker ran before; the data module saves how many
batches of the epoch were done and makes the sampler skip them on resume; :class:`ResumeState` (a callback) saves a
checkpoint every N optimizer steps with the torch (CPU and CUDA), NumPy and Python RNG states of every process, and
puts them back when training resumes. Lightning restores weights, optimizer, schedule, EMA, early stopping and its
loops. No checkpoint is written from non-finite weights (:func:`first_nonfinite`): the previous file stays.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import CheckpointIO

from imagenet_cls.data.sampling import ResumableSampler, random_state_kept, sample_seed, seeded  # noqa: F401 (old paths)
from imagenet_cls.errors import UserError
from imagenet_cls.runs.checkpoints import last_checkpoint_path


class ResumeState(Callback):
    """Saves ``last.ckpt`` at every epoch end and every ``every_n_steps`` optimizer steps, with the RNG states.

    A run killed at any point (even ``kill -9``) and resumed with ``--ckpt_path last`` continues exactly: the same
    batches in the same order, the same augmentations and mixup draws (bitwise on CPU with
    ``--trainer.deterministic true``).

    Args:
        every_n_steps: Optimizer steps between mid-epoch checkpoints (None: at epoch ends only).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self._pending_rng: dict[str, Any] | None = None
        self._last_saved_step = -1

    def state_dict(self) -> dict[str, Any]:
        """The random states of every training process: ``{"per_rank": [state of rank 0, rank 1, ...]}``.

        Called on every process when a checkpoint is made (the states are gathered to the one that writes it).
        """
        state = rng_state()
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return {"per_rank": [state]}
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
        return {"per_rank": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict  # put back when training resumes, after everything that ran before it

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:  # the first batch after a resume: the random states of the checkpoint
            state, self._pending_rng = self._pending_rng, None
            states = state.get("per_rank", [state])  # checkpoints before per-process states held one
            set_rng_state(states[trainer.global_rank % len(states)])
            return
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_saved_step:
            # Saved here, not at the end of the previous batch: every callback (EMA ...) has finished that step.
            self._last_saved_step = step
            save_last_checkpoint(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning 2.6's ModelCheckpoint rewrites last.ckpt only when it also saves a top-k one: keep it current.
        if not trainer.sanity_checking:
            save_last_checkpoint(trainer)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Weights-only saves (a ModelCheckpoint with save_weights_only) skip on_save_checkpoint: the writer checks.
        if stage == "fit" and not isinstance(trainer.strategy.checkpoint_io, FiniteCheckpointIO):
            trainer.strategy.checkpoint_io = FiniteCheckpointIO(trainer.strategy.checkpoint_io)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse to write weights that are NaN or infinite: the run stops and the previous checkpoint stays.

        Called for every full checkpoint (epoch end, every N steps, on a signal, the best one), on every process,
        before anything is written. A run whose weights are non-finite does not recover, so it stops.
        """
        tensors = named_weights(pl_module, trainer.callbacks)
        bad = first_nonfinite(tensors)
        if bad is None:
            return
        last = last_checkpoint_path(trainer)
        kept = f"{last} (step {_saved_step(last)}) is kept" if last.is_file() else "no earlier checkpoint exists"
        raise NonFiniteWeights(
            f"weights are not finite at step {trainer.global_step} (epoch {trainer.current_epoch}; first: {bad}): "
            f"no checkpoint written, {kept}; lower --model.lr or set --trainer.gradient_clip_val"
        )


class NonFiniteWeights(UserError):
    """The weights to be checkpointed hold NaN or infinite values."""


class FiniteCheckpointIO(CheckpointIO):
    """Writes checkpoints through another CheckpointIO unless their weights hold NaN or infinite values.

    The last line of defence, for every file written (weights-only ones included); it runs on the writing process
    only, after :meth:`ResumeState.on_save_checkpoint` has checked full checkpoints on every process.
    """

    def __init__(self, checkpoint_io: CheckpointIO) -> None:
        self.checkpoint_io = checkpoint_io  # the strategy's own writer, which does the work

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return self.checkpoint_io.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        self.checkpoint_io.remove_checkpoint(path)

    def teardown(self) -> None:
        self.checkpoint_io.teardown()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        tensors = [
            (name if key == "state_dict" else f"{key}.{name}", tensor)
            for key in ("state_dict", "current_model_state")
            for name, tensor in (checkpoint.get(key) or {}).items()
            if isinstance(tensor, torch.Tensor)
        ]
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise NonFiniteWeights(
                f"weights are not finite (first: {bad}): {path} not written; lower --model.lr or set "
                "--trainer.gradient_clip_val"
            )
        self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)


def named_weights(pl_module: LightningModule, callbacks: Iterable[Callback]) -> list[tuple[str, torch.Tensor]]:
    """The model's parameters and buffers, and those of an EMA (Lightning's ``WeightAveraging``) as ``ema.<name>``."""
    tensors = [*pl_module.named_parameters(), *pl_module.named_buffers()]
    for callback in callbacks:
        average = getattr(callback, "_average_model", None)  # WeightAveraging's AveragedModel, during fit
        if isinstance(average, torch.nn.Module):
            tensors += [(f"ema.{n}", t) for n, t in (*average.named_parameters(), *average.named_buffers())]
    return tensors


def first_nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or infinity, or None (one device sync in all)."""
    floating = [(name, tensor) for name, tensor in tensors if tensor.is_floating_point() and tensor.numel()]
    if not floating:
        return None
    finite = torch.stack([torch.isfinite(tensor.detach()).all().to(floating[0][1].device) for _, tensor in floating])
    if bool(finite.all()):
        return None
    return floating[int((~finite).nonzero()[0])][0]


def _saved_step(path: Path) -> int | str:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def rng_state() -> dict[str, Any]:
    """This process's random generators: torch's CPU and CUDA ones, NumPy's and Python's global ones.

    DataLoader workers need none: each sample's augmentations draw from its own seed (:func:`sample_seed`), and the
    workers' base seeds come from the loader's own generator, the same on every run.
    """
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout, drop-path, random erasing on a GPU
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["random"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_last_checkpoint(trainer: Trainer) -> Path:
    """Write ``last.ckpt`` (atomically, as Lightning does) as the ModelCheckpoint's own last checkpoint.

    The ModelCheckpoint is told first that the file is its own, so its next epoch-end save replaces it instead of
    writing ``last-v1.ckpt`` beside it.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    path = last_checkpoint_path(trainer)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath == str(path.parent):
            callback.last_model_path = str(path)
    trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint (optimizer, loops, callbacks)
    return path
