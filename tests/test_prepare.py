"""Small fake versions of each ImageNet download shape, prepared and checked."""

import csv
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from imagenet_cls.data.layout import read_layout
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.sources import detect_shape, main, prepare
from tests.conftest import write_image

WNIDS = ["n01440764", "n01443537"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its content hash: equal trees hold the same bytes at the same paths."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): os.stat(p).st_ino for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_hard_link(target: Path, source: Path) -> None:
    assert not target.is_symlink() and os.stat(target).st_ino == os.stat(source).st_ino


def make_kaggle(root: Path) -> Path:
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    for c, wnid in enumerate(WNIDS):
        for i in range(3):
            write_image(base / "train" / wnid / f"{wnid}_{i}.JPEG", (c * 200, 50, 50), seed=i)
    rows = []
    for i in range(4):
        write_image(base / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", (0, 0, 0), seed=i)
        rows.append((f"ILSVRC2012_val_{i + 1:08d}", f"{WNIDS[i % 2]} 1 2 3 4"))
    write_image(base / "test" / "ILSVRC2012_test_00000001.JPEG", (0, 0, 0))
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
    )
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return root


def test_kaggle_layout(tmp_path):
    source = make_kaggle(tmp_path / "kaggle")
    before = _tree(source)
    assert detect_shape(source) == "kaggle"
    done = prepare(source, tmp_path / "out", progress=False)
    assert done["shape"] == "kaggle" and done["classes"] == 2 and done["placed"] == 10
    layout = read_layout(tmp_path / "out")
    assert layout.classes == WNIDS and len(layout.splits["train"]) == 6 and len(layout.splits["val"]) == 4
    assert "test" not in layout.splits  # Kaggle's test has no labels
    base = source / "ILSVRC" / "Data" / "CLS-LOC"
    _assert_hard_link(
        tmp_path / "out" / "val" / "n01443537" / "ILSVRC2012_val_00000002.JPEG",
        base / "val" / "ILSVRC2012_val_00000002.JPEG",
    )
    _assert_hard_link(
        tmp_path / "out" / "train" / "n01440764" / "n01440764_2.JPEG", base / "train" / "n01440764" / "n01440764_2.JPEG"
    )
    assert (tmp_path / "out" / "folder_num_class_map.txt").read_text() == "n01440764 0 tench\nn01443537 1 goldfish\n"
    assert json.loads((tmp_path / "out" / "prepare.json").read_text()) == {
        "shape": "kaggle",
        "split": None,
        "seed": None,
    }
    assert _tree(source) == before  # the source is never modified


def make_devkit(path: Path, wnids: list[str], val_labels: list[str]) -> None:
    """A minimal ``ILSVRC2012_devkit_t12.tar.gz``: ``meta.mat`` synsets (ids from 1; one non-leaf) and the val truth."""
    import numpy as np
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height"]
    synsets = np.zeros((len(wnids) + 1, 1), dtype=[(f, object) for f in fields])
    for i, wnid in enumerate([*wnids, "n00001740"]):
        leaf = i < len(wnids)
        synsets[i, 0] = (i + 1, wnid, wnid, "", 0 if leaf else 2, np.array([1, 2]) if not leaf else [], 0)
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    truth = "".join(f"{wnids.index(w) + 1}\n" for w in val_labels).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("meta.mat", meta.getvalue()), ("ILSVRC2012_validation_ground_truth.txt", truth)):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _count_calls(monkeypatch, cls, name: str) -> list[int]:
    calls = [0]
    original = getattr(cls, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def make_archives(source: Path, images: Path, labels: str = "devkit") -> list[str]:
    """ILSVRC2012's tars in small: a train tar of 2 class tars x 2 images, a val tar of 30 images; val's wnids."""
    source.mkdir(parents=True)
    with tarfile.open(source / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate(WNIDS):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for i in range(2):
                    path = write_image(images / f"{wnid}_{i}.JPEG", (c * 200, 0, 0), seed=i)
                    inner.add(path, arcname=path.name)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(inner_bytes.getvalue())
            outer.addfile(info, io.BytesIO(inner_bytes.getvalue()))
    val_labels = [WNIDS[(i * 7) % 3 % 2] for i in range(30)]
    with tarfile.open(source / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(30):
            path = write_image(images / f"ILSVRC2012_val_{i + 1:08d}.JPEG", (0, 0, 0), seed=i)
            tar.add(path, arcname=path.name)
    if labels == "devkit":
        make_devkit(source / "ILSVRC2012_devkit_t12.tar.gz", WNIDS, val_labels)
    else:
        rows = "".join(f"ILSVRC2012_val_{i + 1:08d},{w} 1 1 1 1\n" for i, w in enumerate(val_labels))
        (source / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + rows)
    return val_labels


@pytest.mark.parametrize("labels", ["devkit", "solution_csv"])
def test_archives_with_devkit_or_solution_csv(tmp_path, monkeypatch, labels):
    source, images = tmp_path / "archives", tmp_path / "images"
    val_labels = make_archives(source, images, labels)
    before = _tree(source)
    assert detect_shape(source) == "archives"
    visited = _count_calls(monkeypatch, tarfile.TarInfo, "isfile")
    done = prepare(source, tmp_path / "out", progress=False)
    assert done["placed"] == 34
    assert visited[0] <= 2 + 4 + 30  # each member of each tar looked at once (was once per val member: 30²)
    layout = read_layout(tmp_path / "out")
    assert len(layout.splits["train"]) == 4 and len(layout.splits["val"]) == 30
    for i, wnid in enumerate(val_labels):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        assert (tmp_path / "out" / "val" / wnid / name).read_bytes() == (images / name).read_bytes()
    assert (tmp_path / "out" / "train" / WNIDS[1] / f"{WNIDS[1]}_1.JPEG").read_bytes() == (
        images / f"{WNIDS[1]}_1.JPEG"
    ).read_bytes()
    again = prepare(source, tmp_path / "out", progress=False)  # a rerun redoes nothing
    assert again["placed"] == 0
    assert _tree(source) == before


def test_seed_class_folders_renamed_by_number(tmp_path):
    source = tmp_path / "seed"
    for number, name in ((0, "tench"), (1, "goldfish")):
        for i in range(10):
            write_image(source / f"{number}-{name}" / f"{i}.jpg", (number * 200, 0, 0), seed=i)
    (source / "folder_num_class_map.txt").write_text("n01440764 0 tench\nn01443537 1 goldfish\n")
    assert detect_shape(source) == "class_folders"
    before = _tree(source)
    prepare(source, tmp_path / "out", split=(0.8, 0.1, 0.1), progress=False)
    layout = read_layout(tmp_path / "out")
    assert layout.classes == WNIDS
    assert [len(layout.splits[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    for split in ("train", "val", "test"):
        for path, label in layout.splits[split]:
            number, name = ((0, "tench"), (1, "goldfish"))[label]
            _assert_hard_link(Path(path), source / f"{number}-{name}" / Path(path).name)
    assert _tree(source) == before


def test_flat_folder_interrupted_and_resumed(tmp_path):
    source = tmp_path / "flat"
    for c, wnid in enumerate(WNIDS):
        for i in range(5):
            write_image(source / f"{wnid}_img{i}.JPEG", (c * 200, 0, 0), seed=i)
    (source / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    first = prepare(source, out, split=(0.6, 0.2, 0.2), progress=False)
    assert first["placed"] == 10
    victim = next((out / "train" / WNIDS[0]).iterdir())
    victim.unlink()  # as if the run had been killed before this file
    (victim.parent / (victim.name + ".partial")).write_bytes(b"half")
    second = prepare(source, out, split=(0.6, 0.2, 0.2), progress=False)
    assert second == {**second, "placed": 1, "skipped": 9}
    assert victim.is_file() and not (victim.parent / (victim.name + ".partial")).exists()
    _assert_hard_link(victim, source / victim.name)


def test_rerun_with_other_split_arguments_is_refused_and_moves_nothing(tmp_path, capsys):
    source = tmp_path / "flat"
    for c, wnid in enumerate(WNIDS):
        for i in range(5):
            write_image(source / f"{wnid}_img{i}.JPEG", (c * 200, 0, 0), seed=i)
    out = tmp_path / "out"
    assert main([str(source), str(out), "--split", "0.6,0.2,0.2", "--seed", "3", "--no-progress"]) == 0
    assert json.loads((out / "prepare.json").read_text()) == {"shape": "flat", "split": [0.6, 0.2, 0.2], "seed": 3}
    capsys.readouterr()
    placed, links = _tree(out), _inodes(out)
    for other in (["--split", "0.8,0.1,0.1", "--seed", "3"], ["--split", "0.6,0.2,0.2", "--seed", "4"], []):
        assert main([str(source), str(out), *other, "--no-progress"]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]  # after the "source ...: flat layout" line
        assert error.startswith("error: DEST ") and "--split 0.6,0.2,0.2 --seed 3" in error and "new DEST" in error
        assert _tree(out) == placed and _inodes(out) == links  # nothing moved, added or removed
    assert main([str(source), str(out), "--split", "0.6,0.2,0.2", "--seed", "3", "--no-progress"]) == 0
    assert "10 already there" in capsys.readouterr().out


def test_dest_with_split_folders_but_no_record_is_refused(tmp_path):
    source = tmp_path / "flat"
    write_image(source / f"{WNIDS[0]}_a.JPEG", (0, 0, 0))
    write_image(tmp_path / "out" / "train" / WNIDS[0] / "old.JPEG", (0, 0, 0))
    with pytest.raises(UserError, match="holds split folders but no prepare.json"):
        prepare(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train" / WNIDS[0] / f"{WNIDS[0]}_a.JPEG").exists()


@pytest.mark.parametrize("mode", ["symlink", "copy"])
def test_modes(tmp_path, mode):
    source = tmp_path / "flat"
    write_image(source / f"{WNIDS[0]}_a.JPEG", (0, 0, 0))
    prepare(source, tmp_path / "out", mode=mode, split=(1.0, 0.0, 0.0), progress=False)
    target = tmp_path / "out" / "train" / WNIDS[0] / f"{WNIDS[0]}_a.JPEG"
    assert (
        target.is_symlink() == (mode == "symlink")
        and target.read_bytes() == (source / f"{WNIDS[0]}_a.JPEG").read_bytes()
    )


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="no ImageNet shape recognised"):
        detect_shape(tmp_path / "junk")
    source = tmp_path / "flat"
    write_image(source / f"{WNIDS[0]}_a.JPEG", (0, 0, 0))
    with pytest.raises(UserError, match="inside SOURCE"):
        prepare(source, source / "out", progress=False)
    with pytest.raises(UserError, match="inside SOURCE"):
        prepare(source, source, progress=False)
    nested = tmp_path / "dest" / "download"
    write_image(nested / f"{WNIDS[0]}_a.JPEG", (0, 0, 0))
    with pytest.raises(UserError, match=r"SOURCE .*download is inside DEST"):
        prepare(nested, tmp_path / "dest", progress=False)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["download"]  # nothing written


def test_fix_inside_the_checked_folder_is_refused(tmp_path, capsys):
    write_image(tmp_path / "data" / "train" / "n1" / "cmyk.JPEG", (10, 200, 10), mode="CMYK", fmt="JPEG")
    before = _tree(tmp_path / "data")
    for out in (tmp_path / "data" / "fixed", tmp_path / "data"):
        assert main(["--check", str(tmp_path / "data"), "--no-progress", "--fix", str(out)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: --fix {out} is inside --check {tmp_path / 'data'}: choose a folder outside it"
        )
        assert _tree(tmp_path / "data") == before  # not even check_report.csv


def test_check_reports_every_kind_of_bad_file(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "data" / "train"
    good = write_image(root / "n1" / "good.JPEG", (10, 200, 10), size=(64, 64))
    write_image(root / "n1" / "cmyk.JPEG", (10, 200, 10), mode="CMYK", fmt="JPEG")
    write_image(root / "n1" / "gray.JPEG", (10, 200, 10), mode="L", fmt="JPEG")
    write_image(root / "n1" / "png_in_disguise.JPEG", (10, 200, 10), fmt="PNG")
    (root / "n1" / "truncated.JPEG").write_bytes(good.read_bytes()[:300])
    (root / "n1" / "empty.JPEG").write_bytes(b"")
    (root / "n1" / "text.JPEG").write_text("hello")
    (root / "n1" / "notes.txt").write_text("hello")
    (root / "n1" / "loop.JPEG").symlink_to(root / "n1" / "loop.JPEG")
    big = root / "n1" / "bomb.png"
    Image.new("1", (12000, 8000)).save(big)  # 96 Mpx > PIL's limit, tiny on disk
    (root / "n2").mkdir()
    before = _tree(tmp_path / "data")
    assert main(["--check", str(tmp_path / "data"), "--no-progress", "--fix", str(tmp_path / "fixed")]) == 0
    printed = capsys.readouterr().out
    assert "train: " in printed and "1 empty" in printed
    with open(tmp_path / "data" / "check_report.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    problems = {Path(r["path"]).name: r["problem"] for r in rows if r["kind"] == "file"}
    assert problems == {
        "cmyk.JPEG": "cmyk",
        "gray.JPEG": "grayscale",
        "png_in_disguise.JPEG": "wrong_extension",
        "truncated.JPEG": "truncated",
        "empty.JPEG": "zero_bytes",
        "text.JPEG": "not_image",
        "notes.txt": "not_image",
        "loop.JPEG": "symlink_loop",
        "bomb.png": "too_many_pixels",
    }
    assert [r["class_folder"] for r in rows if r["kind"] == "class" and r["problem"] == "empty"] == ["n2"]
    fixed = sorted(p.relative_to(tmp_path / "fixed").as_posix() for p in (tmp_path / "fixed").rglob("*.JPEG"))
    assert fixed == ["train/n1/cmyk.JPEG", "train/n1/png_in_disguise.JPEG"]
    assert Image.open(tmp_path / "fixed" / "train" / "n1" / "cmyk.JPEG").mode == "RGB"
    assert Image.open(root / "n1" / "cmyk.JPEG").mode == "CMYK"  # the source is untouched
    after = _tree(tmp_path / "data")
    assert after.pop("check_report.csv") and after == before  # only the report was added
