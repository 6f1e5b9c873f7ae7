import pytest
from PIL import Image

from imagenet_cls.cli import ImageNetCLI, main
from imagenet_cls.data.classes import class_names, classes_without_data
from imagenet_cls.data.datamodule import ImageNetDataModule
from tests.conftest import FAST_TRAINER, TINY_MODEL, untrained_weights


def _validate(split_folders, *extra):
    return [
        "validate",
        *FAST_TRAINER,
        *TINY_MODEL,
        "--data.data_dir",
        str(split_folders),
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "4",
        *untrained_weights(split_folders.parent),
        *extra,
    ]


def test_bad_file_is_an_error_naming_it_by_default(split_folders, capsys):
    (split_folders / "val" / "n00000002" / "broken.jpg").write_text("not a jpeg")
    assert main(_validate(split_folders)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "broken.jpg" in error and "--data.skip_bad_images true" in error


def test_skip_bad_images_counts_what_metrics_cover(split_folders, caplog):
    (split_folders / "val" / "n00000002" / "broken.jpg").write_text("not a jpeg")
    Image.new("RGB", (8, 8)).save(split_folders / "val" / "n00000003" / "a_png.jpg", format="PNG")  # fine: sniffed
    cli = ImageNetCLI(args=_validate(split_folders, "--data.skip_bad_images", "true"))
    assert cli.trainer.callback_metrics["val_images"] == 13  # 12 + the PNG; the broken file is not counted
    assert "validation: skipped 1 unreadable files: " in caplog.text and "broken.jpg" in caplog.text


def test_class_names_come_from_map_then_imagenet_then_folders(class_folders, tmp_path):
    data = ImageNetDataModule(data_dir=class_folders)
    assert class_names(data.classes, data_dir=class_folders) == ["red", "green", "blue"]  # data_dir's own map
    (class_folders / "folder_num_class_map.txt").unlink()
    assert class_names(["n01440764", "mine"], data_dir=class_folders) == ["tench", "mine"]
    other = tmp_path / "map.txt"
    other.write_text("n00000001 0 rouge\n")
    assert class_names(data.classes, class_map=other, data_dir=class_folders)[0] == "rouge"


def test_predict_mode_needs_a_predict_path(class_folders, tmp_path, capsys):
    ckpt_free = ["predict", *FAST_TRAINER, *TINY_MODEL, "--data.mode", "predict"]
    assert main(ckpt_free) == 2
    assert "--data.predict_path" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_defaults(class_folders, workers):
    data = ImageNetDataModule(data_dir=class_folders, num_workers=workers)
    assert data.pin_memory is False  # no CUDA here
    loader = data._loader(list(range(4)))
    assert loader.persistent_workers == (workers > 0)


def test_classes_without_data_for_pretrained_predict(tmp_path):
    assert classes_without_data(1000)[:2] == ["n01440764", "n01443537"]
    assert classes_without_data(10) is None
    mapping = tmp_path / "map.txt"
    mapping.write_text("b 1 bee\na 0 ant\n")
    assert classes_without_data(2, class_map=mapping) == ["a", "b"]
