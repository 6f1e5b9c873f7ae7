"""ImageNetCLI: LightningCLI over ClassificationModel and ImageNetDataModule, with the tool's defaults and checks.

It extends LightningCLI through its public hooks (``parse_arguments``, ``add_arguments_to_parser``,
``before_instantiate_classes``, ``after_instantiate_classes``, ``after_fit``, ``trainer_defaults``) and the one
per-subcommand hook of :mod:`imagenet_cls.cli.lightning_adapter`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback

from imagenet_cls.callbacks.peers import PeerWatch
from imagenet_cls.cli import config_edits as edits
from imagenet_cls.cli.failures import FailureAdvice
from imagenet_cls.cli.lightning_adapter import (
    SubcommandArgumentsCLI,
    drop_unset_wandb_anonymous,
    name_lost_rank_in_launcher_observer,
)
from imagenet_cls.cli.wandb_setup import wandb_offline_without_key
from imagenet_cls.data.datamodule import ImageNetDataModule, scan_data_dir
from imagenet_cls.data.layout import DatasetLayout
from imagenet_cls.data.secrets import redact_config
from imagenet_cls.errors import MissingPathError, UserError, disk_full, ignore_file_size_signal, report_user_error
from imagenet_cls.logs import configure_logging
from imagenet_cls.model.module import LOGGED_METRICS, ClassificationModel
from imagenet_cls.runs.checkpoints import BestCheckpointLink, find_checkpoint, load_checkpoint
from imagenet_cls.runs.folders import RunFolder, run_folder, timestamp

log = logging.getLogger("imagenet_cls")

CHECKED_HPARAMS = ("model_name", "num_classes", "image_size")
# GracefulShutdown's exits: 128 + SIGINT, SIGTERM, SIGUSR1 (SLURM's requeue signal).
SIGNAL_EXIT_CODES = {128 + int(s) for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", 10))}
# Re-exported for configs and tests that name them here.
DEFAULT_CALLBACKS, DEFAULT_LOGGER = edits.DEFAULT_CALLBACKS, edits.DEFAULT_LOGGER


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run's folder (beside ``checkpoints/``), never over a file.

    W&B keeps its own files in ``<save_dir>/wandb``; predict saves beside its predictions.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = run_folder(trainer, stage)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_filename
        stage_name = getattr(stage, "value", stage)
        attempt = 0
        while path.exists():  # never over an earlier run's config
            attempt += 1
            path = folder / f"config-{timestamp()}-{stage_name}-{attempt}.yaml"
        self.parser.save(redact_config(self.config), path, skip_unset=False, overwrite=False, multifile=self.multifile)


class ImageNetCLI(SubcommandArgumentsCLI):
    """``fit`` / ``validate`` / ``test`` / ``predict`` for image classifiers, configured from YAML."""

    def __init__(self, args: list[str] | None = None, run: bool = True, failure_advice: FailureAdvice | None = None):
        self._layout: DatasetLayout | None = None  # the data folder, scanned once before the model is built
        self._given_model: dict[str, Any] = {}  # model options as the user gave them, before the checkpoint's
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
            trainer_defaults={  # present whatever callbacks the YAML lists (run folder, best.ckpt, lost DDP peer ...)
                "callbacks": [RunFolder(), BestCheckpointLink(), PeerWatch(), failure_advice or FailureAdvice()]
            },
            args=args,
            run=run,
        )

    # ---- parser ------------------------------------------------------------------------------------------------
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "trainer.callbacks": edits.DEFAULT_CALLBACKS,
                "trainer.logger": edits.DEFAULT_LOGGER,
                "trainer.default_root_dir": "runs",
            }
        )

    def add_subcommand_arguments(self, parser: LightningArgumentParser, subcommand: str) -> None:
        if subcommand == "predict":
            from imagenet_cls.callbacks.writer import PredictionWriter

            parser.add_lightning_class_args(PredictionWriter, "writer")
            parser.set_defaults({"return_predictions": False})  # the writer streams; keep no outputs in memory
        if subcommand != "fit":
            return
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
        parser.add_argument(
            "--early_stopping",
            type=bool,
            default=True,
            help="Keep the EarlyStopping callback of trainer.callbacks (false: train for max_epochs, as recipes do).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then resolve ``--ckpt_path last|best`` and check the checkpoint before Lightning reads it.

        Lightning then merges the checkpoint's hyper-parameters into the model options; ``_given_model`` keeps
        what the user gave, so that a contradiction is an error (``before_instantiate_classes``).
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        root = Path(config.trainer.default_root_dir or ".")
        if subcommand == "fit" and not ckpt_path and _slurm_restart():
            ckpt_path = _last_checkpoint_if_any(root)  # a requeued SLURM job continues where it stopped
            if ckpt_path:
                log.info("SLURM restart %s: resuming from %s", os.environ["SLURM_RESTART_COUNT"], ckpt_path)
                config.ckpt_path = ckpt_path
        if ckpt_path in ("last", "best"):
            ckpt_path = config.ckpt_path = str(find_checkpoint(ckpt_path, root))
            if Path(ckpt_path).name.startswith("last"):
                edits.continue_run(config.trainer, Path(ckpt_path))
        if not ckpt_path or ckpt_path in ("hpc", "registry"):
            return
        if not Path(ckpt_path).is_file():
            raise MissingPathError(f"--ckpt_path {ckpt_path} is not a file: give a .ckpt written by fit")
        trusted = config.get("weights_only") is False
        load_checkpoint(Path(ckpt_path), trusted=trusted, mmap=True)  # refuses pickled code with one line
        if "weights_only" in config and not trusted:
            config.weights_only = True  # Lightning's own load of the file: as safe as ours (its default is False)
        self._given_model = {key: config.model.get(key) for key in CHECKED_HPARAMS}

    # ---- before instantiation: decide what depends on several sections ------------------------------------------
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        self._refuse_contradictions(config, ckpt_path)
        if self.subcommand == "predict":
            config.data.mode = "predict"  # the subcommand says it; --data.mode predict is not needed
        if ckpt_path:
            config.model.pretrained = False  # weights come from the checkpoint, not from the original source
        self._layout = self._decide_classes(config, ckpt_path)
        trainer = config.trainer
        if self.subcommand == "fit":
            edits.name_checkpoints(trainer, config.model.model_name)
            edits.add_resume_state(trainer, config.get("checkpoint_every_n_steps"))
            if config.get("early_stopping") is False:
                edits.drop_early_stopping(trainer)
            if not ckpt_path:
                edits.refuse_reused_checkpoint_dir(trainer)
        else:
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks")
        edits.keep_callbacks(trainer, self.subcommand or "fit")
        edits.cpu_precision(trainer)
        edits.match_torchrun(trainer)
        if self.subcommand == "predict":
            trainer.logger = False  # predict logs nothing; no W&B run for it
        else:
            wandb_offline_without_key(trainer, edits.as_list(trainer.get("logger")))

    def _refuse_contradictions(self, config: Namespace, ckpt_path: str | None) -> None:
        """A model option the user set that the checkpoint contradicts is an error, never silently replaced."""
        if not ckpt_path or not self._given_model:
            return
        defaults = self._parser(self.subcommand).get_defaults().model
        for key, value in self._given_model.items():
            loaded = config.model.get(key)
            if value != defaults.get(key) and value != loaded:
                raise UserError(
                    f"--model.{key} {value!r} contradicts the checkpoint {ckpt_path} ({key}={loaded!r}): "
                    "drop the option or use a matching checkpoint"
                )

    def _decide_classes(self, config: Namespace, ckpt_path: str | None) -> DatasetLayout | None:
        """The model's classes and names, decided once; returns the scanned data folder (None for predict).

        fit takes the data folder's classes. validate/test/predict keep the classes of the checkpoint or of the
        pretrained weights; the data folders map onto them by name.
        """
        from imagenet_cls.data.classes import class_names, classes_without_data, read_class_map
        from imagenet_cls.model.backbones import check_model_name

        model, data = config.model, config.data
        subcommand = self.subcommand or "fit"  # run=False: the caller builds everything and fits
        check_model_name(model.model_name)
        if subcommand == "predict" and not data.get("predict_path"):
            raise UserError("predict needs --data.predict_path <file|folder|glob|list>")
        if subcommand != "fit" and not ckpt_path and not model.get("pretrained"):
            raise UserError(
                f"{subcommand} needs trained weights: give --ckpt_path (a checkpoint of fit, or last/best) or "
                "--model.pretrained (a weights file or package); a random network's labels mean nothing"
            )
        known = model.get("classes")
        if not known and subcommand != "fit":  # pretrained weights: their own classes, e.g. ImageNet's
            known = classes_without_data(model.num_classes, data.get("class_map"))
        if subcommand == "predict":
            if known:
                names = list(model.get("class_names") or class_names(known))
                if data.get("class_map"):
                    override = read_class_map(Path(data.class_map))
                    names = [override.get(folder, name) for folder, name in zip(known, names)]
                model.classes, model.class_names = list(known), names
            return None
        layout = scan_data_dir(
            data.data_dir, data.split, data.split_seed, data.get("storage_options"), data.get("cache_dir")
        )
        if known and list(known) != layout.classes:
            unknown = [folder for folder in layout.classes if folder not in set(known)]
            if subcommand == "fit" or unknown:
                source = f"checkpoint {ckpt_path}" if ckpt_path else "pretrained model"
                strangers = f", {_preview(unknown)} unknown to the model," if unknown else ""
                raise UserError(
                    f"--data.data_dir {data.data_dir} has {len(layout.classes)} classes ({_preview(layout.classes)})"
                    f"{strangers} but the {source} was trained on {len(known)} ({_preview(known)}): "
                    "use the matching data or checkpoint"
                )
        folders = list(known) if known else layout.classes
        model.classes, model.num_classes = folders, len(folders)
        model.class_names = class_names(folders, data.get("class_map") or layout.class_map, data.data_dir)
        return layout

    # ---- after instantiation: hand the decisions to the data module --------------------------------------------
    def after_instantiate_classes(self) -> None:
        drop_unset_wandb_anonymous(self.trainer)
        name_lost_rank_in_launcher_observer()  # a rank that dies is named even when the launcher sees it first
        if (self.subcommand or "fit") != "fit" and self.model.head_reinitialised:
            hparams = self.model.hparams
            raise UserError(
                f"--model.pretrained {hparams.pretrained} has a classifier for another number of classes than the "
                f"{hparams.num_classes} of --model.num_classes / the data: only fit re-initialises a head; give the "
                "file's number of classes (and --data.class_map), or fit first"
            )
        self.datamodule.set_preprocessing(self.model.data_config, self.model.train_input_size)
        if self.subcommand == "predict":  # display copies only for the annotated images a writer will draw
            self.datamodule.set_display(any(getattr(c, "write_images", False) for c in self.trainer.callbacks))
        if self._layout is not None:
            self.datamodule.use_layout(self._layout, self.model.hparams.classes)
            if self.datamodule.class_subset and self.subcommand in ("validate", "test"):
                index = {folder: i for i, folder in enumerate(self.model.hparams.classes)}
                self.model.restrict_to_classes(sorted(index[folder] for folder in self._layout.classes))
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


def _slurm_restart() -> bool:
    """Whether this is a SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def _last_checkpoint_if_any(root: Path) -> str | None:
    try:
        return "last" if find_checkpoint("last", root) else None
    except MissingPathError:  # requeued before the first checkpoint: start again
        return None


