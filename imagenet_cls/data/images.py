"""Finding image files and decoding them into RGB, the same way for train, evaluation and predict."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

from imagenet_cls.errors import UserError

WRITABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # what OpenCV writes
IMAGE_EXTENSIONS = (*WRITABLE_EXTENSIONS, ".ppm", ".pgm", ".gif")
# Formats the loader decodes (PIL's names, sniffed from the content, not the extension).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM"})
EXIF_ORIENTATION = 0x0112


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is hidden (``.ipynb_checkpoints``, ``.DS_Store``)."""
    return name.startswith(".")


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image extension and is not hidden."""
    name = os.path.basename(str(path))
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def iter_image_files(root: Path) -> Iterator[Path]:
    """Yield image files under ``root`` recursively, in sorted order, skipping hidden files and folders.

    Symbolic links to files are followed; links to folders are not, so a link cycle cannot loop.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if is_image_file(name):
                yield Path(dirpath) / name


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file into an RGB PIL image, with its EXIF orientation applied.

    The format is sniffed from the content and must be in :data:`ALLOWED_FORMATS`; images over PIL's
    ``MAX_IMAGE_PIXELS`` are refused. CMYK, grayscale, palette, alpha and 16-bit images become RGB.

    Raises:
        UserError: the file cannot be decoded or is not allowed; the message names it.
    """
    try:
        with Image.open(path) as image:
            _check_header(image, path)
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot decode image {path}: {error}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation) in RGB: 16-bit scaled to 8, transparency over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping.
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, not over whatever colour they happen to store.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _check_header(image: Image.Image, path: str | Path) -> None:
    if image.format not in ALLOWED_FORMATS:
        raise UserError(f"cannot decode image {path}: format {image.format} is not an allowed image format")
    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise UserError(f"cannot decode image {path}: {image.width}x{image.height} exceeds the pixel limit")


class ImageFile:
    """An image file read into memory with its header checked; decoded on demand to an RGB uint8 tensor.

    JPEGs decode with libjpeg-turbo (``torchvision.io.decode_jpeg``), optionally at 1/2, 1/4 or 1/8 scale in the
    DCT domain (PIL's ``draft``), which is much faster when the result is downscaled anyway; other formats go
    through :func:`to_rgb`. ``height`` and ``width`` are the upright (EXIF-oriented) size.

    Args:
        path: The file, or only the name messages give when ``data`` holds its bytes already (an optimized dataset).
        data: The file's bytes; None: read from ``path``.

    Raises:
        UserError: the file cannot be read or its format is not allowed; the message names it.
    """

    def __init__(self, path: str | Path, data: bytes | memoryview | None = None) -> None:
        self.path = str(path)
        try:
            self.data = bytearray(Path(path).read_bytes() if data is None else data)
            with Image.open(io.BytesIO(self.data)) as header:
                _check_header(header, path)
                self.format = header.format
                self.raw_width, self.raw_height = header.size
                has_exif = self.is_jpeg and "exif" in header.info
                self.orientation = header.getexif().get(EXIF_ORIENTATION, 1) if has_exif else 1
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise UserError(f"cannot decode image {path}: {error}") from None
        transposed = self.orientation in (5, 6, 7, 8)
        self.height, self.width = (self.raw_width, self.raw_height) if transposed else (self.raw_height, self.raw_width)

    @property
    def is_jpeg(self) -> bool:
        return self.format in ("JPEG", "MPO")

    def reduction(self, limit: float) -> int:
        """The largest DCT reduction (8, 4 or 2; 1 for other formats or when none fits) not above ``limit``."""
        if self.is_jpeg:
            for factor in (8, 4, 2):
                if factor <= limit:
                    return factor
        return 1

    def decode(self, reduction: int = 1) -> torch.Tensor:
        """RGB uint8 (3, H, W), upright; about ``1 / reduction`` of the full size for JPEGs."""
        import torch

        if self.is_jpeg and reduction == 1:
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                encoded = torch.frombuffer(self.data, dtype=torch.uint8)
                # EXIF is parsed once, in __init__; torchvision's own parse costs ~10% of the decode.
                upright = self.orientation != 1
                return decode_jpeg(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=upright)
            except RuntimeError:
                pass  # odd JPEGs (e.g. 12-bit): PIL below decodes them or names the error
        try:
            with Image.open(io.BytesIO(self.data)) as image:
                if reduction > 1 and self.is_jpeg:
                    image.draft("RGB", (self.raw_width // reduction, self.raw_height // reduction))
                array = np.asarray(to_rgb(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise UserError(f"cannot decode image {self.path}: {error}") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)
