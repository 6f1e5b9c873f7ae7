import math
from types import SimpleNamespace

import pytest
import torch

from imagenet_cls.data.batches import LabeledBatch
from imagenet_cls.errors import UserError
from imagenet_cls.model.module import ClassificationModel


def tiny(**kwargs) -> ClassificationModel:
    options = {"model_name": "test_resnet", "num_classes": 3, "image_size": 32}
    return ClassificationModel(**{**options, **kwargs})


def test_forward_normalises_uint8_in_the_model():
    model = tiny(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = model.backbone((images.float() / 255 - 0.5) / 0.25)
    torch.testing.assert_close(model(images), expected)
    assert model(images).shape == (2, 3)


def test_data_config_comes_from_the_model_and_overrides_win():
    lite = ClassificationModel("tf_efficientnet_lite0", num_classes=10)
    assert lite.data_config["interpolation"] == "bicubic" and lite.data_config["mean"] == (0.5, 0.5, 0.5)
    assert lite.data_config["input_size"] == (3, 224, 224) and lite.data_config["crop_pct"] == 0.875
    override = ClassificationModel("tf_efficientnet_lite0", num_classes=10, image_size=64, crop_pct=1.0)
    assert override.data_config["input_size"] == (3, 64, 64) and override.data_config["crop_pct"] == 1.0


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(UserError, match=r"'resnet5O' is not a known model: did you mean .*resnet50"):
        tiny(model_name="resnet5O")
    with pytest.raises(UserError, match=r"tv:resnet18"):
        tiny(model_name="tv:resnet_18")


def test_torchvision_models_under_prefix():
    model = tiny(model_name="tv:resnet18").eval()
    assert model(torch.zeros((1, 3, 32, 32), dtype=torch.uint8)).shape == (1, 3)
    assert model.data_config["interpolation"] == "bilinear"


def _configure(model: ClassificationModel, steps_per_epoch=10, epochs=5):
    model.trainer = SimpleNamespace(estimated_stepping_batches=steps_per_epoch * epochs, max_epochs=epochs)
    return model.configure_optimizers()


def test_lr_warmup_then_cosine_per_step(monkeypatch):
    model = tiny(lr=0.1, warmup_epochs=1, min_lr=0.001, warmup_lr_ratio=0.0)
    monkeypatch.setattr(type(model), "trainer", None, raising=False)
    config = _configure(model)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.05) and lrs[10] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine falls
    cosine_mid = 0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * 20 / 40))
    assert lrs[30] == pytest.approx(cosine_mid)


def test_no_weight_decay_on_norm_and_bias_and_backbone_lr_scale(monkeypatch):
    model = tiny(lr=0.1, weight_decay=0.05, backbone_lr_scale=0.1, optimizer="adamw")
    monkeypatch.setattr(type(model), "trainer", None, raising=False)
    optimizer = _configure(model)["optimizer"]
    assert type(optimizer).__name__ == "AdamW"
    head = {id(p) for p in model.backbone.get_classifier().parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert group["weight_decay"] == (0.0 if param.ndim <= 1 else 0.05)
            assert group["lr"] == pytest.approx(0.1 if id(param) in head else 0.01)


def test_freeze_backbone_for_first_epochs(monkeypatch):
    model = tiny(freeze_backbone_epochs=1)
    for epoch, frozen in ((0, True), (1, False)):
        monkeypatch.setattr(type(model), "current_epoch", property(lambda self, e=epoch: e))
        model.on_train_epoch_start()
        trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
        assert trainable >= {"fc.weight", "fc.bias"}
        assert (trainable == {"fc.weight", "fc.bias"}) == frozen


def test_hflip_test_time_augmentation_averages_the_mirror():
    model = tiny(tta_hflip=True, predict_backend="torch", predict_precision="32").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
        torch.testing.assert_close(model.predict_step({"image": images}, 0), expected)
        model.hparams.tta_hflip = False
        torch.testing.assert_close(model.predict_step({"image": images}, 0), model(images).softmax(-1))


def test_nonfinite_loss_stops_naming_the_step_or_skips():
    from imagenet_cls.model.module import TrainingDiverged

    model = tiny()
    with torch.no_grad():
        model.backbone.fc.bias[0] = float("nan")
    batch = LabeledBatch(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1]), [])
    with pytest.raises(TrainingDiverged, match=r"training loss is nan at step 0 \(epoch 0\)"):
        model.training_step(batch, 0)
    model.hparams.nonfinite_loss = "skip"
    assert model.training_step(batch, 0) is None


