"""Pictures of the evaluation report, drawn with OpenCV: confusion heat map, confused pairs, mistake gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY, RED, GREEN = (255, 255, 255), (0, 0, 0), (90, 90, 90), (40, 40, 210), (40, 150, 40)


def write_confusion_matrix(path: Path, confusion: np.ndarray, names: list[str], title: str) -> Path:
    """A heat map of ``confusion`` (rows true, columns predicted) coloured by the share of each true class.

    Every non-empty cell shows its count; rows are labelled ``index name``, columns by index.
    """
    import cv2

    classes = len(confusion)
    cell = int(np.clip(720 // max(classes, 1), 28, 64))
    scale = 0.45
    labels = [f"{i} {_shorten(name, 24)}" for i, name in enumerate(names)]
    left = 16 + max(_text_width(label, scale) for label in labels)
    top = 90
    width, height = left + classes * cell + 20, top + classes * cell + 50
    width = max(width, _text_width(title, 0.6) + 30)
    canvas = np.full((height, width, 3), 255, np.uint8)
    _text(canvas, title, (10, 28), 0.6, BLACK, 1)
    _text(canvas, "rows: true class   columns: predicted class   colour: share of the row", (10, 54), 0.45, GREY)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    colours = cv2.applyColorMap((255 - shares * 255).astype(np.uint8), cv2.COLORMAP_BONE)  # dark = large share
    for row in range(classes):
        y = top + row * cell
        _text(canvas, labels[row], (8, y + cell // 2 + 5), scale, BLACK)
        for column in range(classes):
            x = left + column * cell
            canvas[y : y + cell, x : x + cell] = colours[row, column]
            count = int(confusion[row, column])
            if count:
                colour = WHITE if shares[row, column] > 0.5 else BLACK
                text = str(count)
                size = min(scale, 0.9 * cell / max(_text_width(text, 1.0), 1))
                _text(canvas, text, (x + (cell - _text_width(text, size)) // 2, y + cell // 2 + 5), size, colour)
            cv2.rectangle(canvas, (x, y), (x + cell, y + cell), (210, 210, 210), 1)
    for column in range(classes):
        text = str(column)
        x = left + column * cell + (cell - _text_width(text, scale)) // 2
        _text(canvas, text, (x, top - 8), scale, BLACK)
    cv2.imwrite(str(path), canvas)
    return path


def write_confused_pairs(path: Path, pairs: list[dict[str, Any]], title: str) -> Path:
    """The most-confused (true -> predicted) pairs as a table with a bar per pair (for many classes)."""
    import cv2

    row_height, scale = 26, 0.5
    lines = [f"{_shorten(p['true'], 30)}  ->  {_shorten(p['predicted'], 30)}" for p in pairs] or ["no mistakes"]
    text_width = max(_text_width(line, scale) for line in lines)
    bar_width = 260
    width = max(20 + text_width + 20 + bar_width + 120, _text_width(title, 0.6) + 30)
    height = 80 + row_height * len(lines) + 20
    canvas = np.full((height, width, 3), 255, np.uint8)
    _text(canvas, title, (10, 28), 0.6, BLACK, 1)
    _text(canvas, "most-confused pairs: true -> predicted, images (share of the true class)", (10, 54), 0.45, GREY)
    largest = max((p["count"] for p in pairs), default=1)
    for row, line in enumerate(lines):
        y = 80 + row * row_height
        _text(canvas, line, (20, y + 17), scale, BLACK)
        if row < len(pairs):
            x = 40 + text_width
            length = max(2, int(bar_width * pairs[row]["count"] / largest))
            cv2.rectangle(canvas, (x, y + 5), (x + length, y + row_height - 5), RED, -1)
            label = f"{pairs[row]['count']} ({pairs[row]['share_of_true']:.0%})"
            _text(canvas, label, (x + length + 8, y + 17), scale, BLACK)
    cv2.imwrite(str(path), canvas)
    return path


def write_gallery(
    path: Path, mistakes: list[tuple[str, str, str, float]], title: str, tile: int = 224, open_image=None
) -> Path:
    """A grid of misclassified images (most confident first), each captioned with its true and predicted label.

    ``open_image(name)`` gives the RGB image of a mistake's name (default: the file of that path).
    """
    import cv2

    from imagenet_cls.data.images import load_rgb
    from imagenet_cls.errors import UserError

    open_image = open_image or load_rgb

    columns = min(4, len(mistakes))
    rows = -(-len(mistakes) // columns)
    caption = 64
    header = 56
    width = columns * tile
    canvas = np.full((header + rows * (tile + caption), width, 3), 255, np.uint8)
    _text(canvas, _fitting("most confident mistakes", width - 16, 0.55), (8, 22), 0.55, BLACK, 1)
    _text(canvas, _fitting(title, width - 16, 0.45), (8, 44), 0.45, GREY)
    for n, (image_path, true, predicted, prob) in enumerate(mistakes):
        x, y = (n % columns) * tile, header + (n // columns) * (tile + caption)
        try:
            image = np.asarray(open_image(image_path))
        except UserError:
            image = np.full((tile, tile, 3), 200, np.uint8)
        image = cv2.cvtColor(_fit(image, tile - 8), cv2.COLOR_RGB2BGR)
        h, w = image.shape[:2]
        top, left = y + 4 + (tile - 8 - h) // 2, x + 4 + (tile - 8 - w) // 2
        canvas[top : top + h, left : left + w] = image
        _text(canvas, _fitting(f"true: {true}", tile - 10, 0.45), (x + 5, y + tile + 20), 0.45, GREEN, 1)
        _text(canvas, _fitting(f"pred: {predicted}", tile - 10, 0.45), (x + 5, y + tile + 40), 0.45, RED, 1)
        _text(canvas, f"p={prob:.3f}  {_shorten(Path(image_path).name, 20)}", (x + 5, y + tile + 58), 0.4, GREY)
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    scale = size / max(h, w)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour, thickness: int = 1) -> None:
    import cv2

    cv2.putText(canvas, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def _text_width(text: str, scale: float) -> int:
    import cv2

    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fitting(text: str, width: int, scale: float) -> str:
    """``text`` cut (with ...) to fit ``width`` pixels at ``scale``."""
    while len(text) > 4 and _text_width(text, scale) > width:
        text = text[:-4] + "..."
    return text
