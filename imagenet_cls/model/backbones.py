"""Creating the classification network: any timm model, or a torchvision model under the ``tv:`` prefix."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from imagenet_cls.errors import UserError

TORCHVISION_PREFIX = "tv:"
IMAGENET_DEFAULTS = {
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


def check_model_name(model_name: str) -> None:
    """Raise a one-line error listing close matches when ``model_name`` is not a known architecture."""
    if model_name.startswith(TORCHVISION_PREFIX):
        import torchvision

        known = torchvision.models.list_models()
        name = model_name[len(TORCHVISION_PREFIX) :]
        prefix = TORCHVISION_PREFIX
    else:
        import timm

        known = timm.list_models()
        name = model_name
        prefix = ""
        if timm.is_model(name):
            return
    if name in known:
        return
    close = [prefix + match for match in difflib.get_close_matches(name, known, n=5, cutoff=0.6)]
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() or 'tv:<torchvision name>'"
    raise UserError(f"--model.model_name {model_name!r} is not a known model: {hint}")


def create_backbone(model_name: str, num_classes: int, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build ``model_name`` with a ``num_classes`` head; ``pretrained=True`` uses the library's own download."""
    check_model_name(model_name)
    if model_name.startswith(TORCHVISION_PREFIX):
        import torchvision

        name = model_name[len(TORCHVISION_PREFIX) :]
        if pretrained:
            model = torchvision.models.get_model(name, weights="DEFAULT")
            _replace_torchvision_head(model, num_classes)
            return model
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    import timm

    return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)


def resolve_data_config(backbone: nn.Module, **overrides: Any) -> dict[str, Any]:
    """The eval preprocessing of ``backbone`` (timm's ``pretrained_cfg``), with non-None ``overrides`` applied.

    Keys: ``input_size`` (C, H, W), ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``.
    """
    config = dict(IMAGENET_DEFAULTS)
    if hasattr(backbone, "pretrained_cfg"):
        from timm.data import resolve_model_data_config

        config.update(resolve_model_data_config(backbone))
    image_size = overrides.pop("image_size", None)
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    config.update({key: value for key, value in overrides.items() if value is not None})
    config["input_size"] = tuple(config["input_size"])
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    return config


def classifier_module(backbone: nn.Module) -> nn.Module | None:
    """The final classification layer of ``backbone`` (timm's ``get_classifier`` or torchvision's head)."""
    if hasattr(backbone, "get_classifier"):
        return backbone.get_classifier()
    for name in ("fc", "classifier", "head", "heads"):
        module = getattr(backbone, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def _replace_torchvision_head(model: nn.Module, num_classes: int) -> None:
    head = classifier_module(model)
    if isinstance(head, nn.Sequential):
        last = head[-1]
        head[-1] = nn.Linear(last.in_features, num_classes)
    elif isinstance(head, nn.Linear) and head.out_features != num_classes:
        for name in ("fc", "classifier", "head"):
            if getattr(model, name, None) is head:
                setattr(model, name, nn.Linear(head.in_features, num_classes))
