"""Finding image files and decoding them into RGB, the same way for train, evaluation and predict."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps

from imagenet_cls.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
# Formats the loader decodes (PIL's names, sniffed from the content, not the extension).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM"})


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
            if image.format not in ALLOWED_FORMATS:
                raise UserError(f"cannot decode image {path}: format {image.format} is not an allowed image format")
            if image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise UserError(f"cannot decode image {path}: {image.width}x{image.height} exceeds the pixel limit")
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
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot decode image {path}: {error}") from None
