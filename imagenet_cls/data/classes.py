"""The class map: which folder is which class index, and the human-readable name of each class.

The file ``folder_num_class_map.txt`` (the seed's format, the shape of ImageNet's ``map_clsloc.txt``) holds three
space-separated columns per line: the class folder (e.g. a WordNet id), a number, and the class name with
spaces written as underscores::

    n01440764 0 tench
    n01443537 1 goldfish

The class *index* is always the sorted order of the class folders (the order of timm's and torchvision's
pretrained ImageNet heads); the map only supplies names.
"""

from __future__ import annotations

from pathlib import Path

from imagenet_cls.errors import MissingPathError, UserError

CLASS_MAP_COLUMNS = ("folder", "number", "classes")


def read_class_map(path: Path) -> dict[str, str]:
    """Read a class map file into ``{folder: class name}``.

    Raises:
        UserError: the file is missing or a line does not have the three columns.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"class map {path} does not exist: pass an existing file with --data.class_map")
    names: dict[str, str] = {}
    with path.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) < 3:
                raise UserError(
                    f"class map {path}, line {line_number}: expected 3 space-separated columns "
                    f"{' '.join(CLASS_MAP_COLUMNS)}, got {line.strip()!r}"
                )
            names[fields[0]] = "_".join(fields[2:])
    return names


def write_class_map(path: Path, folders: list[str], names: dict[str, str]) -> None:
    """Write a class map for ``folders`` (in index order), taking names from ``names`` or the folder itself."""
    lines = [f"{folder} {index} {_one_token(names.get(folder, folder))}\n" for index, folder in enumerate(folders)]
    Path(path).write_text("".join(lines), encoding="utf-8")


def imagenet_class_names() -> dict[str, str]:
    """The 1000 ImageNet-1k classes as ``{wnid: short name}``, from timm's package data (no download)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {wnid: _one_token(info.label_name_to_description(wnid).split(",")[0]) for wnid in info.label_names()}


def _one_token(name: str) -> str:
    return "_".join(name.split())
