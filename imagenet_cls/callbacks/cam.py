"""Class-activation heat maps (Grad-CAM, from pytorch-grad-cam) of timm CNNs and ViTs, and drawing them over images.

Used by the prediction writer (``--writer.cam true``) and the evaluation report's gallery of mistakes. A CNN is
explained on its last feature map (the output of timm's ``forward_features``); a ViT on the input of its last
block's attention (``blocks[-1].norm1``), its patch tokens reshaped to the patch grid, as pytorch-grad-cam
recommends for ViTs: after the last block only the class token reaches the head, so the patch tokens there get
no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from imagenet_cls.errors import UserError


class _Features(nn.Module):
    """timm's ``forward_features`` as a module, so its output (the last feature map) can be hooked."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images)


class _Classifier(nn.Module):
    """``forward_head(forward_features(x))``: the backbone's logits, with the feature map passing a module."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.features = _Features(backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features.backbone.forward_head(self.features(images))


def is_vit(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a timm vision transformer (patch tokens after ``num_prefix_tokens`` prefix tokens)."""
    return all(hasattr(backbone, name) for name in ("blocks", "patch_embed", "num_prefix_tokens"))


class ClassActivationMaps:
    """Grad-CAM heat maps of a timm classifier for chosen classes, one (H, W) map in 0..1 per image.

    Args:
        backbone: A timm model (CNN or ViT): it needs ``forward_features`` and ``forward_head``.
        mean: Per-channel mean of the model's normalisation, in 0..255 (as ``ClassificationModel.pixel_mean``).
        std: Per-channel standard deviation, in 0..255.

    Raises:
        UserError: ``backbone`` is not a timm model.
    """

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        if not (hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head")):
            raise UserError(f"cam: {type(backbone).__name__} has no forward_features/forward_head (a timm model)")
        self.backbone = backbone
        self._copy: nn.Module | None = None
        self.mean = mean.reshape(1, 3, 1, 1)
        self.std = std.reshape(1, 3, 1, 1)

    @classmethod
    def for_module(cls, pl_module: nn.Module) -> ClassActivationMaps:
        """For a :class:`~imagenet_cls.model.module.ClassificationModel` (its backbone and normalisation)."""
        return cls(pl_module.backbone, pl_module.pixel_mean, pl_module.pixel_std)

    def __call__(self, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        """Heat maps (B, H, W) float32 in 0..1 of ``images`` (B, 3, H, W) uint8 for ``classes`` (one per image).

        Runs with gradients even inside Lightning's inference mode; the parameters' ``requires_grad`` and
        ``.grad`` and the backbone's train/eval mode are as they were afterwards.
        """
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if len(images) == 0:
            return np.zeros((0, *images.shape[-2:]), np.float32)
        with torch.inference_mode(False), torch.enable_grad():
            backbone = self._explainable()
            parameters = list(backbone.parameters())
            flags = [p.requires_grad for p in parameters]
            grads = [p.grad for p in parameters]
            training = backbone.training
            try:
                for parameter in parameters:  # gradients reach the activations through the input alone
                    parameter.requires_grad_(False)
                inputs = images.clone().to(self.mean.device)  # a normal tensor, not an inference-mode one
                inputs = ((inputs.float() - self.mean.clone()) / self.std.clone()).requires_grad_(True)
                classifier = _Classifier(backbone)
                layer, reshape = self._target(backbone, classifier, inputs.shape[-2:])
                targets = [ClassifierOutputTarget(int(c)) for c in classes]
                with GradCAM(model=classifier, target_layers=[layer], reshape_transform=reshape) as cam:
                    maps = cam(input_tensor=inputs, targets=targets)  # (B, H, W), each scaled to 0..1
            finally:
                for parameter, flag, grad in zip(parameters, flags, grads, strict=True):
                    parameter.requires_grad_(flag)
                    parameter.grad = grad
                backbone.train(training)
        return np.nan_to_num(maps.astype(np.float32))

    def _explainable(self) -> nn.Module:
        """The backbone, or a copy of it when its weights are inference-mode tensors (autograd cannot use them).

        Lightning's predict runs under ``torch.inference_mode``; weights converted there (channels-last for
        bfloat16 predict) become such tensors. The copy is made once: weights do not change during predict.
        """
        if not any(p.is_inference() for p in self.backbone.parameters()):
            return self.backbone
        if self._copy is None:
            import copy

            self._copy = copy.deepcopy(self.backbone)
        return self._copy

    @staticmethod
    def _target(backbone: nn.Module, classifier: _Classifier, size: torch.Size) -> tuple[nn.Module, object]:
        """The layer to explain and the reshape of its output to (B, C, h, w) (None for CNNs)."""
        if not is_vit(backbone):
            return classifier.features, None
        prefix = int(backbone.num_prefix_tokens)
        patch = backbone.patch_embed.patch_size
        grid = (int(size[0]) // patch[0], int(size[1]) // patch[1])

        def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
            # (B, prefix + h * w, C) -> (B, C, h, w): pytorch-grad-cam's vit_reshape_transform, for any number of
            # prefix tokens (class, distillation, register tokens) and any input size
            patches = tokens[:, prefix:, :]
            return patches.reshape(tokens.shape[0], *grid, tokens.shape[-1]).permute(0, 3, 1, 2)

        return backbone.blocks[-1].norm1, tokens_to_grid


def overlay(image_rgb: np.ndarray, heat: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """``image_rgb`` (H, W, 3) uint8 with ``heat`` (h, w) in 0..1 drawn over it in the JET colours (RGB uint8).

    Each pixel is blended in proportion to its heat, so where the map is cold the image stays as it is.
    """
    import cv2

    height, width = image_rgb.shape[:2]
    heat = cv2.resize(np.clip(heat, 0, 1).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    weight = strength * heat[..., None]
    return (image_rgb * (1 - weight) + colours * weight).round().astype(np.uint8)


def crop_box(transform: object, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)``: the part of a ``height`` x ``width`` image that is the model input.

    That is the centre crop of the eval ``transform`` (:class:`~imagenet_cls.data.transforms.EvalTransform`);
    for other transforms, the whole image.
    """
    resized_size = getattr(transform, "resized_size", None)
    if resized_size is None:
        return 0, 0, height, width
    size = transform.size
    resized_h, resized_w = resized_size(height, width)
    top, left = round((resized_h - size[0]) / 2.0), round((resized_w - size[1]) / 2.0)
    scale_y, scale_x = height / resized_h, width / resized_w
    box = (top * scale_y, left * scale_x, (top + size[0]) * scale_y, (left + size[1]) * scale_x)
    top, left, bottom, right = (round(v) for v in box)
    return max(0, top), max(0, left), min(height, bottom), min(width, right)


def overlay_in_box(image_rgb: np.ndarray, heat: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """:func:`overlay` of ``heat`` inside ``box`` (the model's crop) of ``image_rgb``; the rest is unchanged."""
    top, left, bottom, right = box
    result = np.array(image_rgb, copy=True)
    if bottom > top and right > left:
        result[top:bottom, left:right] = overlay(result[top:bottom, left:right], heat)
    return result
