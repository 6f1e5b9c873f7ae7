"""A streamed source written straight into LitData chunks: one pass, no class folders in between.

Parquet rows, WebDataset samples and ILSVRC2012 tar members arrive in order from
:class:`~imagenet_cls.prepare.streamed.StreamedSource`; each is added to LitData's ``BinaryWriter`` (the writer
``litdata.optimize`` runs in each worker; one writer gives the same chunks and index), so the dataset is the one
:func:`~imagenet_cls.prepare.litdata_writer.write_litdata` writes: the same ``dataset.json``, items ``{image, label,
name}`` with the stored bytes (re-encoded only above ``max_side``, in threads) and item offsets kept.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

from imagenet_cls.data.litdata_items import item_checksum
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.litdata_writer import (
    CHUNK_BYTES,
    DATASET_FILE,
    _indexed_images,
    _read_json,
    item_offsets_kept,
    shrink,
    write_manifest,
)
from imagenet_cls.prepare.streamed import Image, StreamedSource

SHRINK_BATCH = 256  # images re-encoded at once (bounded memory: the source is read as the writer goes)


def write_litdata_stream(
    source: StreamedSource,
    dest: Path,
    max_side: int | None = None,
    quality: int = 90,
    progress: bool = True,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Write each labelled split of ``source`` as a LitData optimized dataset under ``dest``; returns what was written.

    ``dest/dataset.json`` is rewritten after each finished split, so a rerun keeps those and writes an interrupted
    split again from its start. A split whose labels are all -1 is left out (predict on it from the source).

    Args:
        source: The source's classes and split streams.
        dest: Output folder (created).
        max_side: Re-encode images whose longer side exceeds this, down to it (changes pixels); None: stored bytes.
        quality: JPEG quality of re-encoded images.
        progress: Show a progress bar.
        chunk_size: Items per chunk; None: chunks of 64 MB.
    """
    from imagenet_cls.data.classes import write_class_map
    from imagenet_cls.prepare.check import with_progress

    if max_side is not None and max_side < 16:
        raise UserError(f"--max-side {max_side} is too small: give the longer side in pixels (e.g. 320)")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality {quality} must be between 1 and 100")
    options = {"max_side": max_side, "quality": quality if max_side else None}
    dest.mkdir(parents=True, exist_ok=True)
    previous = _read_json(dest / DATASET_FILE) or {}
    reused = previous.get("classes") == source.classes and previous.get("options") == options
    sizes: dict[str, int] = {}
    written: dict[str, int] = {}
    for name, expected in source.sizes.items():
        out = dest / name
        if name in source.unlabelled:
            print(f"{name}: unlabelled (all -1), not optimized: predict on it from the source", file=sys.stderr)
            continue
        done = previous.get("splits", {}).get(name) if reused else None
        if done is not None and expected in (None, done) and _indexed_images(out) == done:
            print(f"{name}: {out} already optimized ({done} images), kept", file=sys.stderr)
            sizes[name] = done
            continue
        if out.exists():  # an outdated split: written again from its start
            shutil.rmtree(out)
        print(f"{name}: {source.kind} -> {out}", file=sys.stderr)
        images = with_progress(source.read(name), f"{name} images", progress)
        into = out.with_name(f".{name}.partial")  # renamed to ``out`` when whole: a final name is never half-written
        shutil.rmtree(into, ignore_errors=True)  # an interrupted run's: never trusted
        try:
            count = _write_split(images, into, max_side, quality, chunk_size)
        except BaseException as error:
            shutil.rmtree(into, ignore_errors=True)
            if isinstance(error, OSError) and not error.filename:
                error.filename = str(out)
            raise
        if not count:
            shutil.rmtree(into)
            continue
        os.replace(into, out)
        sizes[name] = written[name] = count
        write_manifest(dest, source.classes, sizes, options)
    if not sizes:
        raise UserError(f"{source.kind} source has no labelled split to optimize: predict on it instead")
    write_class_map(dest / "folder_num_class_map.txt", source.classes, source.names)
    write_manifest(dest, source.classes, sizes, options)
    return {"classes": len(source.classes), "splits": sizes, "written": written, "kind": source.kind}


def _write_split(images: Iterator[Image], out: Path, max_side: int | None, quality: int, chunk_size: int | None) -> int:
    """Add each labelled image to one ``BinaryWriter`` in order; returns the items written."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no PyPI request from LitData
    from litdata.streaming.writer import BinaryWriter

    out.mkdir(parents=True)
    count = 0
    with item_offsets_kept():
        chunk_bytes = None if chunk_size else CHUNK_BYTES
        writer = BinaryWriter(str(out.resolve()), chunk_size=chunk_size, chunk_bytes=chunk_bytes)
        for data, label, name in _shrunk(images, max_side, quality):
            if label < 0:  # one unlabelled image in a labelled split: it cannot be scored
                print(f"{out.name}: {name} has no label (-1), left out", file=sys.stderr)
                continue
            sample = {"image": data, "label": label, "name": name}
            writer.add_item(count, {**sample, "crc32": item_checksum(sample)})  # checked on read
            count += 1
        if count:
            writer.done()
            writer._merge_no_wait()  # one writer: merge its index now (merge() waits for other workers' indexes)
    return count


def _shrunk(images: Iterator[Image], max_side: int | None, quality: int) -> Iterator[Image]:
    """``images`` with those larger than ``max_side`` re-encoded (PIL releases the GIL: threads run in parallel)."""
    if max_side is None:
        yield from images
        return
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        while batch := list(islice(images, SHRINK_BATCH)):
            smaller = pool.map(lambda image: shrink(image[0], max_side, quality), batch)
            for (data, label, name), small in zip(batch, smaller, strict=True):
                yield small or data, label, name