def _preview(classes: list[str]) -> str:
    return ", ".join(list(classes)[:3]) + (", ..." if len(classes) > 3 else "")


def main(args: list[str] | None = None) -> int:
    """Run the CLI; a user mistake prints one ``error:`` line and returns 2 instead of a traceback."""
    configure_logging()
    ignore_file_size_signal()
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["serve"]:  # not a LightningCLI subcommand: a parser of its own (cli.py serve --help)
        from imagenet_cls.cli.serve_command import serve_main

        try:
            return serve_main(argv[1:])
        except UserError as error:
            return report_user_error(error)
    advice = FailureAdvice()
    try:
        ImageNetCLI(args=args, failure_advice=advice)
    except UserError as error:
        return report_user_error(error)
    except (RuntimeError, OSError) as error:  # out of memory, a lost DDP process, a full disk: one line
        if advice.advice is None and disk_full(error) is None:
            raise
        return report_user_error(UserError(advice.advice) if advice.advice else disk_full(error))
    except SystemExit as exit_:
        if exit_.code in SIGNAL_EXIT_CODES:  # saved and exiting for a signal: a later SIGTERM to the job is moot
            for signum in (signal.SIGTERM, signal.SIGINT):  # (Lightning's teardown put the default handlers back)
                signal.signal(signum, signal.SIG_IGN)
        raise
    return 0
