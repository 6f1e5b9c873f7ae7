"""Drawing a prediction onto an image with OpenCV: text scaled to the image, on a filled box, always legible."""

from __future__ import annotations

import numpy as np


def display_name(name: str) -> str:
    """A class name as drawn and shown to people: ``academic_gown`` -> ``academic gown``.

    Files meant for programs (``predictions.csv``, ``per_class.csv``) keep the class map's own spelling.
    """
    return name.replace("_", " ")


def prediction_lines(
    top: list[tuple[int, float]], class_names: list[str], label: str, draw_top_k: int = 1
) -> list[str]:
    """The lines drawn on a predicted image: the top class with ``label`` (its name, or ``unknown``), then the rest.

    Args:
        top: ``(class index, probability)`` pairs, best first.
        class_names: The model's class names, by index.
        label: What to call the top class.
        draw_top_k: How many of ``top`` to draw.
    """
    index, prob = top[0]
    lines = [f'Predicted class: "{index}", Predicted label: "{display_name(label)}" ({prob:.1%})']
    lines += [
        f"{rank}. {display_name(class_names[i])} ({p:.1%})" for rank, (i, p) in enumerate(top[1:draw_top_k], start=2)
    ]
    return lines


def annotate(image_rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Return a BGR copy of ``image_rgb`` (H, W, 3 uint8) with ``lines`` drawn top-left on a dark box."""
    import cv2

    image = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = max(1, round(width / 500))
    longest = max(lines, key=len)
    (text_width, _), _ = cv2.getTextSize(longest, font, 1.0, thickness)
    # Scale so the longest line spans at most 95% of the width; never so large it covers the picture.
    scale = min(1.0, 0.95 * width / max(text_width, 1), height / 200)
    thickness = max(1, round(thickness * scale * 1.5))
    (_, line_height), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    step = line_height + baseline + max(2, line_height // 3)
    box_width = max(cv2.getTextSize(line, font, scale, thickness)[0][0] for line in lines)
    margin = max(2, step // 4)
    box_bottom = min(height, margin + step * len(lines) + margin)
    cv2.rectangle(image, (0, 0), (min(width, box_width + 2 * margin), box_bottom), (32, 32, 32), thickness=-1)
    for row, line in enumerate(lines):
        origin = (margin, margin + line_height + row * step)
        cv2.putText(image, line, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image
