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


def _reference(root, classes):
    """The samples as a plain list, walked the way iter_image_files walks (the order the scan must keep)."""
    from imagenet_cls.data.images import iter_image_files

    return [(str(path), label) for label, name in enumerate(classes) for path in iter_image_files(root / name)]


def test_samples_keep_the_walk_order_with_nested_folders_and_links(split_folders):
    val = split_folders / "val"
    write_image(val / "n00000002" / "sub" / "deeper" / "a.jpg", (0, 0, 0))
    write_image(val / "n00000002" / "sub" / "z.jpg", (0, 0, 0))
    write_image(val / "n00000002" / ".hidden" / "b.jpg", (0, 0, 0))
    (val / "n00000002" / "link.jpg").symlink_to(next((val / "n00000001").iterdir()))
    (val / "n00000003" / "loop").symlink_to(val / "n00000003", target_is_directory=True)  # not followed
    layout = read_layout(split_folders)
    expected = _reference(val, layout.classes)
    assert list(layout.splits["val"]) == expected and layout.splits["val"] == expected
    assert [layout.splits["val"][i] for i in range(len(expected))] == expected
    assert layout.splits["val"][-1] == expected[-1] and layout.splits["val"][2:5] == expected[2:5]
    assert any(path.endswith("sub/deeper/a.jpg") for path, _ in expected)
    with pytest.raises(IndexError):
        layout.splits["val"][len(expected)]


def test_class_folder_split_is_the_per_class_split_of_the_sorted_paths(class_folders):
    from imagenet_cls.data.layout import split_per_class

    write_image(class_folders / "n00000001" / "nested" / "x.jpg", (0, 0, 0))
    layout = read_layout(class_folders, (0.6, 0.2, 0.2), seed=5)
    expected = {split: [] for split in ("train", "val", "test")}
    for label, name in enumerate(layout.classes):
        paths = [path for path, _ in _reference(class_folders, [name])]
        for split, chosen in split_per_class(paths, (0.6, 0.2, 0.2), f"5-{name}").items():
            expected[split] += [(path, label) for path in chosen]
    assert {split: list(samples) for split, samples in layout.splits.items()} == expected


def test_samples_are_compact_and_survive_pickling(tmp_path):
    import pickle

    for c in range(4):
        folder = tmp_path / "data" / "train" / f"n0000000{c}"
        folder.mkdir(parents=True)
        for i in range(500):
            (folder / f"n0000000{c}_{i:06d}.JPEG").touch()  # the scan reads names only
    samples = read_layout(tmp_path / "data").splits["train"]
    as_list = list(samples)
    assert len(as_list) == 2000 and as_list[501] == (str(tmp_path / "data/train/n00000001/n00000001_000001.JPEG"), 1)
    compact, plain = len(pickle.dumps(samples)), len(pickle.dumps(as_list))
    assert compact < 2000 * 40 < plain  # DataLoader workers started with spawn receive it pickled
    assert pickle.loads(pickle.dumps(samples)) == as_list


def test_sample_list_takes_numpy_and_tensor_indices(split_folders):
    import numpy as np
    import torch

    samples = read_layout(split_folders).splits["train"]
    assert samples[np.int64(3)] == samples[torch.tensor(3)] == list(samples)[3]
    with pytest.raises(TypeError):
        samples[1.5]