def test_mixup_makes_soft_targets_until_its_off_epoch(monkeypatch):
    model = tiny(mixup_alpha=1.0, cutmix_alpha=1.0, mixup_off_epoch=1, label_smoothing=0.1)
    seen = []
    original = model.mixup.__call__

    def spy(images, targets):
        mixed, soft = original(images, targets)
        seen.append(soft)
        return mixed, soft

    monkeypatch.setattr(model, "mixup", spy)
    monkeypatch.setattr(model, "_mixup_on", lambda n: model.current_epoch < 1 and n % 2 == 0)
    batch = LabeledBatch(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 0]), [])
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss) and len(seen) == 1
    soft = seen[0]
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(-1), torch.ones(4))
    assert (soft.max(-1).values < 0.95).all()  # no one-hot row: targets really changed
    monkeypatch.setattr(type(model), "current_epoch", property(lambda self: 1))
    model.training_step(batch, 0)
    assert len(seen) == 1  # off from mixup_off_epoch


def test_real_mixup_on_flag():
    model = tiny(mixup_alpha=0.8, mixup_off_epoch=3)
    assert model._mixup_on(4) and not model._mixup_on(3)
    assert not tiny()._mixup_on(4)


@pytest.mark.parametrize(
    ("choice", "native", "bf16"),
    [("auto", True, True), ("auto", False, False), ("32", True, False), ("bf16", False, True)],
)
def test_torch_predict_precision_on_cpu_is_channels_last(monkeypatch, choice, native, bf16):
    import imagenet_cls.model.inference as inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    model = tiny(predict_backend="torch", predict_precision=choice).eval()
    seen = []
    model.backbone.register_forward_hook(
        lambda m, i, o: seen.append((o.dtype, i[0].is_contiguous(memory_format=torch.channels_last)))
    )
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        reference = model(images).softmax(-1)
        seen.clear()
        model.on_predict_start()
        probs = model.predict_step({"image": images}, 0)
    assert seen == [(torch.bfloat16 if bf16 else torch.float32, True)]
    assert probs.dtype == torch.float32 and torch.allclose(probs, reference, atol=0.02 if bf16 else 1e-6)


@pytest.mark.parametrize(
    ("backend", "precision", "compiled", "installed", "expected"),
    [
        ("auto", "auto", False, True, "onnxruntime"),
        ("auto", "32", False, True, "onnxruntime"),
        ("auto", "auto", True, True, "torch"),  # --model.compile: the compiled PyTorch network
        ("auto", "bf16", False, True, "torch"),  # ONNX Runtime runs float32 only
        ("auto", "auto", False, False, "torch"),
        ("torch", "auto", False, True, "torch"),
        ("onnxruntime", "32", True, True, "onnxruntime"),
    ],
)
def test_predict_backend_choice(monkeypatch, backend, precision, compiled, installed, expected):
    import imagenet_cls.model.inference as inference

    monkeypatch.setattr(inference, "onnxruntime_available", lambda: installed)
    plan = inference.choose_plan(torch.device("cpu"), backend, precision, compiled)
    assert plan.backend == expected
    assert plan.channels_last == (expected == "torch") and not (expected == "onnxruntime" and plan.bf16)
    on_gpu = inference.choose_plan(torch.device("cuda"), "torch" if backend == "onnxruntime" else backend, "auto")
    assert on_gpu.backend == "torch"


def test_onnxruntime_missing_is_a_one_line_error(monkeypatch):
    import imagenet_cls.model.inference as inference

    monkeypatch.setattr(inference, "onnxruntime_available", lambda: False)
    with pytest.raises(UserError, match="--model.predict_backend onnxruntime needs onnxruntime"):
        inference.choose_plan(torch.device("cpu"), "onnxruntime", "auto")


def test_onnxruntime_predict_agrees_with_torch_and_caches_the_graph(monkeypatch, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    model = tiny(predict_backend="onnxruntime", tta_hflip=True).eval()
    with torch.no_grad():
        expected = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
        with caplog.at_level("INFO", logger="imagenet_cls"):
            model.on_predict_start()
            probs = model.predict_step({"image": images}, 0)
    assert "ONNX Runtime, float32" in caplog.text and "graph exported to" in caplog.text
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
    graphs = list((tmp_path / "cache" / "imagenet_cls" / "onnx").glob("*.onnx"))
    assert len(graphs) == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="imagenet_cls"):
        model.on_predict_start()
    assert f"graph cached at {graphs[0]}" in caplog.text


def test_onnx_graph_that_disagrees_falls_back_to_torch(monkeypatch, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    import imagenet_cls.model.inference as inference

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tiny(predict_precision="32").eval()
    other = tiny().eval()  # same architecture, other random weights: a wrong graph
    path = inference.onnx_cache_path(model.backbone, (3, 32, 32), None)
    inference.export_onnx(other.backbone, path, (3, 32, 32), {})
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad(), caplog.at_level("INFO", logger="imagenet_cls"):
        model.on_predict_start()
        probs = model.predict_step({"image": images}, 0)
        expected = model(images).softmax(-1)
    assert "ONNX Runtime unusable for test_resnet (ONNX output differs from PyTorch" in caplog.text
    assert "PyTorch float32, channels-last" in caplog.text
    torch.testing.assert_close(probs, expected)
    model.hparams.predict_backend = "onnxruntime"
    with pytest.raises(UserError, match="--model.predict_backend onnxruntime: ONNX output differs"):
        model.on_predict_start()
