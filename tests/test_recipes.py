"""Recipe features change what training does: erasing, BCE, layer decay, LR scaling, schedules, compile, TA."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_cls.data.batches import LabeledBatch
from imagenet_cls.errors import UserError
from imagenet_cls.model.module import ClassificationModel
from imagenet_cls.model.optim import lr_schedule, scale_lr


def tiny(**kwargs) -> ClassificationModel:
    options = {"model_name": "test_resnet", "num_classes": 3, "image_size": 32}
    return ClassificationModel(**{**options, **kwargs})


def _inputs_seen_by_backbone(model, batch) -> torch.Tensor:
    seen = []
    handle = model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    model.training_step(batch, 0)
    handle.remove()
    return seen[0]


def _batch(n=4):
    return LabeledBatch(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.arange(n) % 3, [])


def test_random_erasing_erases_boxes_of_the_normalised_training_batch():
    images, targets, _ = batch = _batch()
    plain = tiny()
    torch.testing.assert_close(_inputs_seen_by_backbone(plain, batch), plain.normalize(images))
    erased_model = tiny(random_erase_prob=1.0, random_erase_mode="const")
    erased = _inputs_seen_by_backbone(erased_model, batch)
    reference = erased_model.normalize(images)
    changed = erased != reference
    assert changed.any(dim=(1, 2, 3)).all()  # every image got a box
    assert (erased[changed] == 0).all()  # const mode fills with zeros
    assert changed.float().mean() < 0.5  # boxes, not whole images


def test_bce_loss_differs_from_cross_entropy_and_follows_the_targets():
    images, targets, _ = _batch()
    torch.manual_seed(0)
    ce = tiny()
    torch.manual_seed(0)
    bce = tiny(loss="bce")
    logits = bce.backbone(bce.normalize(images)).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nn.functional.one_hot(targets, 3).float()
    )
    torch.testing.assert_close(bce.train_loss(logits, targets), expected)
    assert not torch.allclose(ce.train_loss(logits, targets), expected)


def _configure(model, steps_per_epoch=10, epochs=5, batch_size=None, world_size=1, accumulate=1):
    datamodule = SimpleNamespace(batch_size=batch_size) if batch_size else None
    model.trainer = SimpleNamespace(
        estimated_stepping_batches=steps_per_epoch * epochs,
        max_epochs=epochs,
        datamodule=datamodule,
        world_size=world_size,
        accumulate_grad_batches=accumulate,
    )
    return model.configure_optimizers()


def _lrs(config, steps):
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.fixture
def detached(monkeypatch):
    monkeypatch.setattr(ClassificationModel, "trainer", None, raising=False)


def test_lr_scaled_from_base_batch_to_global_batch(detached):
    model = tiny(lr=0.1, lr_base_batch_size=256, weight_decay=0.0)
    optimizer = _configure(model, batch_size=128, world_size=4, accumulate=2)["optimizer"]
    assert all(g["lr"] == pytest.approx(0.4) for g in optimizer.param_groups)  # 0.1 x 1024 / 256
    model = tiny(lr=0.1, lr_base_batch_size=256, lr_scaling="sqrt", weight_decay=0.0)
    optimizer = _configure(model, batch_size=64)["optimizer"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # 0.1 x sqrt(64 / 256)
    assert scale_lr(0.1, 512, None) == 0.1


def test_step_and_multistep_schedules_per_optimizer_step(detached):
    lrs = _lrs(_configure(tiny(lr=1.0, scheduler="step", step_epochs=2, decay_rate=0.5), 10, 6), 60)
    assert lrs[0] == lrs[19] == 1.0 and lrs[20] == lrs[39] == 0.5 and lrs[40] == 0.25
    lrs = _lrs(_configure(tiny(lr=1.0, scheduler="multistep", milestones=[1, 4], decay_rate=0.1), 10, 6), 60)
    assert lrs[9] == 1.0 and lrs[10] == pytest.approx(0.1) and lrs[39] == pytest.approx(0.1)
    assert lrs[40] == pytest.approx(0.01)


def test_warmup_then_step_schedule():
    factor = lr_schedule("step", warmup_steps=5, total_steps=100, steps_per_epoch=10, start_ratio=0.0, step_epochs=3)
    assert [factor(s) for s in (0, 1, 5, 29, 30)] == [0.0, 0.2, 1.0, 1.0, pytest.approx(0.1)]
    cosine = lr_schedule("cosine", 0, 100, 10, min_ratio=0.1)
    assert cosine(50) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))) and cosine(100) == 0.1


def test_layer_decay_gives_lower_layers_smaller_learning_rates(detached):
    model = ClassificationModel("test_vit", num_classes=3, image_size=32, lr=1.0, layer_decay=0.5)
    optimizer = _configure(model)["optimizer"]
    lr_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            lr_of[id(param)] = group["lr"]
    named = dict(model.backbone.named_parameters())
    assert lr_of[id(named["head.weight"])] == 1.0
    blocks = sorted({n.split(".")[1] for n in named if n.startswith("blocks.")}, key=int)
    first, last = f"blocks.{blocks[0]}.mlp.fc1.weight", f"blocks.{blocks[-1]}.mlp.fc1.weight"
    assert lr_of[id(named[first])] < lr_of[id(named[last])] < 1.0
    assert lr_of[id(named["patch_embed.proj.weight"])] < lr_of[id(named[first])]
    with pytest.raises(UserError, match="layer_decay and --model.backbone_lr_scale"):
        _configure(ClassificationModel("test_vit", num_classes=3, layer_decay=0.5, backbone_lr_scale=0.1))


def test_drop_path_reaches_the_timm_model():
    model = tiny(drop_path_rate=0.2)
    rates = [m.drop_prob for m in model.backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)
    assert not [m for m in tiny().backbone.modules() if type(m).__name__ == "DropPath"]


def test_compile_wraps_the_network_in_place_and_keeps_parameter_names():
    compiled, eager = tiny(compile=True), tiny()
    assert compiled.backbone._compiled_call_impl is not None and eager.backbone._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_trivial_augment_wide_changes_the_training_images():
    from imagenet_cls.data.transforms import create_train_transform

    config = {"input_size": (3, 32, 32), "interpolation": "bilinear"}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    plain = create_train_transform(config, hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    trivial = create_train_transform(config, hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), auto_augment="ta_wide")
    torch.manual_seed(0)
    reference = plain(image)
    assert any(not torch.equal(trivial(image), reference) for _ in range(5))
    with pytest.raises(UserError, match="auto_augment 'rand-q9' is not understood"):
        create_train_transform(config, auto_augment="rand-q9")


def test_train_image_size_sets_the_training_crop_only(split_folders):
    from imagenet_cls.data.datamodule import ImageNetDataModule

    model = tiny(image_size=32, train_image_size=24, crop_pct=1.0)
    data = ImageNetDataModule(data_dir=split_folders, num_workers=0)
    data.set_preprocessing(model.data_config, model.train_input_size)
    data.setup("fit")
    assert data.datasets["train"][0][0].shape == (3, 24, 24)
    assert data.datasets["val"][0][0].shape == (3, 32, 32)
