"""Train and eval transforms from timm's factory, ending in uint8 (3, H, W) tensors.

Normalisation is not done here: the model normalises whole batches on the device (``model.normalize``).
"""

from __future__ import annotations

from typing import Any


def create_eval_transform(data_config: dict[str, Any]):
    """Resize to ``input_size / crop_pct`` and centre-crop, as timm evaluates its pretrained models."""
    from timm.data import create_transform

    return create_transform(
        input_size=data_config["input_size"],
        is_training=False,
        interpolation=data_config["interpolation"],
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode", "center"),
        use_prefetcher=True,  # -> uint8 tensor, no normalisation
    )


def create_train_transform(
    data_config: dict[str, Any],
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    auto_augment: str | None = None,
    color_jitter: float | None = None,
):
    """Random-resized crop, flip and optional timm augmentation (RandAugment, TrivialAugment, colour jitter)."""
    from timm.data import create_transform

    return create_transform(
        input_size=data_config["input_size"],
        is_training=True,
        interpolation=data_config["interpolation"],
        hflip=hflip,
        scale=scale,
        ratio=ratio,
        auto_augment=auto_augment,
        color_jitter=color_jitter if color_jitter else None,
        use_prefetcher=True,
    )
