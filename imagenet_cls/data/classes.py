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
ALLOWED_RENAMES = 10  # ImageNet-1k names in ImageNet's order, but for a few renamed ones: still ImageNet's classes


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


def class_names(folders: list[str], class_map: Path | None = None, data_dir: Path | None = None) -> list[str]:
    """Human-readable names of class ``folders``.

    From ``class_map``, else ``data_dir``'s ``folder_num_class_map.txt``, else ImageNet's for WordNet ids, else the
    folder names.
    """
    names: dict[str, str] = {}
    if class_map is None and data_dir is not None and (Path(data_dir) / "folder_num_class_map.txt").is_file():
        class_map = Path(data_dir) / "folder_num_class_map.txt"
    if class_map is not None:
        names = read_class_map(Path(class_map))
    elif any(_is_wnid(folder) for folder in folders):
        names = imagenet_class_names()
    return [names.get(folder, folder) for folder in folders]


def classes_without_data(num_classes: int, class_map: Path | None = None) -> list[str] | None:
    """Class folders of a model known without a data folder: the class map's (sorted), ImageNet's for 1000."""
    if class_map is not None:
        folders = sorted(read_class_map(Path(class_map)))
        return folders if len(folders) == num_classes else None
    if num_classes == 1000:
        return sorted(imagenet_class_names())
    return None


def _is_wnid(folder: str) -> bool:
    return folder.startswith("n") and folder[1:].isdigit() and len(folder) == 9


def classes_from_names(names: list[str]) -> list[str]:
    """Class folders for a dataset's class names in label order (a Hugging Face ``ClassLabel``'s, for instance).

    ImageNet-1k's names ("tench, Tinca tinca", in label order) become their WordNet ids, so a pretrained ImageNet
    model evaluates on them with no class map: by position when 1000 names are ImageNet's in its order (all but a
    few: timm's two classes named "crane" must differ in a ``ClassLabel``), else by name when each is one ImageNet
    class's. Other names are kept, spaces as ``_``.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = list(info.label_names())
    described = [info.label_name_to_description(wnid) for wnid in wnids]
    if len(names) == len(wnids):
        same = sum(_plain(name) == _plain(text) for name, text in zip(names, described, strict=True))
        if same >= len(wnids) - ALLOWED_RENAMES:
            return wnids
    by_name: dict[str, list[str]] = {}
    for wnid, text in zip(wnids, described, strict=True):
        by_name.setdefault(_plain(text), []).append(wnid)
    found = [by_name.get(_plain(name), []) for name in names]
    if names and all(len(match) == 1 for match in found):
        return [match[0] for match in found]
    return [_one_token(name) for name in names]


def _plain(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())
