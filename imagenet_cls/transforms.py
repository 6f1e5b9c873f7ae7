"""Train and eval preprocessing: image file -> uint8 (3, H, W) tensor, the crop chosen before decoding.

Each transform first decides which part of the image it needs (the centre crop, or the random-resized-crop box),
decodes the JPEG at the largest DCT reduction that keeps that part at least the output size, then crops and
resizes once, on uint8. Normalisation is not done here: the model normalises whole batches on the device
(``model.normalize``). The crop geometry is timm's (eval) and torchvision's ``RandomResizedCrop`` (train, same
random draws for the same seed); augmentations that work on PIL images (RandAugment, AutoAugment, AugMix,
TrivialAugmentWide, colour jitter) run after the crop, on the small image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from imagenet_cls.errors import UserError
from imagenet_cls.images import ImageFile

TRIVIAL_AUGMENT = ("ta_wide", "trivialaugment")
DCT_MARGIN = 3.0  # decoded crop >= 3x the output size
Box = tuple[float, float, float, float]  # top, left, height, width in upright source pixels


def reduction_limit(box: Box, size: tuple[int, int]) -> float:
    """The largest DCT reduction that keeps ``box`` at least ``DCT_MARGIN`` times ``size``.

    Measured on a 1200x900 JPEG cropped to 96 px, mean distance to timm's PIL pipeline (grey levels): full decode
    1.4, 1/2 scale 2.3, 1/4 scale 5.5 (crop only 2x the output), 1/8 scale 12.5; hence the margin.
    """
    return min(box[2] / size[0], box[3] / size[1]) / DCT_MARGIN


class _CropResize:
    """Decode the region ``box`` of an image (as small as the output allows) and resize it to ``size``."""

    def __init__(self, size: tuple[int, int], interpolation: str) -> None:
        from torchvision.transforms import InterpolationMode

        self.size = (int(size[0]), int(size[1]))
        self.interpolation = InterpolationMode(interpolation if interpolation in ("bilinear", "nearest") else "bicubic")

    def crop_resize(self, image: ImageFile | Image.Image, box_of: Callable[[int, int], Box]) -> torch.Tensor:
        if isinstance(image, Image.Image):  # already decoded (tests, callers with PIL images)
            pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
            return self.resize_box(pixels, box_of(image.height, image.width), 1.0, 1.0)
        top, left, height, width = box = box_of(image.height, image.width)
        decoded = image.decode(image.reduction(reduction_limit(box, self.size)))
        return self.resize_box(decoded, box, decoded.shape[1] / image.height, decoded.shape[2] / image.width)

    def resize_box(self, pixels: torch.Tensor, box: Box, scale_y: float, scale_x: float) -> torch.Tensor:
        """Crop ``box`` (source pixels, scaled to ``pixels`` by ``scale_y``/``scale_x``) and resize to ``size``."""
        from torchvision.transforms.v2 import functional as F

        top, left, height, width = box
        y0, x0 = round(top * scale_y), round(left * scale_x)
        y1 = min(pixels.shape[1], max(y0 + 1, round((top + height) * scale_y)))
        x1 = min(pixels.shape[2], max(x0 + 1, round((left + width) * scale_x)))
        # Pixel-interleaved (channels-last) memory: torch's vectorised uint8 resize kernels run ~2x faster on it.
        region = pixels[:, y0:y1, x0:x1].permute(1, 2, 0).contiguous().permute(2, 0, 1)
        if tuple(region.shape[1:]) == self.size:
            return region
        return F.resize(region, list(self.size), interpolation=self.interpolation, antialias=True)


class EvalTransform(_CropResize):
    """timm's evaluation crop: resize the shorter side to ``size / crop_pct``, centre-crop ``size``.

    The same pixels as timm's ``Resize`` + ``CenterCrop`` (the whole image is resized, then cropped: rounding the
    crop to whole source pixels first changed 1.7% of EfficientNet-Lite0's predictions on the sample images).
    ``crop_mode`` ``squash`` resizes both sides to ``size / crop_pct`` first (timm's squash mode).
    """

    def __init__(self, size: tuple[int, int], crop_pct: float, interpolation: str, crop_mode: str = "center"):
        super().__init__(size, interpolation)
        self.scale_size = tuple(math.floor(s / crop_pct) for s in self.size)
        self.crop_mode = crop_mode

    def __call__(self, image: ImageFile | Image.Image) -> torch.Tensor:
        if isinstance(image, Image.Image):
            pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
            return self.from_pixels(pixels, image.height, image.width)
        pixels = image.decode(image.reduction(reduction_limit(self.box(image.height, image.width), self.size)))
        return self.from_pixels(pixels, image.height, image.width)

    def from_pixels(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The crop of ``pixels``: the image of upright size ``height`` x ``width``, possibly decoded smaller."""
        from torchvision.transforms.v2 import functional as F

        resized_h, resized_w = self.resized_size(height, width)
        if tuple(pixels.shape[1:]) != (resized_h, resized_w):
            interleaved = pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # see _CropResize.resize_box
            pixels = F.resize(interleaved, [resized_h, resized_w], interpolation=self.interpolation, antialias=True)
        top = int(round((resized_h - self.size[0]) / 2.0))
        left = int(round((resized_w - self.size[1]) / 2.0))
        return pixels[:, top : top + self.size[0], left : left + self.size[1]]  # a view; batching copies it

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size timm resizes an image of ``height`` x ``width`` to before the centre crop."""
        if self.crop_mode == "squash":
            return self.scale_size
        if self.scale_size[0] != self.scale_size[1]:  # timm's ResizeKeepRatio
            ratio = max(height / self.scale_size[0], width / self.scale_size[1])
            return round(height / ratio), round(width / ratio)
        # torchvision's Resize(int): the shorter side to scale_size, the longer side truncated
        if height <= width:
            return self.scale_size[0], int(self.scale_size[0] * width / height)
        return int(self.scale_size[0] * height / width), self.scale_size[0]

    def box(self, height: int, width: int) -> Box:
        """The centre crop in source pixels (what decides how far a JPEG may be DCT-reduced)."""
        resized_h, resized_w = self.resized_size(height, width)
        top = int(round((resized_h - self.size[0]) / 2.0))
        left = int(round((resized_w - self.size[1]) / 2.0))
        sy, sx = height / resized_h, width / resized_w
        return top * sy, left * sx, self.size[0] * sy, self.size[1] * sx


class TrainTransform(_CropResize):
    """torchvision's ``RandomResizedCrop`` box (same draws from torch's generator), flip, then ``augment``.

    ``augment`` works on the cropped PIL image (RandAugment, TrivialAugmentWide, colour jitter ...).
    """

    def __init__(
        self,
        size: tuple[int, int],
        interpolation: str,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        augment: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        super().__init__(size, interpolation)
        self.scale, self.ratio, self.hflip, self.augment = tuple(scale), tuple(ratio), hflip, augment

    def __call__(self, image: ImageFile | Image.Image) -> torch.Tensor:
        pixels = self.crop_resize(image, self.box)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            pixels = pixels.flip(-1)
        if self.augment is None:
            return pixels
        augmented = self.augment(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
        return torch.from_numpy(np.asarray(augmented).copy()).permute(2, 0, 1)

    def box(self, height: int, width: int) -> Box:
        """A random box as ``torchvision.transforms.RandomResizedCrop.get_params`` draws it."""
        from torchvision.transforms import RandomResizedCrop

        shape_only = torch.empty((1, 1, 1)).expand(1, height, width)  # no pixels needed to draw the box
        return tuple(float(v) for v in RandomResizedCrop.get_params(shape_only, list(self.scale), list(self.ratio)))


def create_eval_transform(data_config: dict[str, Any]) -> EvalTransform:
    """The evaluation transform of a model's ``data_config`` (input size, crop_pct, interpolation, crop mode)."""
    return EvalTransform(
        tuple(data_config["input_size"][1:]),
        data_config["crop_pct"],
        data_config["interpolation"],
        data_config.get("crop_mode", "center"),
    )


