"""Small fake versions of each ImageNet download shape, prepared and checked."""

import csv
import io
import tarfile
from pathlib import Path

import pytest

from imagenet_cls.data.layout import read_layout
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.sources import detect_shape, main, prepare
from tests.conftest import write_image

WNIDS = ["n01440764", "n01443537"]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


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
    assert (tmp_path / "out" / "val" / "n01443537" / "ILSVRC2012_val_00000002.JPEG").is_file()
    assert (tmp_path / "out" / "folder_num_class_map.txt").read_text() == "n01440764 0 tench\nn01443537 1 goldfish\n"
    assert _tree(source) == before  # the source is never modified


def test_archives_with_devkit_or_solution_csv(tmp_path):
    source = tmp_path / "archives"
    source.mkdir()
    images = tmp_path / "images"
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
    with tarfile.open(source / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(2):
            path = write_image(images / f"ILSVRC2012_val_{i + 1:08d}.JPEG", (0, 0, 0), seed=i)
            tar.add(path, arcname=path.name)
    (source / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n01443537 1 1 1 1\nILSVRC2012_val_00000002,n01440764 1\n"
    )
    assert detect_shape(source) == "archives"
    done = prepare(source, tmp_path / "out", progress=False)
    assert done["placed"] == 6
    layout = read_layout(tmp_path / "out")
    assert len(layout.splits["train"]) == 4 and len(layout.splits["val"]) == 2
    assert (tmp_path / "out" / "val" / "n01443537" / "ILSVRC2012_val_00000001.JPEG").is_file()
    again = prepare(source, tmp_path / "out", progress=False)  # a rerun redoes nothing
    assert again["placed"] == 0


def test_seed_class_folders_renamed_by_number(tmp_path):
    source = tmp_path / "seed"
    for number, name in ((0, "tench"), (1, "goldfish")):
        for i in range(10):
            write_image(source / f"{number}-{name}" / f"{i}.jpg", (number * 200, 0, 0), seed=i)
    (source / "folder_num_class_map.txt").write_text("n01440764 0 tench\nn01443537 1 goldfish\n")
    assert detect_shape(source) == "class_folders"
    prepare(source, tmp_path / "out", split=(0.8, 0.1, 0.1), progress=False)
    layout = read_layout(tmp_path / "out")
    assert layout.classes == WNIDS
    assert [len(layout.splits[s]) for s in ("train", "val", "test")] == [16, 2, 2]


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
