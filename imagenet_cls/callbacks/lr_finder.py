"""Lightning's learning-rate and batch-size finders, made to take effect and to leave their results in the run folder.

Lightning's own ``LearningRateFinder`` sets ``hparams.lr`` and the optimizer's current rate, but the schedule
(``LambdaLR`` over warmup and cosine) keeps the rate it was built with and resets it at the next step; its
``BatchSizeFinder`` changes the batch size after the learning-rate scaling and the schedule length were computed.
These subclasses rebuild the optimizer and schedule through the model's ``configure_optimizers`` after searching.

Recipe: ``python cli.py fit --config config/demo.yaml --config config/lr_find.yaml``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BatchSizeFinder as LightningBatchSizeFinder
from lightning.pytorch.callbacks import LearningRateFinder as LightningLearningRateFinder
from lightning.pytorch.utilities.parsing import lightning_getattr

log = logging.getLogger(__name__)


class LearningRateFinder(LightningLearningRateFinder):
    """Before training, a learning-rate range test (Smith 2017, Lightning's ``LearningRateFinder``).

    The learning rate grows from ``min_lr`` to ``max_lr`` over ``num_training_steps`` batches; the suggestion (the
    steepest fall of the smoothed loss) becomes ``model.lr`` and the optimizer and LR schedule are rebuilt from it.
    With ``model.lr_base_batch_size`` set, ``model.lr`` is stored per that base batch size, so that the rate used
    is the suggestion. The suggestion is the head's rate: ``backbone_lr_scale`` and ``layer_decay`` still apply.
    Writes ``lr_find.png`` (loss against learning rate, the suggestion marked) and ``lr_find.json`` into the run
    folder. The model's weights and optimizer state are restored after the search. A ``BatchSizeFinder`` among the
    callbacks searches first, wherever it is listed; neither searches when fit resumes a checkpoint.

    Args:
        min_lr: Lowest learning rate tried.
        max_lr: Highest learning rate tried.
        num_training_steps: Batches in the search, one learning rate each.
        mode: ``exponential`` (evenly on a log scale) or ``linear`` growth of the learning rate.
        early_stop_threshold: Stop the search once the smoothed loss exceeds this multiple of the best loss
            (None: never).
        update_attr: Set ``model.lr`` to the suggestion (else only report it).
        attr_name: The model's learning-rate attribute; ``lr`` and ``learning_rate`` are found without it.
    """

    def __init__(
        self,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: Literal["exponential", "linear"] = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        super().__init__(min_lr, max_lr, num_training_steps, mode, early_stop_threshold, update_attr, attr_name)
        self.suggestion: float | None = None
        self.files: dict[str, Path] = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The learning rate depends on the batch size: a batch-size finder listed after this one searches first.
        for callback in trainer.callbacks:
            if isinstance(callback, BatchSizeFinder):
                callback.on_fit_start(trainer, pl_module)
        self.lr_find(trainer, pl_module)

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Long on purpose: Lightning's search, then the rebuild of optimizer and schedule and the files, in order.
        if _resuming(trainer, "learning-rate"):
            return
        hparams = pl_module.hparams
        before = hparams.get("lr")
        factor = _lr_scaling_factor(trainer, hparams)  # rate used = model.lr * factor
        with _searching(trainer, pl_module):
            super().lr_find(trainer, pl_module)
            finder = self.optimal_lr
            if finder is None:  # fast_dev_run: Lightning skipped the search
                return
            self.suggestion = finder.suggestion()
        if self.suggestion is not None and self._update_attr:
            if "lr" in hparams and factor != 1.0:
                hparams["lr"] = self.suggestion / factor
            # Lightning set the optimizer's current rate only; the schedule would put the old one back.
            trainer.strategy.setup_optimizers(trainer)
        folder = _run_folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        self.files = {"plot": folder / "lr_find.png", "result": folder / "lr_find.json"}
        result = {
            "suggestion": self.suggestion,
            "lr_before": before,
            "lr": hparams.get("lr"),
            "applied": bool(self.suggestion is not None and self._update_attr),
            "min_lr": self._min_lr,
            "max_lr": self._max_lr,
            "mode": self._mode,
            "batch_size": getattr(trainer.datamodule, "batch_size", None),
            "steps": len(finder.results.get("lr", [])),
            "lrs": finder.results.get("lr", []),
            "losses": finder.results.get("loss", []),
        }
        self.files["result"].write_text(json.dumps(result, indent=2) + "\n")
        _plot(finder, self.files["plot"], self.suggestion)
        if self.suggestion is None:
            log.warning(
                "learning-rate finder: no suggestion from %d steps (it needs 13 with a finite loss: raise "
                "num_training_steps or the batches per epoch, or lower max_lr); model.lr stays %s. Plot: %s",
                result["steps"],
                before,
                self.files["plot"],
            )
        else:
            log.info(
                "learning-rate finder: suggested %.3g%s (model.lr was %s); plot %s",
                self.suggestion,
                "" if self._update_attr else ", not applied (update_attr false)",
                before,
                self.files["plot"],
            )


class BatchSizeFinder(LightningBatchSizeFinder):
    """Before training, the largest batch size that fits in memory (Lightning's ``BatchSizeFinder``).

    Tries ``steps_per_trial`` training steps per batch size, doubling from ``init_val`` (``power``) or then bisecting
    (``binsearch``) until out of memory, ``max_trials`` or ``max_val``; the data module's ``batch_size`` becomes the
    result, and the optimizer and LR schedule are rebuilt for it (learning-rate scaling with
    ``model.lr_base_batch_size`` and the schedule's length depend on the batch size). Runs only when fitting (not
    for the test after fit). Writes ``batch_size_find.json`` into the run folder. On a CPU memory rarely runs out:
    set ``max_val``.

    Args:
        mode: ``power`` (double until it fails) or ``binsearch`` (then bisect between the last two sizes).
        steps_per_trial: Training steps tried per batch size.
        init_val: The first batch size tried.
        max_trials: Batch sizes tried at most.
        batch_arg_name: Attribute holding the batch size (on the model, its hparams or the data module).
        margin: ``binsearch`` only: the share by which the found size is reduced, as a safety buffer.
        max_val: The largest batch size tried.
    """

    def __init__(
        self,
        mode: Literal["power", "binsearch"] = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> None:
        super().__init__(mode, steps_per_trial, init_val, max_trials, batch_arg_name, margin, max_val)
        self.files: dict[str, Path] = {}
        self._searched = False  # in this fit (a LearningRateFinder may have run this search first)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str | None = None) -> None:
        super().setup(trainer, pl_module, stage)
        self._searched = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._searched:
            self._searched = True
            self.scale_batch_size(trainer, pl_module)

    def scale_batch_size(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if _resuming(trainer, "batch-size"):
            return
        before = lightning_getattr(pl_module, self._batch_arg_name)
        with _searching(trainer, pl_module):
            super().scale_batch_size(trainer, pl_module)
        if self.optimal_batch_size is None:  # fast_dev_run: Lightning skipped the search
            return
        trainer.strategy.setup_optimizers(trainer)
        folder = _run_folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        self.files = {"result": folder / "batch_size_find.json"}
        result = {"batch_size": self.optimal_batch_size, "batch_size_before": before, "mode": self._mode}
        self.files["result"].write_text(json.dumps(result, indent=2) + "\n")
        log.info("batch-size finder: batch size %d (was %s)", self.optimal_batch_size, before)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Not before evaluation: the size found for training serves the test after fit too."""

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Not before evaluation."""

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Not before prediction."""


def _lr_scaling_factor(trainer: Trainer, hparams: Any) -> float:
    """The rate the optimizer gets per unit of ``model.lr`` (``lr_base_batch_size`` scaling, else 1)."""
    base = hparams.get("lr_base_batch_size")
    batch_size = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
    if not base or batch_size is None:
        return 1.0
    from imagenet_cls.model.optim import scale_lr

    global_batch = batch_size * trainer.world_size * trainer.accumulate_grad_batches
    return scale_lr(1.0, global_batch, base, hparams.get("lr_scaling", "linear"))


# Lightning's lines about its own temporary checkpoint and inner fit loop, which read as if training had ended.
SEARCH_NOISE = (
    "`weights_only` was not set",
    "`Trainer.fit` stopped",
    "Learning rate set to",
    "Restor",
    "Failed to compute suggestion",  # our own warning says it, with the remedy
)


def _resuming(trainer: Trainer, what: str) -> bool:
    """No search when fit resumes a checkpoint: the search's own restore would drop the resumed optimizer state."""
    if trainer.ckpt_path is None:
        return False
    log.info("%s finder: skipped, fit resumes %s", what, trainer.ckpt_path)
    return True


@contextmanager
def _searching(trainer: Trainer, pl_module: LightningModule) -> Iterator[None]:
    """During a search: a NaN loss at the top of the range must not stop the run, and Lightning's internals are quiet.

    The model's ``nonfinite_loss`` is ``skip`` meanwhile (without its warning line). Afterwards the trainer no longer
    names the search's deleted temporary checkpoint as the one the fit started from.
    """
    hparams = pl_module.hparams
    stopping = hparams.get("nonfinite_loss") == "stop"
    if stopping:
        hparams["nonfinite_loss"] = "skip"
    filtered = [logging.getLogger(type(pl_module).__module__)]  # the model's "update skipped" warnings
    handlers = logging.getLogger("lightning.pytorch").handlers
    for target in (*filtered, *handlers):
        target.addFilter(_not_search_noise)
    try:
        yield
    finally:
        trainer._checkpoint_connector._ckpt_path = None  # else "Restored all states from <temporary file>" follows
        if stopping:
            hparams["nonfinite_loss"] = "stop"
        for target in (*filtered, *handlers):
            target.removeFilter(_not_search_noise)


def _not_search_noise(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not (message.startswith("non-finite training loss") or message.startswith(SEARCH_NOISE))


def _run_folder(trainer: Trainer) -> Path:
    """The fit's run folder (its config, checkpoints and report are there too)."""
    from imagenet_cls.runs.folders import run_folder

    return run_folder(trainer, "fit")


def _plot(finder: Any, path: Path, suggestion: float | None) -> None:
    """Loss against learning rate, the suggestion marked; drawn without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    finder.plot(suggest=suggestion is not None, ax=axes)
    title = f"suggested lr {suggestion:.3g}" if suggestion is not None else "no suggestion"
    axes.set_title(f"learning-rate range test: {title}")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
