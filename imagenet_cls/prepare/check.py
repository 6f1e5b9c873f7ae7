"""Dataset check: per split and class image counts, and every file that is not what its name says.

``python -m imagenet_cls.prepare --check DIR`` runs it (and ``prepare`` runs it at the end). The quick check reads
headers and the end of each JPEG (truncation); ``--full`` decodes every image.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imagenet_cls.data.images import ALLOWED_FORMATS, EXTENSION_FORMATS, IMAGE_EXTENSIONS, is_hidden
from imagenet_cls.data.layout import SPLITS

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One file that is not what its name says."""

    path: str
    split: str
    class_folder: str
    problem: str
    detail: str = ""


def inspect_file(path: Path, full: bool = False) -> tuple[str, str] | None:
    """``(problem, detail)`` for a file that is not a plain RGB image of its named format, else None.

    Problems: ``symlink_loop``, ``broken_link``, ``zero_bytes``, ``not_image``, ``format_not_allowed``,
    ``wrong_extension`` (e.g. a PNG named .JPEG), ``truncated``, ``undecodable``, ``too_many_pixels``,
    ``cmyk``, ``grayscale``, ``other_mode``.
    """
    try:
        size = os.stat(path).st_size
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink_loop", str(error)
        return "broken_link", str(error)
    if size == 0:
        return "zero_bytes", ""
    try:
        with Image.open(path) as image:
            fmt, mode, pixels = image.format, image.mode, image.width * image.height
            if pixels > Image.MAX_IMAGE_PIXELS:
                return "too_many_pixels", f"{image.width}x{image.height}"
            if full:
                image.load()
    except Image.DecompressionBombError as error:
        return "too_many_pixels", str(error)
    except OSError as error:
        if "truncated" in str(error).lower():
            return "truncated", str(error)
        return ("undecodable" if full else "not_image"), str(error)
    except (ValueError, SyntaxError) as error:
        return "undecodable", str(error)
    if fmt not in ALLOWED_FORMATS:
        return "format_not_allowed", str(fmt)
    named = EXTENSION_FORMATS.get(path.suffix.lower())
    if named and named != fmt and not (named == "JPEG" and fmt == "MPO"):
        return "wrong_extension", f"{fmt} named {path.suffix}"
    if fmt == "JPEG" and not full and not _jpeg_has_end_marker(path):
        return "truncated", "no JPEG end-of-image marker"
    if mode == "CMYK":
        return "cmyk", mode
    if mode in ("L", "LA", "I", "I;16", "1"):
        return "grayscale", mode
    if mode not in ("RGB", "RGBA", "P", "PA"):
        return "other_mode", mode
    return None


def _jpeg_has_end_marker(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(max(0, os.path.getsize(path) - 64))
        return b"\xff\xd9" in file.read()  # padding after EOI is common; look near the end


def check_dataset(root: Path, report: Path | None = None, full: bool = False, progress: bool = True) -> dict:
    """Check ``root`` (split folders or class folders); write the CSV report; return a summary dict."""
    root = Path(root)
    splits = [s for s in SPLITS if (root / s).is_dir()] or [""]
    counts: dict[tuple[str, str], int] = {}
    problems: list[Problem] = []
    files = []
    for split in splits:
        split_dir = root / split if split else root
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p.name)):
            counts[(split, class_dir.name)] = 0
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
                for name in sorted(filenames):
                    if not is_hidden(name):
                        files.append((split, class_dir.name, Path(dirpath) / name))
    for split, class_folder, path in with_progress(files, "checking", progress):
        if not path.name.lower().endswith(IMAGE_EXTENSIONS):
            problems.append(Problem(str(path), split, class_folder, "not_image", "extension"))
            continue
        counts[(split, class_folder)] += 1
        found = inspect_file(path, full)
        if found:
            problems.append(Problem(str(path), split, class_folder, *found))
    summary = _summarise(counts, problems)
    if report is not None:
        _write_report(report, counts, problems)
        summary["report"] = str(report)
    return summary


def _summarise(counts: dict[tuple[str, str], int], problems: list[Problem]) -> dict:
    per_split: dict[str, list[int]] = {}
    for (split, _), count in counts.items():
        per_split.setdefault(split or "all", []).append(count)
    return {
        "splits": {
            split: {
                "classes": len(c),
                "images": sum(c),
                "min": min(c),
                "max": max(c),
                "empty_classes": sum(1 for n in c if n == 0),
                "imbalance": max(c) / max(1, min(c)),
            }
            for split, c in per_split.items()
        },
        "empty_classes": [f"{s}/{c}" if s else c for (s, c), n in counts.items() if n == 0],
        "problems": dict(Counter(p.problem for p in problems)),
        "problem_files": problems,
    }


def _write_report(path: Path, counts: dict[tuple[str, str], int], problems: list[Problem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["kind", "split", "class_folder", "path", "problem", "detail", "images"])
        for (split, class_folder), count in sorted(counts.items()):
            writer.writerow(["class", split, class_folder, "", "empty" if count == 0 else "", "", count])
        for p in problems:
            writer.writerow(["file", p.split, p.class_folder, p.path, p.problem, p.detail, ""])


def format_summary(summary: dict) -> str:
    """A few human-readable lines."""
    lines = []
    for split, s in summary["splits"].items():
        lines.append(
            f"{split}: {s['images']} images in {s['classes']} classes (per class {s['min']}..{s['max']}, "
            f"imbalance {s['imbalance']:.1f}x, {s['empty_classes']} empty)"
        )
    problems = summary["problems"]
    lines.append("problems: " + (", ".join(f"{k} {v}" for k, v in sorted(problems.items())) if problems else "none"))
    if "report" in summary:
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def fix_files(problems: list[Problem], source_root: Path, destination: Path) -> list[Path]:
    """Re-encode convertible files (CMYK, a PNG named .JPEG) as RGB into ``destination``; never in place."""
    written = []
    for p in problems:
        if p.problem not in ("cmyk", "wrong_extension"):
            continue
        path = Path(p.path)
        target = Path(destination) / path.relative_to(source_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        fmt = EXTENSION_FORMATS.get(path.suffix.lower(), "PNG")
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        if target.exists() or target.is_symlink():
            target.unlink()  # a link to the source: replace the link, never write through it
        rgb.save(target, format=fmt, quality=95) if fmt == "JPEG" else rgb.save(target, format=fmt)
        written.append(target)
    return written


def with_progress(items, description: str, enabled: bool) -> Iterator:
    """``items`` with a tqdm progress bar (files per second) when ``enabled``."""
    if not enabled:
        return iter(items)
    from tqdm import tqdm

    return iter(tqdm(items, desc=description, unit="file", mininterval=1.0))
