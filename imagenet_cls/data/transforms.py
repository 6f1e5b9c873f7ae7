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

from imagenet_cls.data.images import ImageFile
from imagenet_cls.errors import UserError

TRIVIAL_AUGMENT = ("ta_wide", "trivialaugment")
DCT_MARGIN = 3.0  # decoded crop >= 3x the output size
Box = tuple[float, float, float, float]  # top, left, height, width in upright source pixels


def reduction_limit(box: Box, size: tuple[int, int]) -> float:
    """The largest DCT reduction that keeps ``box`` at least ``DCT_MARGIN`` times ``size``.

    In a one-off check on a synthetic 1200x900 JPEG cropped to 96 px, the 1/4 and 1/8 scales (crop only 2x the
    output) were about 5 and 12 grey levels (mean) from timm's PIL pipeline; 1/2 with the crop over 3x the output
    stays under 1 (``tests/test_transforms.py``). Hence the margin.
    """
    return min(box[2] / size[0], box[3] / size[1]) / DCT_MARGIN


class _Resizer:
    """Output ``size`` and the interpolation of one antialiased uint8 resize."""

    def __init__(self, size: tuple[int, int], interpolation: str) -> None:
        from torchvision.transforms import InterpolationMode

        self.size = (int(size[0]), int(size[1]))
        self.interpolation = InterpolationMode(interpolation if interpolation in ("bilinear", "nearest") else "bicubic")

    def resize(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``pixels`` (3, H, W) uint8 resized to ``size``, antialiased; as they are when already that size."""
        from torchvision.transforms.v2 import functional as F

        if tuple(pixels.shape[1:]) == tuple(size):
            return pixels
        # Pixel-interleaved (channels-last) memory: torch's vectorised uint8 resize kernels run ~2x faster on it.
        interleaved = pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        return F.resize(interleaved, list(size), interpolation=self.interpolation, antialias=True)


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 of an already decoded PIL image (tests, callers with PIL images)."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


class EvalTransform(_Resizer):
    """timm's evaluation crop: resize the shorter side to ``size / crop_pct``, centre-crop ``size``.

    The same pixels as timm's ``Resize`` + ``CenterCrop`` (the whole image is resized, then cropped: rounding the
    crop to whole source pixels first changed 1.7% of EfficientNet-Lite0's predictions on the sample images, in a
    one-off comparison).
    ``crop_mode`` ``squash`` resizes both sides to ``size / crop_pct`` first (timm's squash mode).
    """

    def __init__(self, size: tuple[int, int], crop_pct: float, interpolation: str, crop_mode: str = "center"):
        super().__init__(size, interpolation)
        self.scale_size = tuple(math.floor(s / crop_pct) for s in self.size)
        self.crop_mode = crop_mode

    def __call__(self, image: ImageFile | Image.Image) -> torch.Tensor:
        if isinstance(image, Image.Image):
            return self.from_pixels(_pil_to_tensor(image), image.height, image.width)
        pixels = image.decode(image.reduction(self.decode_limit(image.height, image.width)))
        return self.from_pixels(pixels, image.height, image.width)

    def decode_limit(self, height: int, width: int) -> float:
        """How far (1/x) an image of ``height`` x ``width`` may be DCT-reduced for this crop (see reduction_limit)."""
        resized_h, resized_w = self.resized_size(height, width)
        box = (0.0, 0.0, self.size[0] * height / resized_h, self.size[1] * width / resized_w)
        return reduction_limit(box, self.size)

    def from_pixels(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The crop of ``pixels``: the image of upright size ``height`` x ``width``, possibly decoded smaller."""
        resized_h, resized_w = self.resized_size(height, width)
        pixels = self.resize(pixels, (resized_h, resized_w))
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


class TrainTransform(_Resizer):
    """torchvision's ``RandomResizedCrop`` box (same draws from torch's generator), flip, then ``augment``.

    Only the box is decoded (DCT-reduced when it is much larger than the output) and resized.
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
        box = self.box(image.height, image.width)
        if isinstance(image, Image.Image):
            pixels = _pil_to_tensor(image)
        else:
            pixels = image.decode(image.reduction(reduction_limit(box, self.size)))
        pixels = self.resize(
            _crop(pixels, box, pixels.shape[1] / image.height, pixels.shape[2] / image.width), self.size
        )
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            pixels = pixels.flip(-1)
        if self.augment is None:
            return pixels
        return _pil_to_tensor(self.augment(Image.fromarray(pixels.permute(1, 2, 0).numpy())))

    def box(self, height: int, width: int) -> Box:
        """A random box as ``torchvision.transforms.RandomResizedCrop.get_params`` draws it."""
        from torchvision.transforms import RandomResizedCrop

        shape_only = torch.empty((1, 1, 1)).expand(1, height, width)  # no pixels needed to draw the box
        return tuple(float(v) for v in RandomResizedCrop.get_params(shape_only, list(self.scale), list(self.ratio)))


def _crop(pixels: torch.Tensor, box: Box, scale_y: float, scale_x: float) -> torch.Tensor:
    """The region ``box`` (source pixels) of ``pixels``, an image decoded at ``scale_y`` x ``scale_x`` of the source."""
    top, left, height, width = box
    y0, x0 = round(top * scale_y), round(left * scale_x)
    y1 = min(pixels.shape[1], max(y0 + 1, round((top + height) * scale_y)))
    x1 = min(pixels.shape[2], max(x0 + 1, round((left + width) * scale_x)))
    return pixels[:, y0:y1, x0:x1]


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
    for step in steps:
        _fix_posterize_ops(step)
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


def _fix_posterize_ops(transform: Any) -> None:
    """Point the posterize ops of this timm auto-augment transform at :func:`posterize_keeping_zero_bits`.

    RandAugment and AugMix hold ``ops``, AutoAugment a ``policy`` of op lists; timm's own op table stays untouched.
    """
    ops = list(getattr(transform, "ops", []))
    for sub_policy in getattr(transform, "policy", []):
        ops.extend(sub_policy)
    for op in ops:
        if getattr(op, "name", "").startswith("Posterize"):
            op.aug_fn = posterize_keeping_zero_bits
