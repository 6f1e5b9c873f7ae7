"""Torch datasets over image files: labelled samples for train/val/test, and unlabelled files for predict."""

from __future__ import annotations

import glob
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from imagenet_cls.data.batches import BadSample
from imagenet_cls.data.images import WRITABLE_EXTENSIONS, ImageFile, is_image_file, iter_image_files
from imagenet_cls.data.layout import Sample
from imagenet_cls.data.retries import StorageError
from imagenet_cls.errors import MissingPathError, UserError

if TYPE_CHECKING:
    from imagenet_cls.data.transforms import EvalTransform

Transform = Callable[[ImageFile], torch.Tensor]


class ImageFileDataset(Dataset):
    """Labelled images: item ``i`` is ``(image tensor, class index)``.

    A file that cannot be decoded is an error naming it, or, with ``skip_bad``, a :class:`BadSample` that
    :func:`collate_skipping_bad` drops and reports. Another sample is never substituted.
    """

    def __init__(
        self, samples: list[Sample], transform: Transform, skip_bad: bool = False, timeout: float | None = None
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.skip_bad = skip_bad
        self.timeout = timeout

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int] | BadSample:
        """Item ``index``; ``(index, seed)`` (from :class:`ResumableSampler`) draws its augmentations from ``seed``."""
        if isinstance(index, tuple):
            from imagenet_cls.data.sampling import seeded

            index, seed = index
            with seeded(seed):
                return self._item(index)
        return self._item(index)

    def _item(self, index: int) -> tuple[torch.Tensor, int] | BadSample:
        where = self.describe(index)
        try:
            with time_limit(self.timeout, where):
                image, label = self.read(index)
                return self.transform(image), label
        except StorageError:  # the bucket or the network, not this image: never skipped
            raise
        except UserError as error:
            if not self.skip_bad:
                raise UserError(f"{error} (set --data.skip_bad_images true to skip such files)") from None
            return BadSample(where, str(error))

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from, for messages (its file)."""
        return self.samples[index][0]

    def read(self, index: int) -> tuple[ImageFile, int]:
        """Item ``index``'s image, read but not decoded, and its class index."""
        path, label = self.samples[index]
        return ImageFile(path), label

    def rgb(self, index: int):
        """Item ``index`` as an upright RGB PIL image (for reports)."""
        from PIL import Image

        return Image.fromarray(self.read(index)[0].decode().permute(1, 2, 0).numpy())


