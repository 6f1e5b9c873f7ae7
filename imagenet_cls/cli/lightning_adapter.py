"""The one place that relies on private Lightning names: per-subcommand arguments, and WandbLogger's init options.

LightningCLI's public ``add_arguments_to_parser`` runs for every subcommand's parser without saying which one.
``_prepare_subcommand_parser(klass, subcommand, **kwargs)`` is where it builds each of them; this adapter hands the
finished parser and the subcommand's name to ``add_subcommand_arguments``. ``tests/test_lightning_adapter.py`` fails
when Lightning renames or stops calling it; ``tests/test_progress.py`` fails when W&B's "anonymous" warning
comes back.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class SubcommandArgumentsCLI(LightningCLI):
    """LightningCLI with a per-subcommand argument hook."""

    def add_subcommand_arguments(self, parser: LightningArgumentParser, subcommand: str) -> None:
        """Implement to add arguments to the parser of ``subcommand`` only (they are not passed to the trainer)."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        self.add_subcommand_arguments(parser, subcommand)
        return parser


def drop_unset_wandb_anonymous(trainer: Trainer) -> None:
    """Leave ``anonymous`` out of ``wandb.init`` when it is unset.

    Lightning's WandbLogger always passes ``anonymous=None`` (in its private ``_wandb_init``), and W&B (0.31 here)
    answers with a warning that the setting "has no effect".
    """
    for logger in trainer.loggers:
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]
