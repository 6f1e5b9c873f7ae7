import pytest

from imagenet_cls.data.layout import read_layout
from imagenet_cls.errors import UserError
from tests.conftest import write_image


def test_split_folders(split_folders):
    layout = read_layout(split_folders)
    assert layout.classes == ["n00000001", "n00000002", "n00000003"]
    assert [len(layout.splits[s]) for s in ("train", "val", "test")] == [36, 12, 12]
    assert {label for _, label in layout.splits["val"]} == {0, 1, 2}


def test_class_folders_split_is_stratified_deterministic_and_disjoint(class_folders):
    first = read_layout(class_folders, (0.8, 0.1, 0.1), seed=0)
    again = read_layout(class_folders, (0.8, 0.1, 0.1), seed=0)
    other = read_layout(class_folders, (0.8, 0.1, 0.1), seed=1)
    assert first.splits == again.splits
    assert first.splits != other.splits
    per_split = {s: [p for p, _ in first.splits[s]] for s in ("train", "val", "test")}
    assert [len(per_split[s]) for s in ("train", "val", "test")] == [24, 3, 3]
    everything = sum(per_split.values(), [])
    assert len(everything) == len(set(everything)) == 30
    for split in ("val", "test"):
        assert sorted(label for _, label in first.splits[split]) == [0, 1, 2]  # one per class


def test_hidden_folders_and_non_images_are_ignored(class_folders):
    write_image(class_folders / ".ipynb_checkpoints" / "x.jpg", (0, 0, 0))
    (class_folders / "n00000001" / "notes.txt").write_text("not an image")
    (class_folders / "n00000001" / ".hidden.jpg").write_bytes(b"")
    layout = read_layout(class_folders, (1.0, 0.0, 0.0))
    assert layout.classes == ["n00000001", "n00000002", "n00000003"]
    assert len(layout.splits["train"]) == 30


def test_empty_class_folder_is_an_error(class_folders):
    (class_folders / "n00000009").mkdir()
    with pytest.raises(UserError, match=r"n00000009 holds no image"):
        read_layout(class_folders)


def test_missing_and_empty_data_dir(tmp_path):
    with pytest.raises(UserError, match="--data.data_dir .* is not a folder"):
        read_layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no class folders"):
        read_layout(tmp_path / "empty")


def test_bad_split_fractions(class_folders):
    with pytest.raises(UserError, match="--data.split"):
        read_layout(class_folders, (0.5, 0.1, 0.1))


def test_missing_split_is_named(split_folders):
    import shutil

    shutil.rmtree(split_folders / "test")
    layout = read_layout(split_folders)
    with pytest.raises(UserError, match="no 'test' images"):
        layout.samples("test")


def test_all_to_val_for_evaluating_a_folder_of_class_folders(class_folders):
    layout = read_layout(class_folders, (0.0, 1.0, 0.0))
    assert len(layout.splits["val"]) == 30 and not layout.splits["train"] and not layout.splits["test"]