@contextmanager
def time_limit(seconds: float | None, path: str) -> Iterator[None]:
    """Raise a UserError naming ``path`` when the block runs longer than ``seconds`` (a hung mount, a stuck read).

    Uses SIGALRM, so it applies in a process's main thread: DataLoader workers and ``num_workers=0``.
    """
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise UserError(
            f"reading {path} took over {seconds:g} s: check the file and its storage (--data.sample_timeout)"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PredictDataset(Dataset):
    """Unlabelled images for predict.

    Item ``i`` is a dict with the model input ``image``, its ``index``, the file ``path``, its output path
    ``relative`` to the run's image folder (mirroring the tree under ``root``), a ``display`` copy
    (RGB uint8 array scaled to fit within ``display_size``, for the annotated output; None when ``display_size`` is
    None: no annotated images are written, so none is made) and ``error`` ("" when the file decoded). A file that
    cannot be decoded yields a zero image and its error, so one bad file does not stop the run.
    """

    def __init__(
        self,
        paths: list[str],
        root: Path,
        transform: EvalTransform,
        display_size: tuple[int, int] | None,
        timeout: float | None = None,
    ) -> None:
        self.timeout = timeout
        self.paths = paths
        self.root = root
        self.transform = transform
        self.display_size = display_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.describe(index)
        item = {"index": index, "path": path, "relative": self.relative(index)}
        try:
            with time_limit(self.timeout, path):
                model_input, display = self._decode(self.open(index))
        except StorageError:  # a bucket that cannot be read stops predict, not one row
            raise
        except UserError as error:
            blank = torch.zeros((3, *self.transform.size), dtype=torch.uint8)
            return {**item, "image": blank, "display": None, "error": str(error)}
        return {**item, "image": model_input, "display": display, "error": ""}

    def describe(self, index: int) -> str:
        """Item ``index``'s file, as the CSV and messages name it."""
        return self.paths[index]

    def relative(self, index: int) -> str:
        """Item ``index``'s annotated copy under the run's image folder."""
        return str(output_path(self.paths[index], self.root))

    def open(self, index: int) -> ImageFile:
        """Item ``index``'s image, read but not decoded."""
        return ImageFile(self.paths[index])

    def _decode(self, image: ImageFile) -> tuple[torch.Tensor, np.ndarray | None]:
        return decode_for_predict(image, self.transform, self.display_size)


def decode_for_predict(
    image: ImageFile, transform: EvalTransform, display_size: tuple[int, int] | None
) -> tuple[torch.Tensor, np.ndarray | None]:
    """The model input and the display copy from one decode, as small as both allow (predict and serve).

    ``display_size`` None (CSV only): no display copy, decoded as small as the model input alone allows.
    """
    limit = transform.decode_limit(image.height, image.width)
    if display_size is None:
        pixels = image.decode(image.reduction(limit))
        return transform.from_pixels(pixels, image.height, image.width), None
    display_scale = min(display_size[0] / image.width, display_size[1] / image.height)
    pixels = image.decode(image.reduction(min(limit, 1 / display_scale)))
    model_input = transform.from_pixels(pixels, image.height, image.width)
    return model_input, fit_within(pixels.permute(1, 2, 0).numpy(), display_size)


def fit_within(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) copy of ``image`` (H, W, 3) scaled up or down to fit within ``size`` (W, H), aspect kept."""
    import cv2

    height, width = image.shape[:2]
    scale = min(size[0] / width, size[1] / height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR  # OpenCV: ~10x faster than PIL here
    return cv2.resize(np.ascontiguousarray(image), target, interpolation=interpolation)


def resolve_predict_paths(spec: str | Path) -> tuple[list[str], Path]:
    """Expand ``--data.predict_path`` into image files and the root their output paths are relative to.

    ``spec`` is an image file, a folder (read recursively, hidden entries skipped), a glob pattern, or a
    ``.txt`` file listing one image path per line (relative paths are relative to the list's folder).
    Files given explicitly (file, list) are taken whatever their content, so bad files show up as errors.

    Raises:
        UserError: nothing matches, or the list names a file that does not exist.
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        files = [str(p) for p in iter_image_files(path)]
    elif path.is_file() and path.suffix.lower() == ".txt":
        files = _read_path_list(path)
    elif path.is_file():
        files = [spec]
    elif glob.has_magic(spec):
        files = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and is_image_file(p))
    else:
        raise MissingPathError(f"--data.predict_path {spec} does not exist: give an image, a folder, a glob or a list")
    if not files:
        raise UserError(f"--data.predict_path {spec} matches no image file ({', '.join(_EXAMPLES)})")
    return files, _common_root(files, path if path.is_dir() else None)


_EXAMPLES = ("img.jpg", "folder/", "'folder/**/*.jpg'", "list.txt")


def _read_path_list(list_file: Path) -> list[str]:
    files = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        file = Path(line) if os.path.isabs(line) else list_file.parent / line
        if not file.is_file():
            raise MissingPathError(f"{list_file} lists {line}, which is not a file: fix or remove that line")
        files.append(str(file))
    return files


def _common_root(files: list[str], folder: Path | None) -> Path:
    if folder is not None:
        return folder
    parents = [os.path.dirname(os.path.abspath(f)) for f in files]
    return Path(os.path.commonpath(parents))


def output_path(path: str, root: Path) -> Path:
    """The annotated copy's path under the run's image folder: mirrors the tree under ``root``, never escapes."""
    try:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    except ValueError:  # another drive on Windows
        relative = os.path.basename(path)
    return safe_output_path(relative, os.path.basename(path))


def safe_output_path(relative: str, fallback: str) -> Path:
    """``relative`` without ``..``, ``.`` or absolute parts (``fallback`` when none is left), writable by OpenCV.

    Names come from data (list lines, optimized datasets): NUL and other control characters become ``_``, each
    part is cut to ``MAX_PART_BYTES`` and the whole to ``MAX_PATH_BYTES`` (its last parts kept), so the copy can
    always be written, and always under the output folder.
    """
    parts = [_writable_part(part) for part in Path(_printable(relative)).parts if part not in ("..", ".", "", "/")]
    parts = [part for part in parts if part not in ("..", ".") and not os.path.isabs(part)]
    while len(parts) > 1 and len("/".join(parts).encode()) > MAX_PATH_BYTES:
        parts.pop(0)
    fallback_part = _writable_part(_printable(os.path.basename(fallback)))
    relative = Path(*parts) if parts else Path(fallback_part if fallback_part not in ("", ".", "..") else "image")
    if relative.suffix.lower() not in WRITABLE_EXTENSIONS:  # OpenCV writes these; others (gif) become .png
        relative = relative.with_name(_writable_part(relative.name, reserve=4) + ".png")
    return relative


MAX_PART_BYTES = 200  # under every file system's 255-byte name limit, with room for a suffix
MAX_PATH_BYTES = 1024  # far under PATH_MAX (4096) with the output folder in front


def _printable(text: str) -> str:
    return "".join("_" if ord(char) < 32 or char == "\x7f" else char for char in text)


def _writable_part(part: str, reserve: int = 0) -> str:
    """``part`` cut to ``MAX_PART_BYTES - reserve`` bytes of UTF-8, its suffix kept."""
    limit = MAX_PART_BYTES - reserve
    if len(part.encode()) <= limit:
        return part
    stem, suffix = os.path.splitext(part)
    suffix = suffix if len(suffix.encode()) <= 16 else ""
    return stem.encode()[: limit - len(suffix.encode())].decode(errors="ignore") + suffix
