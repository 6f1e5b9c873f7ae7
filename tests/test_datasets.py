from pathlib import Path

import numpy as np
import pytest
import torch

from imagenet_cls.data.batches import collate_predict
from imagenet_cls.data.datasets import PredictDataset, fit_within, resolve_predict_paths
from imagenet_cls.data.transforms import EvalTransform
from imagenet_cls.errors import UserError
from tests.conftest import write_image


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "in"
    write_image(root / "a" / "cat.jpg", (10, 10, 10))
    write_image(root / "b" / "cat.jpg", (10, 10, 10))
    write_image(root / "b" / "deep" / "dog.png", (10, 10, 10), fmt="PNG")
    (root / "b" / "notes.txt").write_text("x")
    return root


def test_file_folder_glob_and_list(images, tmp_path):
    files, root = resolve_predict_paths(images / "a" / "cat.jpg")
    assert files == [str(images / "a" / "cat.jpg")] and root == images / "a"
    files, root = resolve_predict_paths(images)
    assert [Path(f).relative_to(images).as_posix() for f in files] == ["a/cat.jpg", "b/cat.jpg", "b/deep/dog.png"]
    assert root == images
    files, _ = resolve_predict_paths(f"{images}/**/*.png")
    assert [Path(f).name for f in files] == ["dog.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nin/a/cat.jpg\n\n" + str(images / "b" / "deep" / "dog.png") + "\n")
    files, root = resolve_predict_paths(listing)
    assert [Path(f).name for f in files] == ["cat.jpg", "dog.png"]
    assert root == images


def test_bad_predict_paths(images, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_predict_paths(tmp_path / "nothing")
    with pytest.raises(UserError, match="matches no image"):
        resolve_predict_paths(f"{images}/**/*.bmp")
    listing = tmp_path / "list.txt"
    listing.write_text("in/missing.jpg\n")
    with pytest.raises(UserError, match="lists in/missing.jpg"):
        resolve_predict_paths(listing)


def test_predict_dataset_marks_bad_files_and_keeps_going(tmp_path):
    good = write_image(tmp_path / "good.jpg", (0, 0, 0), size=(100, 50))
    bad = tmp_path / "bad.jpg"
    bad.write_text("text")

    transform = EvalTransform((8, 8), crop_pct=1.0, interpolation="bilinear")
    dataset = PredictDataset([str(good), str(bad)], tmp_path, transform, (800, 600))
    batch = collate_predict([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"].dtype == torch.uint8
    assert batch["error"][0] == "" and "bad.jpg" in batch["error"][1]
    assert batch["display"][0].shape == (400, 800, 3) and batch["display"][1] is None
    assert batch["index"] == [0, 1]


@pytest.mark.parametrize(
    ("size", "expected"), [((32, 32), (600, 600)), ((1600, 600), (800, 300)), ((10, 300), (20, 600))]
)
def test_display_copy_fits_within_800x600(size, expected):
    shown = fit_within(np.zeros((size[1], size[0], 3), np.uint8), (800, 600))
    assert shown.shape[:2] == (expected[1], expected[0])
