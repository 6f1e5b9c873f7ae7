"""Prepare ImageNet as it is downloaded into the layout the data module reads, without touching the source.

``python -m imagenet_cls.prepare SOURCE DEST`` recognises the shape of SOURCE:

* ``kaggle``: ``ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}`` with ``LOC_synset_mapping.txt`` and
  ``LOC_val_solution.csv`` (Kaggle's ImageNet Object Localization Challenge);
* ``archives``: ``ILSVRC2012_img_train.tar`` (a tar of per-class tars), ``ILSVRC2012_img_val.tar`` and the
  devkit's ground truth (``ILSVRC2012_devkit_t12.tar.gz``) or a ``LOC_val_solution.csv``;
* ``class_folders``: the seed's layout, class folders named by wnid or already renamed ``<number>-<name>``,
  with ``folder_num_class_map.txt``;
* ``flat``: files named ``<wnid>_<anything>.<ext>`` in one folder (like the ImageNet sample images);
* ``parquet``: a Hugging Face snapshot (``data/<split>-NNNNN-of-NNNNN.parquet``, ILSVRC/imagenet-1k);
* ``webdataset``: tar shards, a folder or a brace pattern (``train-{0000..0146}.tar``, timm/imagenet-1k-wds).

DEST gets ``train/``, ``val/`` and (where labels exist) ``test/`` with wnid class folders, plus
``folder_num_class_map.txt``. Files are hard links where the filesystem allows, else symbolic links, else copies
(``--mode``); archives are extracted, each tar read once; parquet rows and WebDataset samples are written as files
(their stored bytes; named by their stored path or key), a split labelled all -1 into ``unlabelled/<split>/``.
``--format litdata`` writes LitData chunks instead, reading any of these sources once. A rerun skips finished
files, so an interrupted run just continues; ``DEST/prepare.json`` records the split arguments, and a rerun with
other ones is refused (an image must not end up in two splits).
``python -m imagenet_cls.prepare --check DIR`` checks a prepared (or any class-folder) dataset.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from imagenet_cls.data.classes import imagenet_class_names, read_class_map, write_class_map
from imagenet_cls.data.images import is_hidden, is_image_file, iter_image_files
from imagenet_cls.data.layout import SPLITS, DatasetLayout, split_per_class
from imagenet_cls.errors import UserError, ignore_file_size_signal, report_disk_full, report_user_error
from imagenet_cls.prepare.archives import _archive_val_labels, extract_archives  # noqa: F401 (old path)
from imagenet_cls.prepare.placing import RECORD, Mode, _place_one, _same_size, place, record_arguments  # noqa: F401

WNID = re.compile(r"^n\d{8}$")
KAGGLE_ROOT = Path("ILSVRC/Data/CLS-LOC")


@dataclass(frozen=True)
class Item:
    """One file to place: ``source`` (a path) goes to ``DEST/<split>/<wnid>/<name>``."""

    source: Path
    split: str
    wnid: str
    name: str


# ---- recognising the source ----------------------------------------------------------------------------------
def detect_shape(source: Path) -> str:
    """Which of ``kaggle``, ``archives``, ``parquet``, ``webdataset``, ``class_folders``, ``flat`` SOURCE is."""
    from imagenet_cls.prepare.records_source import records_shape

    if not source.is_dir():
        if records_shape(source):  # a brace pattern of shards
            return records_shape(source)
        raise UserError(f"SOURCE {source} is not a folder: give the folder you downloaded ImageNet into")
    if (source / KAGGLE_ROOT).is_dir() or (source / "CLS-LOC").is_dir():
        return "kaggle"
    if (source / "ILSVRC2012_img_train.tar").is_file() or (source / "ILSVRC2012_img_val.tar").is_file():
        return "archives"
    if shape := records_shape(source):
        return shape
    folders = [p for p in source.iterdir() if p.is_dir() and not is_hidden(p.name)]
    if folders:
        return "class_folders"
    if any(_flat_wnid(p.name) for p in source.iterdir() if p.is_file()):
        return "flat"
    raise UserError(
        f"SOURCE {source}: no ImageNet shape recognised (Kaggle, ILSVRC2012 tars, class folders, "
        "or <wnid>_<name> files); see python -m imagenet_cls.prepare --help"
    )


def _flat_wnid(name: str) -> str | None:
    stem = name.split("_", 1)[0]
    return stem if WNID.match(stem) and is_image_file(name) else None


def plan_kaggle(source: Path) -> tuple[list[Item], dict[str, str]]:
    """Items of Kaggle's layout: train as it is, val from ``LOC_val_solution.csv`` (its test has no labels)."""
    root = source / KAGGLE_ROOT if (source / KAGGLE_ROOT).is_dir() else source / "CLS-LOC"
    names = _synset_mapping(source)
    items = [
        Item(path, "train", path.parent.name, path.name)
        for path in iter_image_files(root / "train")
        if WNID.match(path.parent.name)
    ]
    labels = _val_solution(source)
    for path in iter_image_files(root / "val"):
        wnid = labels.get(path.stem)
        if wnid is None:
            raise UserError(f"{path.name} has no label in LOC_val_solution.csv: is the CSV complete?")
        items.append(Item(path, "val", wnid, path.name))
    return items, names


