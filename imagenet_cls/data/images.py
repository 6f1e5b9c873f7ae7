"""Finding image files and decoding them into RGB, the same way for train, evaluation and predict."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

from imagenet_cls.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
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

    JPEGs decode with libjpeg-turbo (``simplejpeg``), optionally at 1/2, 1/4 or 1/8 scale in the DCT domain,
    which is much faster when the result is downscaled anyway; other formats, and JPEGs libjpeg-turbo cannot turn
    into RGB (CMYK), go through PIL and :func:`to_rgb`. ``height`` and ``width`` are the upright (EXIF-oriented) size.

    Raises:
        UserError: the file cannot be read or its format is not allowed; the message names it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self.data = bytearray(Path(path).read_bytes())
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
        """RGB uint8 (3, H, W), upright; about ``1 / reduction`` of the full size for JPEGs.

        The tensor is a view of pixel-interleaved (H, W, 3) memory, the layout the resize kernels want.
        """
        import torch

        if self.is_jpeg:
            array = self._decode_jpeg(reduction)
            if array is not None:
                return torch.from_numpy(array).permute(2, 0, 1)
        try:
            with Image.open(io.BytesIO(self.data)) as image:
                if reduction > 1 and self.is_jpeg:
                    image.draft("RGB", (self.raw_width // reduction, self.raw_height // reduction))
                array = np.asarray(to_rgb(image))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise UserError(f"cannot decode image {self.path}: {error}") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def _decode_jpeg(self, reduction: int) -> np.ndarray | None:
        """(H, W, 3) uint8 upright, by libjpeg-turbo (simplejpeg) at 1/``reduction`` scale in the DCT domain.

        The same pixels as PIL's ``draft``; None for JPEGs it does not decode (CMYK, 12-bit, damaged).
        """
        import simplejpeg

        try:
            array = simplejpeg.decode_jpeg(
                self.data,
                "RGB",
                min_height=math.ceil(self.raw_height / reduction),
                min_width=math.ceil(self.raw_width / reduction),
            )
        except ValueError:
            return None  # PIL decodes them or names the error
        return orient(array, self.orientation)


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) ``array`` turned upright for its EXIF ``orientation`` (1-8), as PIL's ``exif_transpose`` does."""
    if orientation in (5, 6, 7, 8):
        array = array.transpose(1, 0, 2)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    if not flips:
        return array
    return np.ascontiguousarray(np.flip(array, flips))
