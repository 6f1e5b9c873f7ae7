import random

import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_cls.data.transforms import create_eval_transform, create_train_transform, posterize_keeping_zero_bits

CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
}


def test_eval_and_train_transforms_give_uint8_tensors():
    image = Image.new("RGB", (50, 40), (10, 20, 30))
    for transform in (create_eval_transform(CONFIG), create_train_transform(CONFIG, auto_augment="rand-m9-mstd0.5")):
        out = transform(image)
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


def test_posterize_zero_bits_is_black_not_an_error():
    image = Image.new("RGB", (4, 4), (200, 100, 50))
    assert np.asarray(posterize_keeping_zero_bits(image, 0)).max() == 0
    assert np.asarray(posterize_keeping_zero_bits(image, 1)).tolist()[0][0] == [128, 0, 0]
    assert posterize_keeping_zero_bits(image, 8) is image


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m10-n4-mstd1.0-inc1"])
def test_randaugment_survives_many_draws(policy):
    """Pillow 13 fails timm's posterize in ~0.2% of rand-m9-mstd0.5-inc1 draws; 4000 draws hit it ~8 times."""
    transform = create_train_transform(CONFIG, auto_augment=policy, scale=(0.5, 1.0))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    torch.manual_seed(0)
    random.seed(0)  # timm draws its ops with Python's random
    for _ in range(4000):
        assert transform(image).shape == (3, 32, 32)


def _photo(path, size, seed=0, exif=None):
    """A smooth, textured JPEG (like a photo: resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    image.save(path, quality=95, **({"exif": exif} if exif else {}))
    return path


@pytest.mark.parametrize("size", [(300, 200), (137, 311), (1200, 900)])
def test_eval_transform_matches_timm_eval_crop(tmp_path, size):
    """Same pixels as timm's Resize + CenterCrop (bicubic), incl. DCT-reduced decoding of large JPEGs."""
    from timm.data import create_transform

    from imagenet_cls.data.images import ImageFile, load_rgb

    path = _photo(tmp_path / "photo.jpg", size)
    config = {"input_size": (3, 96, 96), "interpolation": "bicubic", "crop_pct": 0.875}
    timm_eval = create_transform(**config, is_training=False, use_prefetcher=True)
    reference = timm_eval(load_rgb(path)).float()
    ours = create_eval_transform(config)(ImageFile(path)).float()
    assert ours.shape == reference.shape == (3, 96, 96)
    # torch's antialiased bicubic equals PIL's up to rounding; the 1200x900 JPEG is decoded at 1/2 scale.
    assert (ours - reference).abs().mean() < (1.0 if max(size) > 1000 else 0.25)
    assert np.corrcoef(ours.flatten(), reference.flatten())[0, 1] > 0.99


def test_large_jpegs_are_decoded_at_reduced_dct_scale(tmp_path, monkeypatch):
    from imagenet_cls.data.images import ImageFile

    path = _photo(tmp_path / "big.jpg", (1200, 900))
    sizes = []
    original = ImageFile.decode

    def spy(self, reduction=1):
        decoded = original(self, reduction)
        sizes.append(tuple(decoded.shape[1:]))
        return decoded

    monkeypatch.setattr(ImageFile, "decode", spy)
    create_eval_transform({"input_size": (3, 96, 96), "interpolation": "bicubic", "crop_pct": 0.875})(ImageFile(path))
    assert sizes == [(450, 600)]  # 1/2: the 792-px centre crop keeps >= 3 x 96 px; 1/4 would not
    create_eval_transform({"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 1.0})(ImageFile(path))
    assert sizes[-1] == (900, 1200)  # a 900-px crop to 224: under 2 x 224 after 1/2, so full size


def test_exif_orientation_is_applied(tmp_path):
    from imagenet_cls.data.images import ImageFile

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 200x100, shown 100x200
    image = ImageFile(_photo(tmp_path / "rotated.jpg", (200, 100), exif=exif.tobytes()))
    assert (image.height, image.width) == (200, 100) and image.decode().shape == (3, 200, 100)


def test_train_crops_are_torchvisions_boxes_for_the_same_seed(tmp_path):
    """Same seed, same RandomResizedCrop boxes and flips as torchvision's reference, and the same pixels."""
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import functional as F

    from imagenet_cls.data.images import ImageFile

    path = _photo(tmp_path / "photo.jpg", (180, 140))
    transform = create_train_transform({"input_size": (3, 64, 64), "interpolation": "bilinear"}, hflip=0.5)
    pil = Image.open(path).convert("RGB")
    pixels = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    flips = 0
    for seed in range(30):
        torch.manual_seed(seed)
        box = RandomResizedCrop.get_params(pil, [0.08, 1.0], [3 / 4, 4 / 3])
        flip = torch.rand(1).item() < 0.5
        expected = F.resized_crop(pixels, *box, [64, 64], antialias=True)
        expected = expected.flip(-1) if flip else expected
        torch.manual_seed(seed)
        assert transform.box(140, 180) == tuple(float(v) for v in box)
        torch.manual_seed(seed)
        assert torch.equal(transform(ImageFile(path)), expected)
        flips += flip
    assert 5 < flips < 25


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    from imagenet_cls.data.images import ImageFile
    from imagenet_cls.errors import UserError

    path = _photo(tmp_path / "whole.jpg", (120, 90))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(UserError, match="cut.jpg"):
        create_eval_transform({"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 0.875})(
            ImageFile(cut)
        )


def test_posterize_fix_leaves_timms_op_table_alone():
    from timm.data import auto_augment

    transform = create_train_transform(CONFIG, auto_augment="rand-m9-mstd0.5-inc1")
    assert auto_augment.NAME_TO_OP["PosterizeIncreasing"] is not posterize_keeping_zero_bits  # no global change
    ops = [op for step in transform.augment.transforms for op in getattr(step, "ops", [])]
    assert any(op.aug_fn is posterize_keeping_zero_bits for op in ops if op.name.startswith("Posterize"))
