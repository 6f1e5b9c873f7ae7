"""Finding image files and decoding them into RGB, the same way for train, evaluation and predict."""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

from imagenet_cls.errors import UserError

# The one allow-list: file extension -> the format it should hold (PIL's name). Files are listed by extension, but
# decoded by the format sniffed from their content, which must be one of these (a PNG named .JPEG loads; an ICO
# named .png does not). TIFF and GIF give their first page / frame.
EXTENSION_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".gif": "GIF",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".avif": "AVIF",
}
IMAGE_EXTENSIONS = tuple(EXTENSION_FORMATS)
WRITABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # what OpenCV writes
ALLOWED_FORMATS = frozenset({*EXTENSION_FORMATS.values(), "MPO"})  # MPO: a JPEG with extra frames (phones)
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # little/big endian, classic/BigTIFF
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
        with open_image(path) as image:
            _check_header(image)
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot decode image {path}: {error}") from None


def open_image(source: str | Path | io.BytesIO) -> Image.Image:
    """``Image.open(source)``, and OpenCV for the TIFFs Pillow cannot open (floating-point or 32-bit RGB).

    Such a TIFF's first page comes back as an 8-bit RGB image whose ``format`` is ``TIFF``.

    Raises:
        OSError: neither can decode it (Pillow's "cannot identify image file").
    """
    try:
        return Image.open(source)
    except Image.UnidentifiedImageError:
        data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        if not data.startswith(TIFF_SIGNATURES):
            raise
        image = _tiff_through_opencv(data)
        if image is None:
            raise
        return image


def _tiff_through_opencv(data: bytes) -> Image.Image | None:
    """The first page of a TIFF decoded by OpenCV, scaled to 8-bit RGB; None when OpenCV cannot read it either."""
    import cv2

    try:
        width, height = _tiff_size(data)
    except (struct.error, OSError, ValueError, SyntaxError, KeyError, EOFError, TypeError):
        return None  # not even a readable header
    if width * height == 0:
        return None
    if width * height > Image.MAX_IMAGE_PIXELS:  # checked before decoding, as Pillow does
        raise Image.DecompressionBombError(f"{width}x{height} exceeds the pixel limit")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # first page, depth kept
    if array is None:
        return None
    array = _to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    image = Image.fromarray(array)
    image.format = "TIFF"
    image.info["decoder"] = "opencv"
    return image


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Width and height of a TIFF's first page, read from its header (no pixels decoded)."""
    from PIL import TiffImagePlugin

    directory = TiffImagePlugin.ImageFileDirectory_v2(data[:8] if data[2:4] != b"+\x00" else data[:16])
    file = io.BytesIO(data)
    file.seek(directory.next)
    directory.load(file)
    return int(directory.get(256, 0)), int(directory.get(257, 0))  # ImageWidth, ImageLength


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Integers scaled by their type's range; floats taken as 0..1 (or 0..255 when larger values occur)."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array.astype(np.float32))
        scale = 255.0 if float(array.max(initial=0)) <= 1.0 else 1.0
        return np.clip(array * scale, 0, 255).astype(np.uint8)
    info = np.iinfo(array.dtype)
    return ((array.astype(np.float64) - info.min) * (255 / (info.max - info.min))).round().astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation) in RGB: 16-bit scaled to 8, transparency over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping.
        image = image.point(lambda v: v / 256).convert("L")
    elif image.mode == "F":  # floating-point grayscale (TIFF): 0..1, or 0..255 when larger values occur
        image = Image.fromarray(_to_uint8(np.asarray(image)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, not over whatever colour they happen to store.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _check_header(image: Image.Image) -> None:
    # ValueError: the callers name the file ("cannot decode image <path>: ...")
    if image.format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise ValueError(f"format {image.format} is not an allowed image format ({allowed})")
    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"{image.width}x{image.height} exceeds the pixel limit")


class ImageFile:
    """An image file read into memory with its header checked; decoded on demand to an RGB uint8 tensor.

    JPEGs decode with libjpeg-turbo (``simplejpeg``), optionally at 1/2, 1/4 or 1/8 scale in the DCT domain,
    which is much faster when the result is downscaled anyway; other formats, and JPEGs libjpeg-turbo cannot turn
    into RGB (CMYK), go through PIL and :func:`to_rgb`. ``height`` and ``width`` are the upright (EXIF-oriented) size.

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
            with open_image(io.BytesIO(self.data)) as header:
                if header.info.get("decoder") == "opencv":  # keep the decoded page, as PNG, for decode()
                    self.data = bytearray(_png_bytes(header))
                _check_header(header)
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
