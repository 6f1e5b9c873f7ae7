"""Pictures of the evaluation report, drawn with OpenCV: confusion, confused pairs, reliability, mistakes.

Names arrive as they are shown (spaces for ``_``, see :func:`~imagenet_cls.callbacks.annotate.display_name`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY, RED, GREEN = (255, 255, 255), (0, 0, 0), (90, 90, 90), (40, 40, 210), (40, 150, 40)
BLUE, LIGHT_GREY = (180, 110, 40), (220, 220, 220)  # BGR


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


def write_reliability_diagram(path: Path, calibration: np.ndarray, ece: float, title: str) -> Path:
    """Accuracy against confidence per bin (bars), the diagonal, the gap in red, and the images per bin below.

    ``calibration`` is (bins, 3): images, mean top-1 probability, top-1 accuracy.
    """
    # Long on purpose: drawing code, one canvas element after another; split up, its coordinates would scatter.
    import cv2

    bins = len(calibration)
    plot, left, top = 420, 70, 96
    strip = 70  # the images-per-bin histogram under the plot
    width = max(left + plot + 50, _text_width(title, 0.6) + 30)
    height = top + plot + 40 + strip + 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    _text(canvas, title, (10, 28), 0.6, BLACK, 1)
    _text(canvas, f"expected calibration error (ECE) {ece:.4f}, {bins} bins", (10, 54), 0.5, BLACK, 1)
    _text(
        canvas,
        "bars: accuracy per confidence bin   red: gap to the diagonal (perfect calibration)",
        (10, 76),
        0.4,
        GREY,
    )

    def x_at(value: float) -> int:
        return left + round(value * plot)

    def y_at(value: float) -> int:
        return top + plot - round(value * plot)

    for tick in np.linspace(0, 1, 6):
        cv2.line(canvas, (x_at(0), y_at(tick)), (x_at(1), y_at(tick)), LIGHT_GREY, 1)
        _text(canvas, f"{tick:.1f}", (left - 34, y_at(tick) + 5), 0.4, GREY)
        _text(canvas, f"{tick:.1f}", (x_at(tick) - 10, top + plot + 18), 0.4, GREY)
    images, confidence, accuracy = calibration[:, 0], calibration[:, 1], calibration[:, 2]
    for b in range(bins):
        if not images[b]:
            continue
        x0, x1 = x_at(b / bins) + 1, x_at((b + 1) / bins) - 1
        cv2.rectangle(canvas, (x0, y_at(accuracy[b])), (x1, y_at(0)), BLUE, -1)
        low, high = sorted((accuracy[b], confidence[b]))
        if high - low > 1e-3:
            cv2.rectangle(canvas, (x0, y_at(high)), (x1, y_at(low)), RED, 2)
    cv2.line(canvas, (x_at(0), y_at(0)), (x_at(1), y_at(1)), GREY, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x_at(0), y_at(1)), (x_at(1), y_at(0)), BLACK, 1)
    _text(canvas, "confidence (top-1 probability)", (left + plot // 2 - 110, top + plot + 36), 0.45, BLACK)
    _text(canvas, "accuracy", (6, top - 8), 0.45, BLACK)
    base = top + plot + 40 + strip
    share = images / max(images.sum(), 1)
    for b in range(bins):
        if images[b]:
            bar = max(1, round(share[b] / max(share.max(), 1e-9) * (strip - 6)))
            cv2.rectangle(canvas, (x_at(b / bins) + 1, base - bar), (x_at((b + 1) / bins) - 1, base), GREY, -1)
    cv2.line(canvas, (x_at(0), base), (x_at(1), base), BLACK, 1)
    _text(canvas, f"images per bin (largest {int(images.max())} of {int(images.sum())})", (left, base + 20), 0.4, GREY)
    cv2.imwrite(str(path), canvas)
    return path


def write_gallery(
    path: Path,
    mistakes: list[tuple[str, str, str, float]],
    title: str,
    tile: int = 224,
    pictures: list[np.ndarray] | None = None,
    open_image=None,
) -> Path:
    """A grid of misclassified images (most confident first), each captioned with its true and predicted label.

    ``pictures`` (RGB uint8, one per mistake) are drawn instead of the images, e.g. with a heat map over them;
    ``open_image(name)`` gives the RGB image of a mistake's name (default: the file of that path).
    """
    import cv2

    from imagenet_cls.data.datasets import fit_within
    from imagenet_cls.data.images import load_rgb
    from imagenet_cls.errors import UserError

    open_image = open_image or load_rgb

    columns = min(4, len(mistakes))
    rows = -(-len(mistakes) // columns)
    caption = 64
    header = 56
    width = columns * tile
    canvas = np.full((header + rows * (tile + caption), width, 3), 255, np.uint8)
    heading = "most confident mistakes" + (", class-activation map of the prediction" if pictures else "")
    _text(canvas, _fitting(heading, width - 16, 0.55), (8, 22), 0.55, BLACK, 1)
    _text(canvas, _fitting(title, width - 16, 0.45), (8, 44), 0.45, GREY)
    for n, (image_path, true, predicted, prob) in enumerate(mistakes):
        x, y = (n % columns) * tile, header + (n // columns) * (tile + caption)
        try:
            image = pictures[n] if pictures is not None else np.asarray(open_image(image_path))
        except UserError:
            image = np.full((tile, tile, 3), 200, np.uint8)
        image = cv2.cvtColor(fit_within(image, (tile - 8, tile - 8)), cv2.COLOR_RGB2BGR)
        h, w = image.shape[:2]
        top, left = y + 4 + (tile - 8 - h) // 2, x + 4 + (tile - 8 - w) // 2
        canvas[top : top + h, left : left + w] = image
        _text(canvas, _fitting(f"true: {true}", tile - 10, 0.45), (x + 5, y + tile + 20), 0.45, GREEN, 1)
        _text(canvas, _fitting(f"pred: {predicted}", tile - 10, 0.45), (x + 5, y + tile + 40), 0.45, RED, 1)
        _text(canvas, f"p={prob:.3f}  {_shorten(Path(image_path).name, 20)}", (x + 5, y + tile + 58), 0.4, GREY)
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


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