def plan_folders(source: Path, split: tuple[float, float, float], seed: int) -> tuple[list[Item], dict[str, str]]:
    """Items of the seed's layout: class folders by wnid or ``<number>-<name>``, split per class."""
    class_map_file = source / "folder_num_class_map.txt"
    names = read_class_map(class_map_file) if class_map_file.is_file() else imagenet_class_names()
    by_number = _numbers(class_map_file) if class_map_file.is_file() else {}
    groups: dict[str, list[Path]] = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and not is_hidden(p.name)):
        wnid = folder.name if folder.name in names else by_number.get(re.split(r"[-_ ]", folder.name, maxsplit=1)[0])
        if wnid is None:
            raise UserError(f"class folder {folder} is neither a class of {class_map_file.name} nor <number>-<name>")
        groups.setdefault(wnid, []).extend(iter_image_files(folder))
    return _split_items(groups, split, seed), names


def plan_flat(source: Path, split: tuple[float, float, float], seed: int) -> tuple[list[Item], dict[str, str]]:
    """Items of a flat folder of ``<wnid>_<anything>`` files, split per class."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        wnid = _flat_wnid(path.name)
        if wnid:
            groups.setdefault(wnid, []).append(path)
    return _split_items(groups, split, seed), imagenet_class_names()


def plan_layout(items: list[Item], shape: str) -> DatasetLayout:
    """``items`` as a layout (wnid classes sorted, each split's files in plan order), for one-step optimizing."""
    classes = sorted({item.wnid for item in items})
    index = {wnid: i for i, wnid in enumerate(classes)}
    splits: dict[str, list] = {}
    for item in items:
        splits.setdefault(item.split, []).append((str(item.source), index[item.wnid]))
    return DatasetLayout(classes=classes, splits=splits, kind=shape)


def _split_items(groups: dict[str, list[Path]], split: tuple[float, float, float], seed: int) -> list[Item]:
    items = []
    for wnid, paths in sorted(groups.items()):
        for part, chosen in split_per_class(paths, split, f"{seed}-{wnid}").items():
            items += [Item(path, part, wnid, path.name) for path in chosen]
    return items


def _synset_mapping(source: Path) -> dict[str, str]:
    path = source / "LOC_synset_mapping.txt"
    if not path.is_file():
        return imagenet_class_names()
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            wnid, _, description = line.partition(" ")
            names[wnid] = "_".join(description.split(",")[0].split())
    return names


def _val_solution(source: Path) -> dict[str, str]:
    path = source / "LOC_val_solution.csv"
    if not path.is_file():
        raise UserError(f"{path} is missing: Kaggle's val images need it for their labels")
    with open(path, newline="", encoding="utf-8") as file:
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(file)}


def _numbers(class_map_file: Path) -> dict[str, str]:
    lines = class_map_file.read_text(encoding="utf-8").splitlines()
    return {fields[1]: fields[0] for fields in (line.split() for line in lines) if len(fields) >= 3}


