"""Write a class-folder dataset as LitData optimized chunks: one optimized dataset per split, plus the class map.

``python -m imagenet_cls.prepare SOURCE DEST --format litdata`` reads SOURCE as the data module does
(:func:`~imagenet_cls.data.layout.read_layout`: ``train/ val/ [test/]`` or one folder of class folders split by
``--split``), so classes and splits are the ones training on the folders would see. DEST gets::

    DEST/dataset.json               format, classes (index order), images per split, re-encoding options
    DEST/folder_num_class_map.txt   the class names
    DEST/<split>/index.json         LitData's index, and its chunk-*.bin files (written in DEST/.<split>.partial)

Each item holds the file's original bytes (``image``, never re-encoded unless ``max_side`` is given), its class
index (``label``), its path relative to SOURCE (``name``) and a CRC-32 of the three (``crc32``, checked on read).
Kaggle's layout and flat ``<wnid>_*`` files are read where they are (``planned``); parquet,
WebDataset and the ILSVRC2012 tars are streamed into the chunks by :mod:`~imagenet_cls.prepare.litdata_stream`. No
source goes through class folders first.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagenet_cls.data.litdata_items import item_checksum
from imagenet_cls.errors import UserError, disk_full, one_line

if TYPE_CHECKING:
    from imagenet_cls.data.layout import DatasetLayout

DATASET_FILE = "dataset.json"  # marks an optimized dataset and carries its classes
FORMAT = "imagenet_cls-litdata-1"
CHUNK_BYTES = "64MB"
ITEMS_PER_CALL = 100_000  # images per LitData optimize call (see _optimize_split)


def write_litdata(
    source: Path,
    dest: Path,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_side: int | None = None,
    quality: int = 90,
    num_workers: int | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
    planned: DatasetLayout | None = None,
) -> dict[str, Any]:
    """Optimize the class-folder dataset ``source`` into ``dest`` (see the module doc); returns what was written.

    A split whose ``index.json`` exists with the same options is kept, so an interrupted run restarts at the
    split it was writing (that split is written again from its start).

    Args:
        source: ``train/ val/ [test/]`` class folders, or one folder of class folders. Never modified.
        dest: Output folder (created).
        split: Train, val and test fractions for one folder of class folders.
        seed: Seed of that split.
        max_side: Re-encode images whose longer side exceeds this, down to it (changes pixels); None: original bytes.
        quality: JPEG quality of re-encoded images.
        num_workers: LitData worker processes; default: the CPU count.
        progress: Show LitData's progress bar.
        chunk_size: Items per chunk; None: chunks of 64 MB (LitData's ``chunk_bytes``).
        planned: The samples of each split when ``source`` is another shape prepare reads (Kaggle, flat
            ``<wnid>_*`` files): the files are read where they are, in one pass, with no class folders written.
    """
    # Long on purpose: per split, plan, keep-if-done, optimize and record share their state.
    from imagenet_cls.data.classes import class_names, write_class_map
    from imagenet_cls.data.layout import read_layout

    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise UserError(f"SOURCE {source} is not a folder: give a prepared class-folder dataset")
    if dest.resolve() == source.resolve() or dest.resolve().is_relative_to(source.resolve()):
        raise UserError(f"DEST {dest} is inside SOURCE {source}: choose a folder outside the source")
    if max_side is not None and max_side < 16:
        raise UserError(f"--max-side {max_side} is too small: give the longer side in pixels (e.g. 320)")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality {quality} must be between 1 and 100")
    layout = planned if planned is not None else read_layout(source, split, seed)
    options = {"max_side": max_side, "quality": quality if max_side else None}
    dest.mkdir(parents=True, exist_ok=True)
    previous = _read_json(dest / DATASET_FILE)
    sizes = {name: len(samples) for name, samples in layout.splits.items() if samples}
    reused = previous is not None and previous.get("classes") == layout.classes and previous.get("options") == options
    done: dict[str, int] = {}
    written: dict[str, int] = {}
    for name, count in sizes.items():
        out = dest / name
        if reused and previous["splits"].get(name) == count and _indexed_images(out) == count:
            print(f"{name}: {out} already optimized ({count} images), kept", file=sys.stderr)
            done[name] = count
            continue
        if out.exists():  # an outdated split: written again from its start
            shutil.rmtree(out)
        inputs = [(path, label, os.path.relpath(path, source)) for path, label in layout.splits[name]]
        _optimize_split(inputs, out, max_side, quality, num_workers, progress, chunk_size)
        done[name] = written[name] = count
        write_manifest(dest, layout.classes, done, options)  # a rerun keeps this split
    write_class_map(dest / "folder_num_class_map.txt", layout.classes, dict(zip(layout.classes,
                    class_names(layout.classes, None, source))))  # fmt: skip
    write_manifest(dest, layout.classes, sizes, options)
    return {"classes": len(layout.classes), "splits": sizes, "written": written, "kind": layout.kind}


def _optimize_split(
    inputs: list[tuple[str, int, str]],
    out: Path,
    max_side: int | None,
    quality: int,
    num_workers: int | None,
    progress: bool,
    chunk_size: int | None = None,
) -> None:
    """Optimize ``inputs`` into ``out``: written into ``.<split>.partial`` beside it, renamed to ``out`` when whole.

    LitData runs in a child process in its own session (:mod:`~imagenet_cls.prepare.isolated`): no worker it leaves
    behind outlives the split. A full disk is one line; any other failure one line naming the split and ``out``.
    """
    from imagenet_cls.prepare.isolated import run_in_own_session

    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # no PyPI request from LitData
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(inputs)))
    print(f"{out.name}: {len(inputs)} images -> {out} ({workers} workers)", file=sys.stderr)
    into = out.with_name(f".{out.name}.partial")
    shutil.rmtree(into, ignore_errors=True)  # an interrupted run's: never trusted
    try:
        run_in_own_session(partial(_optimize_batches, inputs, into, max_side, quality, workers, progress, chunk_size))
        if (indexed := _indexed_images(into)) != len(inputs):  # a worker killed by a signal: LitData returns
            raise RuntimeError(f"LitData indexed {indexed or 0} of {len(inputs)} images (a worker process died)")
    except BaseException as error:
        shutil.rmtree(into, ignore_errors=True)
        if isinstance(error, UserError) or not isinstance(error, (OSError, RuntimeError)):
            raise
        if isinstance(error, OSError) and not error.filename:
            error.filename = str(out)
        message = f"optimizing {out.name} into {out} failed ({one_line(error)}); nothing was written under {out}"
        raise disk_full(error) or UserError(f"{message}: run again") from None
    os.replace(into, out)


def _optimize_batches(
    inputs: list[tuple[str, int, str]],
    out: Path,
    max_side: int | None,
    quality: int,
    workers: int,
    progress: bool,
    chunk_size: int | None,
) -> None:
    from litdata import optimize

    # In batches, appended in order: LitData 0.2.76's ordered mode hands each worker its items by popping the front
    # of a list, which costs the list's length per item (1.2M images: two thirds of the time went there).
    with item_offsets_kept(), worker_failures_raised():
        for start in range(0, len(inputs), ITEMS_PER_CALL):
            batch = inputs[start : start + ITEMS_PER_CALL]
            if len(inputs) > ITEMS_PER_CALL:
                print(f"{out.name}: images {start + 1}-{start + len(batch)} of {len(inputs)}", file=sys.stderr)
            try:
                optimize(
                    fn=partial(encode_sample, max_side=max_side, quality=quality),
                    inputs=batch,
                    output_dir=str(out.resolve()),
                    chunk_bytes=None if chunk_size else CHUNK_BYTES,
                    chunk_size=chunk_size,
                    num_workers=max(1, min(workers, len(batch))),
                    reorder_files=False,  # item i of the index is sample i of the folder layout
                    keep_data_ordered=True,
                    mode="append" if start else None,
                    start_method="fork" if sys.platform == "linux" else None,
                    verbose=progress,
                )
            except RuntimeError as error:  # LitData's "We found the following error <a worker's traceback>."
                raise _worker_error(error) from None


def _worker_error(error: RuntimeError) -> Exception:
    """The error a LitData worker died of, from the traceback text ``optimize`` raises; an OSError keeps its errno."""
    raised = [line for line in str(error).splitlines() if re.match(r"[\w.]+: ", line)]  # not the indented frames
    if "Traceback (most recent call last)" not in str(error) or not raised:
        return error
    if found := re.match(r"[\w.]*Error: \[Errno (\d+)\] ([^:]+)(?:: '(.*)')?$", raised[-1]):
        return OSError(int(found[1]), found[2], found[3])
    return RuntimeError(raised[-1])


def encode_sample(item: tuple[str, int, str], max_side: int | None = None, quality: int = 90) -> dict[str, Any]:
    """One optimized item: the file's bytes (re-encoded only when larger than ``max_side``), label and name.

    A file that cannot be re-encoded is stored as it is: training reports it (or skips it with
    ``--data.skip_bad_images``) exactly as it would from the folders.
    """
    _keep_item_offsets()  # in the worker that writes (a spawned one does not inherit the parent's setting)
    path, label, name = item
    data = Path(path).read_bytes()
    if max_side is not None:
        data = shrink(data, max_side, quality) or data
    sample = {"image": data, "label": label, "name": name}
    return {**sample, "crc32": item_checksum(sample)}  # checked when read: a damaged chunk is an error, never a label


@contextmanager
def item_offsets_kept() -> Iterator[None]:
    """LitData writes each chunk as item offsets + item bytes (its classic layout) inside the block.

    With pyarrow installed, LitData 0.2.76 stores a flat ``{bytes, int, str}`` item in an Arrow footer instead and
    leaves the offsets empty: our two-read local reader (``ChunkFiles``) has nothing to read, and LitData's own
    byte-range reads from a bucket fail on such chunks (``struct.error``). The layout is decided by
    ``litdata.streaming.writer.is_arrow_footer_type``; inside the block it answers no.
    """
    from litdata.streaming import writer

    original = writer.is_arrow_footer_type
    _keep_item_offsets()
    try:
        yield
    finally:
        writer.is_arrow_footer_type = original


@contextmanager
def worker_failures_raised() -> Iterator[None]:
    """Inside the block, a LitData 0.2.76 worker that fails at its last chunk (a full disk) fails the run, no hang.

    Such a worker's remover process (it deletes downloaded copies of remote inputs; ours are read in place) waits for
    an end message the failed worker never sends, and the exiting worker waits for its remover: ``optimize`` hung
    (seen 1 run in 16 under a file-size limit). And once every item is counted, LitData's main process stops reading
    the error queue: a worker's error was lost. Inside the block workers start no remover, and an error left in the
    queue after the run is raised as LitData raises the others.
    """
    from litdata.processing import data_processor

    worker, processor = data_processor.BaseWorker, data_processor.DataProcessor
    start_remover, run = worker._start_remover, processor.run

    def run_then_raise_left_errors(self: Any, *args: Any, **kwargs: Any) -> None:
        run(self, *args, **kwargs)
        _raise_left_error(self)

    worker._start_remover = _no_remover
    processor.run = run_then_raise_left_errors
    try:
        yield
    finally:
        worker._start_remover, processor.run = start_remover, run


def _no_remover(worker: Any) -> None:
    worker.remove = False


def _raise_left_error(processor: Any) -> None:
    import queue

    try:
        error = processor.error_queue.get_nowait()
    except queue.Empty:
        return
    processor._exit_on_error(error)  # terminates what is left, raises "We found the following error ..."


def _keep_item_offsets() -> None:
    from litdata.streaming import writer

    writer.is_arrow_footer_type = _never


def _never(*_: Any) -> bool:
    return False


def shrink(data: bytes, max_side: int, quality: int) -> bytes | None:
    """``data`` as an upright RGB JPEG whose longer side is ``max_side``; None when it is not larger or not readable."""
    from PIL import Image

    from imagenet_cls.data.images import to_rgb

    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) <= max_side:
                return None
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            if image.format in ("JPEG", "MPO"):
                image.draft("RGB", size)  # DCT-domain downscale first: faster, same result quality
            rgb = to_rgb(image)
            if max(rgb.size) > max_side:
                scale = max_side / max(rgb.size)
                rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                                 Image.Resampling.LANCZOS)  # fmt: skip
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=quality)
            return buffer.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _indexed_images(split: Path) -> int | None:
    """Images listed by a written split's ``index.json`` (None: none there); a split cut short lists fewer."""
    index = _read_json(split / "index.json")
    try:
        return sum(int(chunk["chunk_size"]) for chunk in index["chunks"])
    except (TypeError, KeyError, ValueError):
        return None


def write_manifest(dest: Path, classes: list[str], sizes: dict[str, int], options: dict) -> None:
    """Write ``dest/dataset.json`` (the finished splits, their classes and options) whole, or not at all."""
    manifest = {"format": FORMAT, "classes": classes, "splits": sizes, "options": options}
    written = dest / (DATASET_FILE + ".partial")
    written.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(written, dest / DATASET_FILE)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
