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


def _both_decoders(path) -> list[np.ndarray]:
    """The image as load_rgb (reports, galleries) and as ImageFile.decode (training, evaluation, predict) see it."""
    from imagenet_cls.data.images import ImageFile

    return [np.asarray(load_rgb(path)), ImageFile(path).decode().permute(1, 2, 0).numpy()]


def test_multi_page_tiff_gives_its_first_page(tmp_path):
    path = tmp_path / "pages.tiff"
    first, second = Image.new("RGB", (30, 20), (250, 10, 10)), Image.new("RGB", (8, 8), (10, 10, 250))
    first.save(path, save_all=True, append_images=[second], compression="tiff_lzw")
    for array in _both_decoders(path):
        assert array.shape == (20, 30, 3)
        assert tuple(array[5, 5]) == (250, 10, 10)


def test_tiffs_pillow_cannot_open_are_decoded(tmp_path):
    import cv2

    rgb = np.zeros((12, 16, 3), np.float32)
    rgb[..., 0] = 0.5  # red channel at half, in 0..1 floats
    cv2.imwrite(str(tmp_path / "float_rgb.tif"), rgb[..., ::-1].copy())  # OpenCV writes BGR
    with pytest.raises(OSError, match="cannot identify"):
        Image.open(tmp_path / "float_rgb.tif")  # what a user got: "cannot identify image file"
    for array in _both_decoders(tmp_path / "float_rgb.tif"):
        assert array.shape == (12, 16, 3)
        assert abs(int(array[0, 0, 0]) - 128) <= 1 and array[0, 0, 1] == 0 and array[0, 0, 2] == 0


def test_broken_tiff_is_one_line_error(tmp_path):
    import cv2

    from imagenet_cls.data.images import ImageFile

    cv2.imwrite(str(tmp_path / "float.tif"), np.zeros((64, 64, 3), np.float32))
    for name, data in [
        ("header.tif", b"II*\x00" + b"\xff" * 20),
        ("cut.tif", (tmp_path / "float.tif").read_bytes()[:60]),
    ]:
        (tmp_path / name).write_bytes(data)
        for decode in (load_rgb, ImageFile):
            with pytest.raises(UserError, match=rf"^cannot decode image .*{name}: cannot identify image file"):
                decode(tmp_path / name)


def test_float_grayscale_tiff_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "float_gray.tif"
    Image.fromarray(np.full((8, 8), 0.25, np.float32)).save(path)  # Pillow mode F
    for array in _both_decoders(path):
        assert abs(int(array[0, 0, 0]) - 64) <= 1


@pytest.mark.parametrize("name", ["x.webp", "x.bmp", "x.gif", "x.png", "x.avif", "x.ppm", "x.tif"])
def test_common_formats_are_allowed(tmp_path, name):
    path = tmp_path / name
    frames = [Image.new("RGB", (16, 16), (200, 40, 40)), Image.new("RGB", (16, 16), (40, 40, 200))]
    options = {"lossless": True} if name.endswith(".webp") else {}
    if name.endswith(".avif"):
        options = {"quality": 100}
    frames[0].save(path, save_all=name.endswith(".gif"), append_images=frames[1:], **options)
    assert is_image_file(path)
    for array in _both_decoders(path):
        assert array.shape == (16, 16, 3)
        assert np.abs(array[8, 8].astype(int) - (200, 40, 40)).max() <= 12  # the first frame, colours kept


def test_format_outside_the_allow_list_is_one_line_error(tmp_path):
    from imagenet_cls.data.images import ImageFile

    path = tmp_path / "icon.png"  # an ICO under an allowed extension: sniffed from the content
    Image.new("RGB", (16, 16)).save(path, format="ICO")
    for decode in (load_rgb, ImageFile):
        with pytest.raises(UserError, match=r"^cannot decode image .*icon.png: format ICO is not an allowed image "):
            decode(path)


def test_prepare_check_uses_the_same_allow_list():
    from imagenet_cls.data import images
    from imagenet_cls.prepare import check

    assert check.EXTENSION_FORMATS is images.EXTENSION_FORMATS and check.ALLOWED_FORMATS is images.ALLOWED_FORMATS
    assert set(images.EXTENSION_FORMATS.values()) <= images.ALLOWED_FORMATS


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
