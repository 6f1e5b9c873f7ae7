"""ILSVRC2012's tars extracted into class folders, each tar read once.

``ILSVRC2012_img_train.tar`` is a tar of per-class tars; ``ILSVRC2012_img_val.tar``'s labels come from
``LOC_val_solution.csv`` or the devkit's ground truth.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

from imagenet_cls.data.classes import imagenet_class_names
from imagenet_cls.data.images import is_image_file
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.check import with_progress
from imagenet_cls.prepare.placing import _same_size


def extract_archives(source: Path, dest: Path, progress: bool = True) -> tuple[int, dict[str, str]]:
    """Extract ILSVRC2012's train tar (a tar of per-class tars) and val tar into DEST; returns files written.

    Each tar is read once, member after member: finding members by name would walk the member list once per
    member (50,000² steps for the val tar).
    """
    written = 0
    train_tar = source / "ILSVRC2012_img_train.tar"
    if train_tar.is_file():
        with tarfile.open(train_tar) as outer:
            for member in with_progress(outer, "train classes", progress):
                wnid = Path(member.name).stem
                if not member.isfile() or not _is_wnid(wnid):
                    continue
                folder = dest / "train" / wnid
                done_marker = folder / ".complete"
                if done_marker.exists():
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                    written += _extract_images(inner, inner, lambda name, f=folder: f)
                done_marker.write_text("ok\n")
    val_tar = source / "ILSVRC2012_img_val.tar"
    if val_tar.is_file():
        labels = _archive_val_labels(source)
        folders: dict[str, Path] = {}

        def val_folder(name: str) -> Path | None:
            wnid = labels.get(name.rsplit(".", 1)[0])
            if wnid is None:
                return None
            if wnid not in folders:
                folders[wnid] = dest / "val" / wnid
                folders[wnid].mkdir(parents=True, exist_ok=True)
            return folders[wnid]

        with tarfile.open(val_tar) as tar:
            written += _extract_images(tar, with_progress(tar, "val images", progress), val_folder)
    return written, imagenet_class_names()


def _extract_images(
    tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], folder_of: Callable[[str], Path | None]
) -> int:
    """Write each image of ``members`` (``tar`` iterated once) to ``folder_of(its base name)``; None skips it."""
    count = 0
    for member in members:
        name = os.path.basename(member.name)  # flatten: never write outside the class folder
        if not member.isfile() or not is_image_file(name):
            continue
        folder = folder_of(name)
        if folder is None:
            continue
        target = folder / name
        if _same_size(target, member.size):
            continue
        partial = target.with_name(name + ".partial")
        with tar.extractfile(member) as data, open(partial, "wb") as out:
            shutil.copyfileobj(data, out)
        os.replace(partial, target)
        count += 1
    return count


def _archive_val_labels(source: Path) -> dict[str, str]:
    """ILSVRC2012 val labels: ``LOC_val_solution.csv`` if present, else the devkit's ground truth."""
    if (source / "LOC_val_solution.csv").is_file():
        from imagenet_cls.prepare.sources import _val_solution  # Kaggle's file, read as for Kaggle

        return _val_solution(source)
    devkit = source / "ILSVRC2012_devkit_t12.tar.gz"
    if not devkit.is_file():
        raise UserError(f"{source}: ILSVRC2012_img_val.tar needs ILSVRC2012_devkit_t12.tar.gz or LOC_val_solution.csv")
    import io

    from scipy.io import loadmat

    with tarfile.open(devkit) as tar:
        meta = tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
        truth = tar.extractfile("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").read()
    synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # leaf classes: num_children == 0
    labels = [id_to_wnid[int(v)] for v in truth.decode().split()]
    return {f"ILSVRC2012_val_{i:08d}": wnid for i, wnid in enumerate(labels, start=1)}


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()