def create_train_transform(
    data_config: dict[str, Any],
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    auto_augment: str | None = None,
    color_jitter: float | None = None,
) -> TrainTransform:
    """Random-resized crop, flip, optional augmentation and colour jitter.

    ``auto_augment`` is a timm string (``rand-m9-mstd0.5-inc1``, ``augmix-m5``, ``original`` AutoAugment) or
    ``ta_wide`` (torchvision's TrivialAugmentWide, as in its new ResNet recipe).
    """
    augment = _augmentations(data_config, auto_augment, color_jitter)
    return TrainTransform(
        tuple(data_config["input_size"][1:]), data_config["interpolation"], scale, ratio, hflip, augment
    )


def _augmentations(data_config: dict[str, Any], auto_augment: str | None, color_jitter: float | None):
    """The PIL augmentations (timm's, or TrivialAugmentWide) composed; None when there are none."""
    if not auto_augment and not color_jitter:
        return None
    from timm.data import create_transform
    from torchvision.transforms import Compose

    trivial = auto_augment in TRIVIAL_AUGMENT
    if auto_augment and not trivial:
        _fix_timm_posterize()
    try:
        _, secondary, _ = create_transform(
            input_size=data_config["input_size"],
            is_training=True,
            interpolation=data_config["interpolation"],
            auto_augment=None if trivial else auto_augment,
            color_jitter=color_jitter if color_jitter else None,
            use_prefetcher=True,
            separate=True,
        )
    except (AssertionError, KeyError, ValueError) as error:
        detail = f" ({error})" if str(error) else ""
        raise UserError(
            f"--data.auto_augment {auto_augment!r} is not understood{detail}: use e.g. rand-m9-mstd0.5-inc1, "
            "augmix-m5, original or ta_wide"
        ) from None
    steps = list(secondary.transforms)
    if trivial:
        from torchvision.transforms import InterpolationMode, TrivialAugmentWide

        mode = "bilinear" if data_config["interpolation"] not in ("bilinear", "bicubic", "nearest") else None
        steps.insert(0, TrivialAugmentWide(interpolation=InterpolationMode(mode or data_config["interpolation"])))
    return Compose(steps) if steps else None


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
