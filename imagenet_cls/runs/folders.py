"""The run folder: the one place that decides where a run's config, report and predictions go.

Fit with a logger: ``<save_dir>/<name>/<version>/`` (Lightning's ModelCheckpoint puts ``checkpoints/`` there too).
validate/test without a logger: ``<default_root_dir>/<stage>/<timestamp>/``. predict: ``--writer.output_dir`` or
``<default_root_dir>/predictions/<timestamp>/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from lightning.pytorch import Callback, LightningModule, Trainer

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"


def timestamp() -> str:
    """Now, as used in run-folder and file names (``20261130-094501``)."""
    return time.strftime(TIMESTAMP_FORMAT)


@runtime_checkable
class PredictionOutput(Protocol):
    """A callback that may name the folder predictions go to (the prediction writer's ``--writer.output_dir``)."""

    def prediction_folder(self) -> Path | None:
        """The folder the user chose, or None for the default."""


class RunFolder(Callback):
    """Decides the run's folder once per stage, the same on every rank; the CLI adds it to every trainer.

    The test after a fit reports into the fit's folder.
    """

    def __init__(self) -> None:
        self._paths: dict[str, Path] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))
        path = self._paths.get(stage) or self._paths.get("fit" if stage != "predict" else "") or _decide(trainer, stage)
        self._paths[stage] = Path(trainer.strategy.broadcast(str(path)))  # every rank calls setup: rank 0's choice

    def path(self, trainer: Trainer, stage: str) -> Path:
        """The folder of ``stage`` (decided in ``setup``; decided now for a trainer that has not set up yet)."""
        stage = str(getattr(stage, "value", stage))
        if stage not in self._paths:
            self._paths[stage] = _decide(trainer, stage)
        return self._paths[stage]


def run_folder(trainer: Trainer, stage: str) -> Path:
    """The folder of this run's ``stage``: the RunFolder callback's decision, or the same rule without one."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunFolder):
            return callback.path(trainer, stage)
    return _decide(trainer, str(getattr(stage, "value", stage)))


def _decide(trainer: Trainer, stage: str) -> Path:
    root = Path(trainer.default_root_dir)
    if stage == "predict":
        for callback in trainer.callbacks:
            if isinstance(callback, PredictionOutput) and callback.prediction_folder() is not None:
                return Path(callback.prediction_folder())
        return root / "predictions" / timestamp()
    if not trainer.loggers:
        # validate/test without a logger: a folder per run, not loose files in the root
        return root if stage == "fit" else root / stage / timestamp()
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or root) / str(logger.name) / version
