from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imagenet_cls.data.images import is_image_file, iter_image_files, load_rgb
from imagenet_cls.errors import UserError
from tests.conftest import write_image


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "RGB"])
def test_modes_become_rgb(tmp_path, mode):
    fmt = "JPEG" if mode in ("L", "CMYK", "RGB") else "PNG"
    path = write_image(tmp_path / f"x.{fmt.lower()}", (200, 100, 50), mode=mode, fmt=fmt)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (24, 24)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(path)
    value = np.asarray(load_rgb(path))[0, 0, 0]
    assert abs(int(value) - 40000 // 256) <= 1


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(path, exif=exif)
    assert load_rgb(path).size == (20, 40)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    with pytest.raises(UserError, match="cannot decode image .*text.jpg"):
        load_rgb(text)
    good = write_image(tmp_path / "good.jpg", (1, 2, 3), size=(64, 64))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated.jpg"):
        load_rgb(truncated)


def test_listing_skips_hidden_and_non_images(tmp_path):
    write_image(tmp_path / "a" / "1.JPEG", (0, 0, 0))
    write_image(tmp_path / ".cache" / "2.jpg", (0, 0, 0))
    (tmp_path / "a" / "readme.md").write_text("x")
    assert [p.name for p in iter_image_files(tmp_path)] == ["1.JPEG"]
    assert is_image_file("x.PNG") and not is_image_file(".x.png") and not is_image_file("x.txt")


def _photo(path, size=(64, 48), orientation=1, mode="RGB"):
    """A JPEG with structure in both directions (a gradient plus noise), so flips and rotations are visible."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([xx * 255 // size[0], yy * 255 // size[1], rng.integers(0, 255, xx.shape)], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(path, exif=exif, quality=90)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_jpeg_decode_equals_pil_upright_at_every_dct_scale(tmp_path, orientation, reduction):
    from imagenet_cls.data.images import ImageFile

    path = _photo(tmp_path / "photo.jpg", size=(640, 480), orientation=orientation)
    image = ImageFile(path)
    with Image.open(path) as reference:
        reference.draft("RGB", (640 // reduction, 480 // reduction))
        expected = np.asarray(ImageOps.exif_transpose(reference).convert("RGB"))
    pixels = image.decode(reduction)
    assert pixels.shape == (3, *expected.shape[:2])
    assert (pixels.shape[1], pixels.shape[2]) == ((image.height // reduction, image.width // reduction))
    np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_cmyk_and_grayscale_jpegs_decode_to_rgb(tmp_path, mode):
    from imagenet_cls.data.images import ImageFile

    path = _photo(tmp_path / f"{mode}.jpg", mode=mode)
    expected = np.asarray(load_rgb(path))
    pixels = ImageFile(path).decode().permute(1, 2, 0).numpy()
    assert pixels.shape == expected.shape and np.abs(pixels.astype(int) - expected).max() <= 1


def test_no_torchvision_io_decoding_left():
    """torchvision.io's image decoding is deprecated (0.29): nothing in the package or the benchmarks uses it."""
    root = Path(__file__).resolve().parents[1]
    users = [
        p for p in [*root.glob("imagenet_cls/**/*.py"), *root.glob("bench/*.py")] if "torchvision.io" in p.read_text()
    ]
    assert users == []
