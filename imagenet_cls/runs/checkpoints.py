"""Checkpoints: the one place they are read (``torch.load`` with ``weights_only=True``) and found by name.

Reading is used for ``--ckpt_path`` (fit/validate/test/predict, export) and ``--model.pretrained`` files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from imagenet_cls.errors import UserError


def load_checkpoint(path: Path, trusted: bool = False, option: str = "--ckpt_path", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``: a file carrying pickled code is refused, never run.

    Args:
        path: The checkpoint or weights file.
        trusted: Load arbitrary pickled objects (only with the user's explicit ``--weights_only false``).
        option: The option that named the file, for the error messages.
        mmap: Map the file instead of reading it (for a look at the hyper-parameters only).
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)
    except pickle.UnpicklingError as error:
        hint = (
            "Only if you trust where it came from, add --weights_only false"
            if option == "--ckpt_path"
            else "save it as a plain state dict of tensors or as .safetensors"
        )
        raise UserError(
            f"{option} {path} holds pickled objects that could run code ({_reason(error)}); refused. {hint}"
        ) from None
    except Exception as error:  # a damaged file fails anywhere in the zip reader or the unpickler (fuzzed)
        raise UserError(f"{option} {path} is not a readable checkpoint: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """The informative line of a torch.load error (e.g. ``Unsupported global: GLOBAL builtins.open``)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line] or [type(error).__name__]
    detail = next((line for line in lines if "Unsupported global" in line), lines[0])
    return detail[:160]


def find_checkpoint(name: str, root: Path) -> Path:
    """The newest ``last*.ckpt`` (``name="last"``) or ``best.ckpt`` (``name="best"``) under ``root``.

    Raises:
        MissingPathError: there is none.
    """
    from imagenet_cls.errors import MissingPathError

    pattern = "last*.ckpt" if name == "last" else "best.ckpt"
    candidates = sorted((p for p in root.rglob(pattern) if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise MissingPathError(
            f"--ckpt_path {name}: no {pattern} under {root} (--trainer.default_root_dir): give a checkpoint path"
            + (" or start without --ckpt_path" if name == "last" else " or fit first")
        )
    return candidates[-1]


def last_checkpoint_path(trainer: Trainer) -> Path:
    """Where ``last.ckpt`` of this run goes: beside the ModelCheckpoint's files, else ``<root>/checkpoints``."""
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.dirpath:
        return Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class BestCheckpointLink(Callback):
    """Keeps ``<run folder>/best.ckpt``: a link to the file the run's ModelCheckpoint holds as best.

    ``--ckpt_path best`` finds it. Refreshed whenever a checkpoint is written, on rank 0.
    """

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best or not trainer.is_global_zero:
            return
        best = Path(best)
        folder = best.parent.parent if best.parent.name == "checkpoints" else best.parent  # the run's folder
        link, target = folder / BEST_NAME, os.path.relpath(best, folder)  # relative: the run folder can move
        if link.is_symlink() and os.readlink(link) == target:
            return
        temporary = link.with_name(f".{BEST_NAME}.tmp")
        temporary.unlink(missing_ok=True)
        try:
            temporary.symlink_to(target)
        except OSError:  # no symbolic links on this filesystem: --ckpt_path best then says so
            return
        os.replace(temporary, link)


BEST_NAME = "best.ckpt"
