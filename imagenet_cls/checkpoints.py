"""Reading a `--ckpt_path` checkpoint (fit/validate/test/predict and export) safely, with `weights_only=True`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagenet_cls.errors import UserError


def load_checkpoint(path: Path, trusted: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: a checkpoint carrying pickled code is refused, never run."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--ckpt_path {path} holds pickled objects that could run code ({first[:160]}); refused. "
            "Only if you trust where it came from, add --weights_only false"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(
            f"--ckpt_path {path} is not a readable checkpoint: {str(error).splitlines()[0][:160]}"
        ) from None
