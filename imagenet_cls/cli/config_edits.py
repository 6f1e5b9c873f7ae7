"""Edits of the parsed trainer config (jsonargparse Namespaces) before anything is instantiated.

Each function takes the ``trainer`` section of one subcommand's config and changes it in place.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from imagenet_cls.errors import UserError

log = logging.getLogger("imagenet_cls")

DEFAULT_CALLBACKS = [
    {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val_acc", "mode": "max", "save_top_k": 1, "save_last": True},
    },
    {
        "class_path": "lightning.pytorch.callbacks.EarlyStopping",
        # strict false: a run shorter than one validation (max_steps) ends normally; the monitor name is checked
        "init_args": {"monitor": "val_acc", "mode": "max", "patience": 10, "strict": False},
    },
    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
    {"class_path": "imagenet_cls.callbacks.progress.AutoProgressBar"},  # Rich on a terminal, plain lines in a file
    {"class_path": "imagenet_cls.callbacks.signals.GracefulShutdown"},
    {"class_path": "imagenet_cls.callbacks.report.EvaluationReport"},
]
DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "ImageNet"}}
MIXED_PRECISIONS = {"16", "16-mixed", "bf16", "bf16-mixed", "transformer-engine", "transformer-engine-float16"}
FIT_ONLY_CALLBACKS = ("ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "GracefulShutdown", "ResumeState")


def callbacks_of(trainer: Namespace) -> list[Any]:
    """``trainer.callbacks`` as a list (None and a single callback included)."""
    return as_list(trainer.get("callbacks"))


def as_list(value: Any) -> list[Any]:
    """``value`` as a list: None and booleans (``logger: false``) are empty."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def named(callback: Any) -> str:
    """The class path of a callback Namespace, or the class name of an instance."""
    return callback.class_path if isinstance(callback, Namespace) else type(callback).__name__


def keep_callbacks(trainer: Namespace, subcommand: str) -> None:
    """Drop default callbacks that the subcommand or other trainer flags rule out, instead of failing on them.

    Checkpointing, early stopping and LR monitoring only mean something while fitting; predict writes no report;
    no progress bar with ``enable_progress_bar false``; no LR monitor without a logger; no early stopping with
    ``early_stopping false``.
    """
    kept = []
    for callback in callbacks_of(trainer):
        name = named(callback)
        if subcommand != "fit" and name.endswith(FIT_ONLY_CALLBACKS):
            continue
        if subcommand == "predict" and name.endswith("Report"):
            continue
        if name.endswith("ProgressBar") and trainer.get("enable_progress_bar") is False:
            continue
        if name.endswith("LearningRateMonitor") and trainer.get("logger") in (False, None):
            continue
        kept.append(callback)
    trainer.callbacks = kept


def drop_early_stopping(trainer: Namespace) -> None:
    """Remove EarlyStopping from the callbacks (``--early_stopping false``: a recipe's length is part of it)."""
    trainer.callbacks = [c for c in callbacks_of(trainer) if not named(c).endswith("EarlyStopping")]


def name_checkpoints(trainer: Namespace, model_name: str) -> None:
    """The seed's checkpoint names: ``<model_name>-{epoch:02d}-{val_acc:.2f}``."""
    safe_name = re.sub(r"[^\w.-]+", "_", model_name)
    for callback in callbacks_of(trainer):
        if isinstance(callback, Namespace) and callback.class_path.endswith("ModelCheckpoint"):
            init_args = callback.get("init_args") or Namespace()
            if init_args.get("filename") is None:
                init_args.filename = f"{safe_name}-{{epoch:02d}}-{{val_acc:.2f}}"
            callback.init_args = init_args


def add_resume_state(trainer: Namespace, every_n_steps: int | None) -> None:
    """Every fit saves its random states and data position (ResumeState), whatever callbacks the YAML lists.

    Not with ``--trainer.enable_checkpointing false``: then nothing is saved.
    """
    if trainer.get("enable_checkpointing") is False:
        return
    callbacks = callbacks_of(trainer)
    for callback in callbacks:
        if named(callback).endswith("ResumeState"):
            if every_n_steps is not None and isinstance(callback, Namespace):
                callback.init_args = Namespace(every_n_steps=every_n_steps)
            return
    resume_state = "imagenet_cls.callbacks.resume.ResumeState"
    callbacks.append(Namespace(class_path=resume_state, init_args=Namespace(every_n_steps=every_n_steps)))
    trainer.callbacks = callbacks


