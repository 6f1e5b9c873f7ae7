"""Placing prepared files into DEST: links or copies, each complete or absent, and DEST's recorded split."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from imagenet_cls.data.layout import SPLITS
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.check import with_progress

if TYPE_CHECKING:
    from imagenet_cls.prepare.sources import Item

Mode = Literal["auto", "link", "symlink", "copy"]
RECORD = "prepare.json"  # DEST's split arguments


def place(items: list[Item], dest: Path, mode: Mode = "auto", progress: bool = True) -> dict[str, int]:
    """Link or copy every item into DEST; files already there (same size) are skipped. Returns counts."""
    counts = {"placed": 0, "skipped": 0}
    chosen = mode
    folders: set[Path] = set()
    for item in with_progress(items, "preparing", progress):
        folder = dest / item.split / item.wnid
        target = folder / item.name
        if _same_size(target, item.source):
            counts["skipped"] += 1
            continue
        if folder not in folders:
            folder.mkdir(parents=True, exist_ok=True)
            folders.add(folder)
        chosen = _place_one(item.source, target, chosen)
        counts["placed"] += 1
    counts["mode"] = chosen
    return counts


def _same_size(target: Path, source: Path | int) -> bool:
    """Whether ``target`` exists with the size of ``source`` (a path or a size): one ``stat`` when it is absent."""
    try:
        size = os.stat(target).st_size
    except FileNotFoundError:
        return False
    return size == (source if isinstance(source, int) else os.stat(source).st_size)


def _place_one(source: Path, target: Path, mode: Mode) -> Mode:
    """Place one file; in ``auto`` mode fall back link -> symlink -> copy and remember what worked.

    A target is either complete or absent: links are made in one step (through ``.partial`` when a stale target
    must be replaced), copies are written to ``.partial`` and renamed.
    """
    partial = target.with_name(target.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # left by an interrupted run
    order = {"auto": ["link", "symlink", "copy"], "link": ["link"], "symlink": ["symlink"], "copy": ["copy"]}[mode]
    for way in order:
        try:
            if way == "copy":
                shutil.copy2(source, partial)
                os.replace(partial, target)
            else:
                make = os.link if way == "link" else os.symlink
                origin = source if way == "link" else os.path.abspath(source)
                try:
                    make(origin, target)
                except FileExistsError:  # a stale file of another size from an earlier run
                    make(origin, partial)
                    os.replace(partial, target)
            return way if mode == "auto" else mode
        except OSError:
            if way == order[-1]:
                raise
    return mode


def record_arguments(dest: Path, shape: str, split: tuple[float, float, float], seed: int) -> None:
    """Write DEST's split arguments to ``DEST/prepare.json``, or refuse arguments other than those recorded.

    Re-running with another split would keep the earlier placements too, so an image could be in train and val.
    Nothing is moved when this refuses.

    Raises:
        UserError: DEST was prepared with other split arguments, or holds split folders but no record.
    """
    splits_itself = shape in ("class_folders", "flat")  # Kaggle's and the archives' splits are fixed
    wanted = {"split": list(split) if splits_itself else None, "seed": seed if splits_itself else None}
    record = dest / RECORD
    if record.is_file():
        recorded = json.loads(record.read_text(encoding="utf-8"))
        if {key: recorded.get(key) for key in wanted} != wanted:
            raise UserError(
                f"DEST {dest} was prepared with {_describe(recorded)} ({record}); this run asks {_describe(wanted)}: "
                "rerun with those arguments, or prepare into a new DEST"
            )
        return
    if any((dest / split_name).is_dir() for split_name in SPLITS):
        raise UserError(
            f"DEST {dest} already holds split folders but no {RECORD} (its split is unknown): prepare into a new DEST"
        )
    dest.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(RECORD + ".partial")
    partial.write_text(json.dumps({"shape": shape, **wanted}, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, record)


def _describe(arguments: dict) -> str:
    if arguments.get("split") is None:
        return "the source's own split"
    return f"--split {','.join(f'{f:g}' for f in arguments['split'])} --seed {arguments['seed']}"
