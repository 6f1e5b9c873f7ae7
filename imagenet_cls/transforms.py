"""Train and eval transforms from timm's factory, ending in uint8 (3, H, W) tensors.

Normalisation is not done here: the model normalises whole batches on the device (``model.normalize``).
"""

from __future__ import annotations

from typing import Any

from imagenet_cls.errors import UserError

TRIVIAL_AUGMENT = ("ta_wide", "trivialaugment")


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
    """Random-resized crop, flip, optional augmentation and colour jitter.

    ``auto_augment`` is a timm string (``rand-m9-mstd0.5-inc1``, ``augmix-m5``, ``original`` AutoAugment) or
    ``ta_wide`` (torchvision's TrivialAugmentWide, as in its new ResNet recipe).
    """
    from timm.data import create_transform

    trivial = auto_augment in TRIVIAL_AUGMENT
    if auto_augment and not trivial:
        _fix_timm_posterize()
    try:
        primary, secondary, final = create_transform(
            input_size=data_config["input_size"],
            is_training=True,
            interpolation=data_config["interpolation"],
            hflip=hflip,
            scale=scale,
            ratio=ratio,
            auto_augment=None if trivial else auto_augment,
            color_jitter=color_jitter if color_jitter else None,
            use_prefetcher=True,
            separate=True,
        )
    except (AssertionError, KeyError, ValueError) as error:
        raise UserError(
            f"--data.auto_augment {auto_augment!r} is not understood{f' ({error})' if str(error) else ''}: use e.g. "
            "rand-m9-mstd0.5-inc1, "
            "augmix-m5, original or ta_wide"
        ) from None
    if trivial:
        from torchvision.transforms import InterpolationMode, TrivialAugmentWide

        mode = InterpolationMode(data_config["interpolation"]) if data_config["interpolation"] != "random" else None
        secondary.transforms.insert(0, TrivialAugmentWide(interpolation=mode or InterpolationMode.BILINEAR))
    from torchvision.transforms import Compose

    return Compose([*primary.transforms, *secondary.transforms, *final.transforms])


def posterize_keeping_zero_bits(img, bits_to_keep: int, **_):
    """Timm's posterize op, correct under Pillow 13.

    timm's increasing-magnitude posterize asks for 0 bits at the top magnitude (about 0.2% of RandAugment draws
    with ``mstd0.5``). Pillow < 13 returned a black image for that; Pillow 13 raises ``ValueError: bits must be
    between or equal to 1 and 8``, which kills a training epoch. Keeping zero bits is a black image, as before.
    """
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def _fix_timm_posterize() -> None:
    """Point timm's posterize ops at :func:`posterize_keeping_zero_bits` (idempotent; before ops are built)."""
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = posterize_keeping_zero_bits
