"""Finding image files and decoding them into RGB, the same way for train, evaluation and predict."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps

from imagenet_cls.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


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

    Raises:
        UserError: the file cannot be decoded; the message names it.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit grayscale: scale to 8 bits instead of clipping.
                image = image.point(lambda v: v / 256).convert("L")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot decode image {path}: {error}") from None
