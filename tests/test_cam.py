"""Class-activation maps (pytorch-grad-cam) of timm CNNs and ViTs, and how they are drawn over images."""

import numpy as np
import pytest
import timm
import torch

from imagenet_cls.callbacks.cam import ClassActivationMaps, crop_box, overlay, overlay_in_box
from imagenet_cls.data.transforms import EvalTransform

IDENTITY = (torch.zeros(3), torch.full((3,), 255.0))  # mean 0, std 255: a black pixel stays exactly 0


def _resnet_with_a_known_class() -> torch.nn.Module:
    """A random ResNet-10 whose class 0 sums the last feature map: its Grad-CAM is that map's channel sum."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3).eval()
    with torch.no_grad():
        model.fc.weight[0] = 1.0
        model.fc.bias.zero_()
    return model


def test_cnn_heat_map_is_where_the_object_is():
    # Black stays 0 through convolutions without bias, BN at its initial statistics and ReLU: only the features
    # that see the white square are non-zero, and class 0 adds them up.
    images = torch.zeros((1, 3, 224, 224), dtype=torch.uint8)
    images[:, :, 16:80, 16:80] = 255
    cams = ClassActivationMaps(_resnet_with_a_known_class(), *IDENTITY)
    with torch.inference_mode():  # as in Lightning's predict and validation loops
        heat = cams(images, [0])
    assert heat.shape == (1, 224, 224) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1, abs=1e-3)
    assert heat[0, 16:80, 16:80].mean() > 0.5 > 5 * heat[0, 150:, 150:].mean()


@pytest.mark.parametrize("model_name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_vit_heat_maps_follow_the_patch_grid(model_name):
    # deit's distilled model has two prefix tokens (class and distillation): both are dropped before the reshape.
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=4, img_size=64).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    cams = ClassActivationMaps(model, *IDENTITY)
    with torch.inference_mode():
        heat = cams(images, [1, 2])
    assert heat.shape == (2, 64, 64)
    assert np.ptp(heat.reshape(2, -1), axis=1).max() > 0.5  # a map with structure (random weights: one may be 0)
    _, reshape = cams._target(model, None, images.shape[-2:])
    tokens = torch.arange(model.num_prefix_tokens + 16).float().reshape(1, -1, 1).repeat(1, 1, 8)
    grid = reshape(tokens)
    assert grid.shape == (1, 8, 4, 4) and grid[0, 0, 0, 0] == model.num_prefix_tokens  # first patch, top left
    assert not np.allclose(cams(images[:1], [0]), cams(images[:1], [3]))  # the class chosen matters


def test_explaining_leaves_the_model_as_it_was():
    model = _resnet_with_a_known_class()
    model.train()
    model.conv1[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    ClassActivationMaps(model, *IDENTITY)(torch.zeros((1, 3, 64, 64), dtype=torch.uint8), [0])
    assert model.training and not model.conv1[0].weight.requires_grad and model.fc.bias.requires_grad
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight)) and model.fc.bias.grad is None


def test_overlay_colours_only_where_the_map_is_hot():
    image = np.full((40, 60, 3), 128, np.uint8)
    heat = np.zeros((4, 6), np.float32)
    heat[:2, :3] = 1.0  # top-left quarter
    drawn = overlay(image, heat)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    change = np.abs(drawn.astype(int) - image).sum(axis=2)
    assert change[:15, :25].min() > 60 and change[25:, 35:].max() == 0


def test_overlay_in_box_places_the_map_on_the_models_centre_crop():
    transform = EvalTransform((224, 224), crop_pct=0.875, interpolation="bicubic")
    top, left, bottom, right = crop_box(transform, 600, 800)  # a landscape image: the crop is a centred square
    # 600 x 800 -> resized 256 x 341 -> 224 x 224 from (16, 58): in the image 224 / 256 * 600 = 525 pixels a side
    assert bottom - top == pytest.approx(525, abs=1) and right - left == pytest.approx(525, abs=1)
    assert (top, left) == (38, 136)
    image = np.full((600, 800, 3), 128, np.uint8)
    drawn = overlay_in_box(image, np.ones((7, 7), np.float32), (top, left, bottom, right))
    changed = (drawn != image).any(axis=2)
    assert changed[top:bottom, left:right].all() and changed.sum() == (bottom - top) * (right - left)
    assert crop_box(None, 60, 80) == (0, 0, 60, 80)  # no eval transform: the whole image
