"""ImageNetCLI: LightningCLI over ClassificationModel and ImageNetDataModule, with the tool's defaults and checks."""

from __future__ import annotations

import logging
import netrc
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from imagenet_cls.data.datamodule import ImageNetDataModule
from imagenet_cls.errors import MissingPathError, UserError
from imagenet_cls.model.module import LOGGED_METRICS, ClassificationModel
from imagenet_cls.runs.checkpoints import load_checkpoint

log = logging.getLogger("imagenet_cls")

DEFAULT_CALLBACKS = [
    {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val_acc", "mode": "max", "save_top_k": 1, "save_last": True},
    },
    {
        "class_path": "lightning.pytorch.callbacks.EarlyStopping",
        "init_args": {"monitor": "val_acc", "mode": "max", "patience": 10},
    },
    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
    {"class_path": "imagenet_cls.callbacks.progress.AutoProgressBar"},  # Rich on a terminal, plain lines in a file
    {"class_path": "imagenet_cls.callbacks.signals.GracefulShutdown"},
    {"class_path": "imagenet_cls.callbacks.report.EvaluationReport"},
]
DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "ImageNet"}}
MIXED_PRECISIONS = {"16", "16-mixed", "bf16", "bf16-mixed", "transformer-engine", "transformer-engine-float16"}
CHECKED_HPARAMS = ("model_name", "num_classes", "image_size")
FIT_ONLY_CALLBACKS = ("ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "GracefulShutdown", "ResumeState")
NAMED_CKPT_PATHS = {"last", "best", "hpc", "registry"}


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run's folder (beside ``checkpoints/``), never over a file.

    W&B keeps its own files in ``<save_dir>/wandb``; predict saves beside its predictions.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = self.folder = run_dir(trainer, stage)  # the evaluation report goes here too
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_filename
        stage_name = getattr(stage, "value", stage)
        attempt = 0
        while path.exists():  # never over an earlier run's config
            attempt += 1
            path = folder / f"config-{time.strftime('%Y%m%d-%H%M%S')}-{stage_name}-{attempt}.yaml"
        self.parser.save(self.config, path, skip_none=False, overwrite=False, multifile=self.multifile)


def run_dir(trainer: Trainer, stage: str = "fit") -> Path:
    """The run's folder: where Lightning's ModelCheckpoint puts ``checkpoints/``, or predict's output folder."""
    if stage == "predict":
        for callback in trainer.callbacks:
            if hasattr(callback, "run_dir"):
                return Path(callback.run_dir)
    if not trainer.loggers:
        if stage != "fit":  # validate/test without a logger: a folder per run, not loose files in the root
            return Path(trainer.default_root_dir) / getattr(stage, "value", str(stage)) / time.strftime("%Y%m%d-%H%M%S")
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    save_dir = logger.save_dir or trainer.default_root_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(save_dir) / str(logger.name) / version


class ImageNetCLI(LightningCLI):
    """``fit`` / ``validate`` / ``test`` / ``predict`` for image classifiers, configured from YAML."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            ClassificationModel,
            ImageNetDataModule,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"save_to_log_dir": False},
            # Checkpoints keep plain hyper-parameters: no class or function path that loading would import and call.
            load_from_checkpoint_support=False,
            seed_everything_default=42,
            auto_configure_optimizers=False,  # the model's own configure_optimizers is the one place for that
            parser_kwargs={"default_env": False},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "trainer.callbacks": DEFAULT_CALLBACKS,
                "trainer.logger": DEFAULT_LOGGER,
                "trainer.default_root_dir": "runs",
            }
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            from imagenet_cls.callbacks.writer import PredictionWriter

            parser.add_lightning_class_args(PredictionWriter, "writer")
        if subcommand == "fit":
            parser.add_argument(
                "--test_after_fit",
                type=bool,
                default=True,
                help="After fit, test the best checkpoint when the data has a test split.",
            )
            parser.add_argument(
                "--checkpoint_every_n_steps",
                type=int | None,
                default=None,
                help="Also save last.ckpt every N optimizer steps, with the data position and random states, so a "
                "run killed mid-epoch resumes exactly with --ckpt_path last.",
            )
            own = ("test_after_fit", "checkpoint_every_n_steps")
            self._subcommand_method_arguments[subcommand] = [
                a for a in self._subcommand_method_arguments[subcommand] if a not in own
            ]
        return parser

    # ---- checkpoint hyper-parameters -----------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Load the checkpoint's model hyper-parameters safely, refusing values the user set that contradict them.

        ``--ckpt_path last`` is resolved here to the newest ``last*.ckpt`` under ``trainer.default_root_dir``
        (an error when there is none) and the logger continues that run's folder.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            ckpt_path = config.ckpt_path = str(_find_last_checkpoint(Path(config.trainer.default_root_dir or ".")))
            _continue_run(config.trainer, Path(ckpt_path))
        if not ckpt_path or ckpt_path in NAMED_CKPT_PATHS:
            return
        if not Path(ckpt_path).is_file():
            raise MissingPathError(f"--ckpt_path {ckpt_path} is not a file: give a .ckpt written by fit")
        trusted = config.get("weights_only") is False
        hparams = dict(load_checkpoint(Path(ckpt_path), trusted=trusted).get("hyper_parameters", {}))
        if "weights_only" in config and not trusted:
            config.weights_only = True  # Lightning's own load of the file: as safe as ours (its default is False)
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if not hparams:
            return
        parser_defaults = self._parser(subcommand).get_defaults().model
        given = {key: config.model.get(key) for key in CHECKED_HPARAMS}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        loaded = self.config[subcommand].model
        for key, value in given.items():
            if value != parser_defaults.get(key) and value != loaded.get(key):
                raise UserError(
                    f"--model.{key} {value!r} contradicts the checkpoint {ckpt_path} ({key}={loaded.get(key)!r}): "
                    "drop the option or use a matching checkpoint"
                )

    # ---- before instantiation: resolve what depends on several sections --------------------------------------
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path:
            config.model.pretrained = False  # weights come from the checkpoint, not from the original source
        self._resolve_classes(config, ckpt_path)
        if self.subcommand == "fit":
            self._name_checkpoints(config)
            _add_resume_state(config)
            if not ckpt_path:
                _refuse_reused_checkpoint_dir(config.trainer)
        else:
            config.trainer.callbacks = [c for c in _as_list(config.trainer.get("callbacks")) if not _fit_only(c)]
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks")
        config.trainer.callbacks = [c for c in _as_list(config.trainer.get("callbacks")) if _fits(c, config.trainer)]
        self._cpu_precision(config.trainer)
        if self.subcommand == "predict":
            config.trainer.logger = False  # predict logs nothing; no W&B run for it
            config.trainer.callbacks = [c for c in config.trainer.callbacks if not _named(c).endswith("Report")]
        else:
            self._wandb_offline_without_key(config.trainer)

    def _resolve_classes(self, config: Namespace, ckpt_path: str | None) -> None:
        from imagenet_cls.model.backbones import check_model_name

        check_model_name(config.model.model_name)
        data = ImageNetDataModule(**{k: v for k, v in config.data.items()})
        if data.mode == "predict":
            if not config.model.get("classes"):  # no checkpoint: e.g. pretrained ImageNet weights
                classes = data.classes_without_data(config.model.num_classes)
                if classes:
                    config.model.classes, config.model.class_names = classes, data.class_names(classes)
            return
        classes = data.classes
        saved = config.model.get("classes")
        if saved and list(saved) != classes:
            raise UserError(
                f"--data.data_dir {data.data_dir} has {len(classes)} classes ({_preview(classes)}) but the checkpoint "
                f"{ckpt_path or ''} was trained on {len(saved)} ({_preview(saved)}): "
                "use the matching data or checkpoint"
            )
        config.model.classes = classes
        config.model.num_classes = len(classes)
        config.model.class_names = data.class_names(classes)

    @staticmethod
    def _name_checkpoints(config: Namespace) -> None:
        """The seed's checkpoint names: ``<model_name>-{epoch:02d}-{val_acc:.2f}``."""
        safe_name = re.sub(r"[^\w.-]+", "_", config.model.model_name)
        for callback in _as_list(config.trainer.get("callbacks")):
            if isinstance(callback, Namespace) and callback.class_path.endswith("ModelCheckpoint"):
                init_args = callback.get("init_args") or Namespace()
                if init_args.get("filename") is None:
                    init_args.filename = f"{safe_name}-{{epoch:02d}}-{{val_acc:.2f}}"
                callback.init_args = init_args

    @staticmethod
    def _cpu_precision(trainer: Namespace) -> None:
        """On CPU a mixed-precision request falls back to 32-true (the seed's rule), with one log line."""
        precision = trainer.get("precision")
        if precision is None or str(precision) not in MIXED_PRECISIONS:
            return
        accelerator = str(trainer.get("accelerator") or "auto")
        if accelerator == "cpu" or (accelerator == "auto" and not _cuda_available()):
            log.info("precision %s requested on CPU: using 32-true", precision)
            trainer.precision = "32-true"

    @staticmethod
    def _wandb_offline_without_key(trainer: Namespace) -> None:
        """Without W&B credentials the W&B logger goes offline, with one log line, never a prompt."""
        for logger in _as_list(trainer.get("logger")):
            if not (isinstance(logger, Namespace) and logger.class_path.endswith("WandbLogger")):
                continue
            init_args = logger.get("init_args") or Namespace()
            if init_args.get("save_dir") in (None, "."):
                init_args.save_dir = trainer.get("default_root_dir") or "."
            online = not init_args.get("offline") and not os.environ.get("WANDB_MODE")
            reason = None
            if online and not _wandb_api_key_present():
                reason = "no API key found"
            elif online:
                reason = _wandb_unreachable()
            if reason:
                log.info(
                    "W&B: %s; logging offline under %s (upload later with `wandb sync`)", reason, init_args.save_dir
                )
                init_args.offline = True
                os.environ.setdefault("WANDB_SILENT", "true")  # our line above says it all; no banner
            logger.init_args = init_args

    # ---- after instantiation ---------------------------------------------------------------------------------
    def after_instantiate_classes(self) -> None:
        _drop_unset_wandb_anonymous(self.trainer)
        if self.subcommand != "fit":
            return
        for callback in self.trainer.callbacks:
            monitor = getattr(callback, "monitor", None)
            if monitor and not monitor.startswith("lr-") and monitor not in LOGGED_METRICS:
                raise UserError(
                    f"{type(callback).__name__}(monitor={monitor!r}) watches a metric that is never logged: "
                    f"use one of {', '.join(LOGGED_METRICS)}"
                )

    def after_fit(self) -> None:
        """The seed ran ``trainer.test`` after ``fit``: test the best checkpoint when a test split exists."""
        if not self.config.fit.get("test_after_fit", True) or self.trainer.interrupted:
            return
        if not self.datamodule.has_test_split:
            log.info("no test split: skipping the test after fit")
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run ``subcommand``; out-of-memory and a dead DataLoader worker become one-line errors with a remedy."""
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
            message = _resource_failure(error, self.config[subcommand], self.trainer)
            if message is None:
                raise
            raise UserError(f"{subcommand}: {message}") from None

    def predict(
        self,
        model: LightningModule,
        datamodule: ImageNetDataModule,
        return_predictions: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Predict without keeping every batch's output in memory, unless ``--return_predictions true``."""
        return self.trainer.predict(model, datamodule=datamodule, return_predictions=bool(return_predictions), **kwargs)


def _add_resume_state(config: Namespace) -> None:
    """Every fit saves its random states and data position (ResumeState), whatever callbacks the YAML lists.

    Not with ``--trainer.enable_checkpointing false``: then nothing is saved.
    """
    if config.trainer.get("enable_checkpointing") is False:
        return
    callbacks = _as_list(config.trainer.get("callbacks"))
    every = config.get("checkpoint_every_n_steps")
    for callback in callbacks:
        if _named(callback).endswith("ResumeState"):
            if every is not None and isinstance(callback, Namespace):
                callback.init_args = Namespace(every_n_steps=every)
            return
    callbacks.append(
        Namespace(class_path="imagenet_cls.callbacks.resume.ResumeState", init_args=Namespace(every_n_steps=every))
    )
    config.trainer.callbacks = callbacks


def _resource_failure(error: RuntimeError, config: Namespace, trainer: Trainer) -> str | None:
    """A one-line explanation of out-of-memory or a killed DataLoader worker; None for other errors."""
    import torch

    text = str(error)
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    from imagenet_cls.callbacks.resume import last_checkpoint_path

    last = last_checkpoint_path(trainer)
    kept = f"; the last checkpoint ({last}) is intact: resume with --ckpt_path last" if last.is_file() else ""
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return (
            f"out of memory ({first}): lower --data.batch_size (now {config.data.batch_size}) or use "
            f"--trainer.precision bf16-mixed (now {config.trainer.precision}), with "
            f"--trainer.accumulate_grad_batches to keep the effective batch size{kept}"
        )
    if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
        return (
            f"a data-loading worker died ({first}), usually killed for lack of memory: lower --data.num_workers "
            f"(now {config.data.num_workers}) or --data.batch_size{kept}"
        )
    return None


def _refuse_reused_checkpoint_dir(trainer: Namespace) -> None:
    """A new fit never writes into a folder that already holds checkpoints (it would replace ``last.ckpt``)."""
    for callback in _as_list(trainer.get("callbacks")):
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


def _find_last_checkpoint(root: Path) -> Path:
    candidates = sorted(root.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise MissingPathError(
            f"--ckpt_path last: no last*.ckpt under {root} (--trainer.default_root_dir): give a checkpoint path or "
            "start without --ckpt_path"
        )
    return candidates[-1]


def _continue_run(trainer: Namespace, checkpoint: Path) -> None:
    """Point the logger at the run that wrote ``checkpoint`` (``<save_dir>/<name>/<version>/checkpoints/``)."""
    run = checkpoint.parent.parent
    for logger in _as_list(trainer.get("logger")):
        if not isinstance(logger, Namespace) or checkpoint.parent.name != "checkpoints":
            continue
        init_args = logger.get("init_args") or Namespace()
        if logger.class_path.endswith("WandbLogger"):
            init_args.id = run.name
            init_args.save_dir = str(run.parent.parent)
        elif run.name.startswith("version_") and run.name[8:].isdigit():
            init_args.version = int(run.name[8:])
            init_args.save_dir = str(run.parent.parent)
        logger.init_args = init_args


def _drop_unset_wandb_anonymous(trainer: Trainer) -> None:
    """Leave ``anonymous`` out of ``wandb.init`` when it is unset.

    Lightning's WandbLogger always passes ``anonymous=None``, and W&B (0.31 here) answers with a warning that the
    setting "has no effect".
    """
    for logger in trainer.loggers:
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]


def _fits(callback: Any, trainer: Namespace) -> bool:
    """Drop default callbacks that other trainer flags rule out, instead of failing on the combination."""
    name = _named(callback)
    if name.endswith("ProgressBar") and trainer.get("enable_progress_bar") is False:
        return False
    return not (name.endswith("LearningRateMonitor") and trainer.get("logger") in (False, None))


def _fit_only(callback: Any) -> bool:
    """Checkpointing, early stopping and LR monitoring only mean something while fitting."""
    return _named(callback).endswith(FIT_ONLY_CALLBACKS)


def _named(callback: Any) -> str:
    return callback.class_path if isinstance(callback, Namespace) else type(callback).__name__


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def _preview(classes: list[str]) -> str:
    return ", ".join(list(classes)[:3]) + (", ..." if len(classes) > 3 else "")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _wandb_unreachable(timeout: float = 5.0) -> str | None:
    """Why the W&B server cannot be reached (a bounded TCP connect to WANDB_BASE_URL), or None when it can."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except OSError as error:
        return f"{url.hostname}:{port} unreachable ({error.strerror or type(error).__name__})"


def _wandb_api_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


# Lightning's start-up lines nobody needs: promotional tips, an internal step, hardware that is not there.
LIGHTNING_NOISE = (
    "💡 Tip",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "TPU available: False",
)


def _drop_lightning_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(LIGHTNING_NOISE)


def main(args: list[str] | None = None) -> int:
    """Run the CLI; a user mistake prints one ``error:`` line and returns 2 instead of a traceback."""
    _configure_logging()
    try:
        ImageNetCLI(args=args)
    except UserError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


def _one_line(error: UserError) -> str:
    """The message of ``error``, one line.

    A UserError re-raised from a DataLoader worker carries the worker's traceback: its last line is the message.
    """
    text = str(error).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    return re.sub(r"^[\w.]*Error: ", "", last)


def _configure_logging() -> None:
    """Our log lines on stderr; Lightning's and torch's noise filtered at its source (the demo calls this too)."""
    # Lightning 2.6 builds torch's deprecated LeafSpec (torch 2.14 here warns); nothing a user can change.
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning, module=r"lightning\.pytorch"
    )
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if _drop_lightning_noise not in handler.filters:
            handler.addFilter(_drop_lightning_noise)
    logger = logging.getLogger("imagenet_cls")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