def refuse_reused_checkpoint_dir(trainer: Namespace) -> None:
    """A new fit never writes into a folder that already holds checkpoints (it would replace ``last.ckpt``)."""
    for callback in callbacks_of(trainer):
        if not (isinstance(callback, Namespace) and callback.class_path.endswith("ModelCheckpoint")):
            continue
        dirpath = (callback.get("init_args") or Namespace()).get("dirpath")
        if dirpath is None and trainer.get("logger") in (False, None):
            dirpath = Path(trainer.get("default_root_dir") or ".") / "checkpoints"
        if dirpath is not None and any(Path(dirpath).glob("*.ckpt")):
            raise UserError(
                f"{dirpath} already holds checkpoints of an earlier run: resume it with --ckpt_path last, or choose "
                "another --trainer.default_root_dir"
            )


def continue_run(trainer: Namespace, checkpoint: Path) -> None:
    """Point the logger at the run that wrote ``checkpoint`` (``<save_dir>/<name>/<version>/checkpoints/``).

    A logger without a name (``name: null``, as a CSVLogger keeps from the default WandbLogger) writes
    ``<save_dir>/<version>/``: its ``save_dir`` is the folder above the version.
    """
    run = checkpoint.parent.parent
    for logger in as_list(trainer.get("logger")):
        if not isinstance(logger, Namespace) or checkpoint.parent.name != "checkpoints":
            continue
        init_args = logger.get("init_args") or Namespace()
        if logger.class_path.endswith("WandbLogger"):
            init_args.id = run.name
            init_args.save_dir = str(run.parent.parent)
        elif run.name.startswith("version_") and run.name[8:].isdigit():
            init_args.version = int(run.name[8:])
            name = init_args.get("name", "lightning_logs")
            init_args.save_dir = str(run.parent.parent if name and run.parent.name == name else run.parent)
        logger.init_args = init_args


def cpu_precision(trainer: Namespace) -> None:
    """On CPU a mixed-precision request falls back to 32-true (the seed's rule), with one log line."""
    precision = trainer.get("precision")
    if precision is None or str(precision) not in MIXED_PRECISIONS:
        return
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator == "cpu" or (accelerator == "auto" and not _cuda_available()):
        log.info("precision %s requested on CPU: using 32-true", precision)
        trainer.precision = "32-true"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def match_torchrun(trainer: Namespace) -> None:
    """Under torchrun, ``--trainer.num_nodes`` x ``--trainer.devices`` must be the processes it started.

    torchrun gives each process ``WORLD_SIZE`` (all nodes) and ``LOCAL_WORLD_SIZE`` (its node); a mismatch would
    otherwise stop every process with Lightning's traceback ("does not match the world size") once fit starts.
    """
    import os

    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    if not TorchElasticEnvironment.detect() or not os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        return
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
    nodes, devices = trainer.get("num_nodes") or 1, trainer.get("devices")
    count = _device_count(devices, str(trainer.get("accelerator") or "auto"))
    if nodes * local == world and count in (None, local):
        return
    raise UserError(
        f"torchrun started {world} processes ({local} on each of {world // max(local, 1)} nodes) but this run asks "
        f"for --trainer.num_nodes {nodes} x --trainer.devices {devices}: give --trainer.num_nodes "
        f"{world // max(local, 1)} --trainer.devices {local} (torchrun's --nnodes and --nproc-per-node)"
    )


def _device_count(devices: Any, accelerator: str) -> int | None:
    """How many processes per node ``--trainer.devices`` asks for; None where only the hardware can tell."""
    if isinstance(devices, list | tuple):
        return len(devices)
    text = str(devices).strip()
    if text.isdigit():
        return int(text)
    if "," in text:
        return len([part for part in text.split(",") if part.strip()])
    return 1 if text == "auto" and accelerator == "cpu" else None
