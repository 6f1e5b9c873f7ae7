import numpy as np
import pytest
from PIL import Image

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
