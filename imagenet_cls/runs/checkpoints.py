"""The one place checkpoints and weight files are read: ``torch.load`` with ``weights_only=True``.

Used for ``--ckpt_path`` (fit/validate/test/predict, export) and ``--model.pretrained`` files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from imagenet_cls.errors import UserError


def load_checkpoint(path: Path, trusted: bool = False, option: str = "--ckpt_path") -> Any:
    """``torch.load`` with ``weights_only=True``: a file carrying pickled code is refused, never run.

    Args:
        path: The checkpoint or weights file.
        trusted: Load arbitrary pickled objects (only with the user's explicit ``--weights_only false``).
        option: The option that named the file, for the error messages.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        hint = (
            "Only if you trust where it came from, add --weights_only false"
            if option == "--ckpt_path"
            else "save it as a plain state dict of tensors or as .safetensors"
        )
        raise UserError(
            f"{option} {path} holds pickled objects that could run code ({_reason(error)}); refused. {hint}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"{option} {path} is not a readable checkpoint: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """The informative line of a torch.load error (e.g. ``Unsupported global: GLOBAL builtins.open``)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line] or [type(error).__name__]
    detail = next((line for line in lines if "Unsupported global" in line), lines[0])
    return detail[:160]