# ---- placing files -------------------------------------------------------------------------------------------
# ---- the command ---------------------------------------------------------------------------------------------
def prepare(
    source: Path,
    dest: Path,
    mode: Mode = "auto",
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Prepare SOURCE into DEST (see the module doc); returns what was done."""
    source, dest = Path(source), Path(dest)
    if _inside(dest, source):
        raise UserError(f"DEST {dest} is inside SOURCE {source}: choose a folder outside the source")
    if _inside(source, dest):
        raise UserError(f"SOURCE {source} is inside DEST {dest}: choose a DEST outside the source")
    shape = detect_shape(source)
    print(f"source {source}: {shape} layout", file=sys.stderr)
    record_arguments(dest, shape, split, seed)
    if shape == "archives":
        written, names = extract_archives(source, dest, progress)
        counts = {"placed": written, "mode": "extracted"}
    elif shape in ("parquet", "webdataset"):
        from imagenet_cls.prepare.records_source import open_records
        from imagenet_cls.prepare.streamed import write_folders

        streamed = open_records(source, shape, split)
        counts, names = write_folders(streamed, dest, progress), streamed.names
    else:
        planner = {"kaggle": plan_kaggle, "class_folders": plan_folders, "flat": plan_flat}[shape]
        items, names = planner(source) if shape == "kaggle" else planner(source, split, seed)
        counts = place(items, dest, mode, progress)
    classes = sorted({p.name for s in SPLITS if (dest / s).is_dir() for p in (dest / s).iterdir() if p.is_dir()})
    write_class_map(dest / "folder_num_class_map.txt", classes, names)
    return {"shape": shape, "classes": len(classes), **counts}


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or path.is_relative_to(folder)


def _parse_split(text: str) -> tuple[float, float, float]:
    if text in SPLITS:
        return tuple(1.0 if s == text else 0.0 for s in SPLITS)
    parts = tuple(float(x) for x in text.split(","))
    if len(parts) != 3 or abs(sum(parts) - 1) > 1e-6 or min(parts) < 0:
        raise argparse.ArgumentTypeError("--split takes train,val,test fractions summing to 1, or train|val|test")
    return parts


def _argument_parser() -> argparse.ArgumentParser:
    """The options of ``python -m imagenet_cls.prepare``."""
    parser = argparse.ArgumentParser(
        prog="python -m imagenet_cls.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("source", type=Path, nargs="?", help="the downloaded dataset (never modified)")
    parser.add_argument("dest", type=Path, nargs="?", help="the folder to write")
    parser.add_argument(
        "--mode",
        choices=["auto", "link", "symlink", "copy"],
        default="auto",
        help="how files are placed (auto: hard link, else symlink, else copy)",
    )
    parser.add_argument(
        "--split",
        type=_parse_split,
        default=(0.8, 0.1, 0.1),
        help="train,val,test fractions for class-folder and flat sources, or one of train|val|test "
        "to put everything there (default 0.8,0.1,0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class split")
    parser.add_argument("--check", type=Path, metavar="DIR", help="only check DIR and write DIR/check_report.csv")
    parser.add_argument("--full", action="store_true", help="decode every image while checking (slower)")
    parser.add_argument(
        "--fix",
        type=Path,
        metavar="OUT",
        help="with --check: re-encode CMYK and misnamed images as RGB into OUT (never in place)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--format",
        choices=["folders", "litdata"],
        default="folders",
        help="folders: class folders (default); litdata: one LitData optimized dataset per split, read in one pass "
        "from any source above, with no class folders in between (see imagenet_cls/prepare/litdata_writer.py)",
    )
    parser.add_argument("--max-side", type=int, help="litdata: re-encode images larger than this (changes pixels)")
    parser.add_argument("--quality", type=int, default=90, help="litdata: JPEG quality of re-encoded images")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m imagenet_cls.prepare``."""
    from imagenet_cls.prepare.check import check_dataset, fix_files, format_summary

    parser = _argument_parser()
    args = parser.parse_args(argv)
    ignore_file_size_signal()
    try:
        if args.check:
            if not args.check.is_dir():
                raise UserError(f"--check {args.check} is not a folder")
            if args.fix and _inside(args.fix, args.check):
                raise UserError(f"--fix {args.fix} is inside --check {args.check}: choose a folder outside it")
            summary = check_dataset(args.check, args.check / "check_report.csv", args.full, not args.no_progress)
            print(format_summary(summary))
            if args.fix:
                fixed = fix_files(summary["problem_files"], args.check, args.fix)
                print(f"fixed {len(fixed)} files into {args.fix}")
            return 0
        if args.source is None or args.dest is None:
            parser.error("give SOURCE and DEST, or --check DIR")
        if args.format == "litdata":
            return _write_litdata(args)
        done = prepare(args.source, args.dest, args.mode, args.split, args.seed, not args.no_progress)
        print(
            f"prepared {done['classes']} classes into {args.dest} ({done['shape']}; {done.get('placed', 0)} placed, "
            f"{done.get('skipped', 0)} already there, mode {done['mode']})"
        )
        summary = check_dataset(args.dest, args.dest / "check_report.csv", full=False, progress=False)
        print(format_summary(summary))
        return 0
    except UserError as error:
        return report_user_error(error)
    except OSError as error:
        return report_disk_full(error)


def _write_litdata(args: argparse.Namespace) -> int:
    from imagenet_cls.prepare.litdata_writer import write_litdata

    shape = detect_shape(args.source)
    if shape in ("archives", "parquet", "webdataset"):  # streamed into the chunks, the source read once
        from imagenet_cls.prepare.litdata_stream import write_litdata_stream
        from imagenet_cls.prepare.records_source import open_records
        from imagenet_cls.prepare.tar_stream import open_archives

        if _inside(args.dest, args.source):
            raise UserError(f"DEST {args.dest} is inside SOURCE {args.source}: choose a folder outside the source")
        streamed = open_archives(args.source) if shape == "archives" else open_records(args.source, shape, args.split)
        done = write_litdata_stream(streamed, args.dest, args.max_side, args.quality, not args.no_progress)
    else:
        planned = None
        if shape in ("flat", "kaggle"):  # read in place, one pass: no class folders in between
            items, _ = plan_kaggle(args.source) if shape == "kaggle" else plan_flat(args.source, args.split, args.seed)
            planned = plan_layout(items, shape)
        done = write_litdata(args.source, args.dest, args.split, args.seed, args.max_side, args.quality,
                             progress=not args.no_progress, planned=planned)  # fmt: skip
    print(f"optimized {done['classes']} classes into {args.dest}: {done['splits']} images per split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
