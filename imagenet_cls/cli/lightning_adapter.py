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


def name_lost_rank_in_launcher_observer() -> None:
    """Make Lightning's launcher say, as our one ``error:`` line, which rank died before it ends the run.

    The first process of a DDP run started by Lightning polls its child processes every 5 s (the private
    ``_ChildProcessObserver``) and, when one has died, SIGKILLs every process, itself included, after logging
    "Child process ... terminated": when that poll comes before the survivors' failed collective (``PeerWatch``),
    nothing else is printed. Idempotent; ``tests/test_ddp_faults.py`` kills a rank and reads the line.
    """
    import sys

    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    original = _ChildProcessObserver._terminate_all
    if getattr(original, "names_lost_rank", False):
        return

    def terminate_all(observer: _ChildProcessObserver) -> None:
        for rank, process in enumerate(observer._child_processes, start=1):
            if process.returncode:
                how = f"killed by signal {-process.returncode}" if process.returncode < 0 else "crashed"
                print(
                    f"error: fit: lost rank {rank} (pid {process.pid}) exited ({how}), seen by the launcher (rank 0):"
                    " the run stopped",
                    file=sys.stderr,
                    flush=True,
                )
        original(observer)

    terminate_all.names_lost_rank = True
    _ChildProcessObserver._terminate_all = terminate_all
