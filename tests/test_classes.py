from pathlib import Path

import pytest

from imagenet_cls.data.classes import imagenet_class_names, read_class_map, write_class_map
from imagenet_cls.errors import UserError


def test_round_trip(tmp_path):
    path = tmp_path / "map.txt"
    write_class_map(path, ["b", "a"], {"a": "alpha class", "b": "beta"})
    assert path.read_text() == "b 0 beta\na 1 alpha_class\n"
    assert read_class_map(path) == {"b": "beta", "a": "alpha_class"}


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("n1 0 ok\nbroken line\n")
    with pytest.raises(UserError, match=r"map.txt, line 2: expected 3 space-separated columns"):
        read_class_map(path)


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="--data.class_map"):
        read_class_map(tmp_path / "nope.txt")


def test_shipped_class_map_is_imagenet_in_sorted_order(repo_root: Path):
    shipped = read_class_map(repo_root / "dataset" / "folder_num_class_map.txt")
    assert list(shipped) == sorted(shipped) and len(shipped) == 1000
    assert shipped == imagenet_class_names()
    assert shipped["n01440764"] == "tench" and shipped["n01484850"] == "great_white_shark"
    numbers = [
        line.split()[1] for line in (repo_root / "dataset" / "folder_num_class_map.txt").read_text().splitlines()
    ]
    assert numbers == [str(i) for i in range(1000)]
