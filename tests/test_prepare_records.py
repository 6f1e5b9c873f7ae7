"""prepare from parquet snapshots, WebDataset shards and the ILSVRC2012 tars: to class folders, and to LitData chunks
in one pass (the source read once, nothing written but the chunks)."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from imagenet_cls.data.backends import open_layout
from imagenet_cls.data.layout import read_layout
from imagenet_cls.prepare.sources import main
from tests.conftest import COLOURS
from tests.record_sources import write_parquet_snapshot, write_wds_shards
from tests.test_prepare import WNIDS, _tree, make_archives
from tests.test_streaming import items

CLASSES = sorted(COLOURS)


def write_source(kind: str, split_folders: Path, dest: Path) -> Path:
    """``split_folders`` as a parquet snapshot or WebDataset shards (class names: the wnids); test labelled -1."""
    layout = read_layout(split_folders)
    splits = {name: [(str(p), label) for p, label in samples] for name, samples in layout.splits.items()}
    if kind == "parquet":
        return write_parquet_snapshot(splits, CLASSES, dest, hidden=("test",))
    splits["test"] = [(p, -1) for p, _ in splits["test"]]
    write_wds_shards(splits, dest)
    (dest / "_info.json").write_text(json.dumps({"class_names": CLASSES}))
    return dest


def contents(root: Path) -> list[tuple[str, str]]:
    """Each image under ``root`` as (class folder, content hash), sorted: what two class-folder trees share."""
    return sorted((p.parent.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in root.rglob("*") if p.is_file())


def files_outside(root: Path, dest: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(dest)}


def stored(dest: Path, split: str) -> list[tuple[str, int, bytes]]:
    return [(item["name"], int(item["label"]), bytes(item["image"])) for item in items(dest / split)]


def no_folder_writes(monkeypatch) -> None:
    """Every class-folder writer of prepare fails: a one-step optimize must not go through one."""
    import imagenet_cls.prepare.archives as archives
    import imagenet_cls.prepare.placing as placing
    import imagenet_cls.prepare.sources as sources
    import imagenet_cls.prepare.streamed as streamed

    def refuse(*_, **__):
        raise AssertionError("an intermediate class-folder copy")

    for module, name in ((placing, "place"), (sources, "place"), (archives, "extract_archives"),
                         (sources, "extract_archives"), (streamed, "write_folders")):  # fmt: skip
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_records_to_class_folders_copy_bytes_and_resume(split_folders, tmp_path, kind):
    source = write_source(kind, split_folders, tmp_path / kind)
    before = _tree(source)
    out = tmp_path / "out"
    assert main([str(source), str(out), "--no-progress"]) == 0
    layout = read_layout(out)
    assert layout.classes == CLASSES and json.loads((out / "prepare.json").read_text())["shape"] == kind
    for split in ("train", "val"):
        assert contents(out / split) == contents(split_folders / split)  # same bytes in the same classes
    assert "test" not in layout.splits  # labelled -1: a flat folder to predict on
    assert sorted(h for _, h in contents(out / "unlabelled" / "test")) == sorted(
        h for _, h in contents(split_folders / "test")
    )
    if kind == "parquet":  # named by the stored path's file name
        assert sorted(p.relative_to(out) for p in (out / "train").rglob("*.jpg")) == sorted(
            p.relative_to(split_folders) for p in (split_folders / "train").rglob("*.jpg")
        )
    done = _tree(out)
    victim = next((out / "train" / CLASSES[1]).iterdir())
    victim.unlink()  # as if killed before this file; another one cut short
    next((out / "val" / CLASSES[0]).iterdir()).write_bytes(b"half")
    assert main([str(source), str(out), "--no-progress"]) == 0
    assert _tree(out) == done and not list(out.rglob("*.partial"))
    assert _tree(source) == before


@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_records_to_litdata_in_one_pass_keep_bytes_labels_names(split_folders, tmp_path, monkeypatch, capsys, kind):
    source = write_source(kind, split_folders, tmp_path / kind)
    before = files_outside(tmp_path, tmp_path / "optimized")
    no_folder_writes(monkeypatch)
    dest = tmp_path / "optimized"
    assert main([str(source), str(dest), "--format", "litdata", "--no-progress"]) == 0
    assert files_outside(tmp_path, dest) == before  # nothing written but DEST
    assert {p.name for p in dest.iterdir()} == {"dataset.json", "folder_num_class_map.txt", "train", "val"}
    assert all(p.name == "index.json" or p.name.startswith("chunk-") for p in dest.rglob("*") if p.is_file()
               and p.parent != dest)  # fmt: skip
    layout = open_layout(source, (0.8, 0.1, 0.1), 0)
    manifest = json.loads((dest / "dataset.json").read_text())
    assert manifest["classes"] == layout.classes == CLASSES and manifest["splits"] == {"train": 36, "val": 12}
    for split in ("train", "val"):
        records = layout.records[split]
        assert stored(dest, split) == [
            (records.name(i), records.label(i), records.image_bytes(i)) for i in range(len(records))
        ]
    done = _tree(dest)
    capsys.readouterr()
    assert main([str(source), str(dest), "--format", "litdata", "--no-progress"]) == 0  # a rerun keeps both
    assert _tree(dest) == done and capsys.readouterr().err.count("already optimized") == 2
    (dest / "val" / "index.json").unlink()  # as if killed while writing val
    assert main([str(source), str(dest), "--format", "litdata", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "already optimized (36 images), kept" in err and f"val: {kind} -> " in err
    again = _tree(dest)
    assert again.pop("val/index.json") and again == {k: v for k, v in done.items() if k != "val/index.json"}


def test_ilsvrc_tars_to_litdata_in_one_pass_equal_prepare_then_optimize(tmp_path, monkeypatch):
    source = tmp_path / "archives"
    make_archives(source, tmp_path / "images")
    two_step = tmp_path / "two_step"
    assert main([str(source), str(tmp_path / "folders"), "--no-progress"]) == 0
    assert main([str(tmp_path / "folders"), str(two_step), "--format", "litdata", "--no-progress"]) == 0
    before = files_outside(tmp_path, tmp_path / "one_step")
    no_folder_writes(monkeypatch)
    one_step = tmp_path / "one_step"
    assert main([str(source), str(one_step), "--format", "litdata", "--no-progress"]) == 0
    assert files_outside(tmp_path, one_step) == before
    for name in ("dataset.json", "folder_num_class_map.txt"):
        assert (one_step / name).read_text() == (two_step / name).read_text()
    for split in ("train", "val"):  # the same items (tar order, not folder order)
        assert sorted(stored(one_step, split)) == sorted(stored(two_step, split))
    assert [name for name, _, _ in stored(one_step, "train")][:2] == [f"train/{WNIDS[0]}/{WNIDS[0]}_{i}.JPEG"
                                                                      for i in range(2)]  # fmt: skip


def test_bad_sources_are_one_line_naming_the_file(tmp_path, capsys):
    source = tmp_path / "archives"
    make_archives(source, tmp_path / "images")
    train = source / "ILSVRC2012_img_train.tar"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    assert main([str(source), str(tmp_path / "out"), "--format", "litdata", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: {train}") and "truncated" in lines[-1]
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "snapshot" / "data").mkdir(parents=True)
    bad = tmp_path / "snapshot" / "data" / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": ["a"], "label": [0]}), bad)
    for fmt in ("litdata", "folders"):
        assert main([str(tmp_path / "snapshot"), str(tmp_path / f"out_{fmt}"), "--format", fmt]) == 2
        error = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("source ")]
        assert len(error) == 1 and error[0].startswith(f"error: {bad} has no image column")


def test_hostile_stored_names_stay_inside_dest(tmp_path):
    from tests.conftest import write_image

    image = write_image(tmp_path / "img.jpg", (200, 0, 0)).read_bytes()
    source = tmp_path / "a" / "b" / "shards"
    source.mkdir(parents=True)
    with tarfile.open(source / "train-000000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for key in ("../../../escape", "/abs/escape2", "ok/../../../escape3", "\x01x"):
            for extension, data in (("jpg", image), ("cls", b"0")):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (source / "_info.json").write_text(json.dumps({"class_names": ["../../up"]}))
    snapshot = write_parquet_snapshot(
        {"train": [(str(tmp_path / "img.jpg"), 0)]}, ["../../up"], tmp_path / "a" / "b" / "snapshot", files=1
    )
    import pyarrow.parquet as pq

    table = pq.read_table(next((snapshot / "data").glob("*.parquet")))
    rows = table.to_pylist()
    rows[0]["image"]["path"] = "../../../../parquet_escape"  # no extension, and upwards
    file = next((snapshot / "data").glob("*.parquet"))
    pq.write_table(table.from_pylist(rows, schema=table.schema), file)
    for src in (source, snapshot):
        before = files_outside(tmp_path, tmp_path / "a" / "b" / "out")
        out = tmp_path / "a" / "b" / "out" / src.name
        assert main([str(src), str(out), "--no-progress"]) == 0
        assert files_outside(tmp_path, tmp_path / "a" / "b" / "out") == before
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.suffix != ".txt"
                         and p.suffix != ".json" and p.suffix != ".csv")  # fmt: skip
        assert all(p.startswith("train/_.._.._up/") for p in written), written
        assert all((out / p).read_bytes() == image for p in written)
    assert len(list((tmp_path / "a" / "b" / "out" / "shards" / "train").rglob("*.jpg"))) == 4
    assert (tmp_path / "a/b/out/snapshot/train/_.._.._up/parquet_escape.jpg").read_bytes() == image
    assert not os.path.exists(tmp_path / "escape.jpg")


@pytest.mark.slow  # two Lightning validate runs: ~30 s on 2 loaded cores
def test_validate_from_litdata_written_from_shards_equals_the_folders(split_folders, tmp_path):
    from imagenet_cls.cli import ImageNetCLI
    from tests.conftest import FAST_TRAINER, TINY_MODEL, untrained_weights

    source = write_source("webdataset", split_folders, tmp_path / "shards")
    dest = tmp_path / "optimized"
    assert main([str(source), str(dest), "--format", "litdata", "--no-progress"]) == 0
    weights = untrained_weights(tmp_path)

    def validate(data: Path) -> dict[str, float]:
        cli = ImageNetCLI(args=["validate", *TINY_MODEL, *weights, "--data.data_dir", str(data), *FAST_TRAINER,
                                "--data.num_workers", "0", "--data.batch_size", "4"])  # fmt: skip
        return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}

    from_folders = validate(split_folders)
    assert from_folders["val_images"] == 12 and validate(dest) == from_folders


def test_a_brace_pattern_and_a_source_of_one_unnamed_split(split_folders, tmp_path, capsys):
    source = write_source("webdataset", split_folders, tmp_path / "shards")
    (source / "_info.json").unlink()
    for number, shard in enumerate(sorted(source.glob("validation-*.tar"))):
        shard.rename(tmp_path / f"shard-{number:06d}.tar")  # names without a split
    pattern = str(tmp_path / "shard-{000000..000001}.tar")
    assert main([pattern, str(tmp_path / "out"), "--format", "litdata", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: SOURCE {pattern}: split '' is none of train/validation/test")
    assert "--split train|val|test" in error
    dest = tmp_path / "out"
    assert main([pattern, str(dest), "--format", "litdata", "--split", "val", "--no-progress"]) == 0
    manifest = json.loads((dest / "dataset.json").read_text())
    assert manifest["splits"] == {"val": 12} and manifest["classes"] == ["0", "1", "2"]  # unnamed labels: numbers
    assert sorted(h for _, _, h in stored(dest, "val")) == sorted(
        p.read_bytes() for p in (split_folders / "val").rglob("*.jpg")
    )


def test_max_side_reencodes_streamed_images(split_folders, tmp_path):
    from PIL import Image

    source = write_source("parquet", split_folders, tmp_path / "snapshot")
    dest = tmp_path / "optimized"
    assert main([str(source), str(dest), "--format", "litdata", "--max-side", "16", "--no-progress"]) == 0
    assert json.loads((dest / "dataset.json").read_text())["options"] == {"max_side": 16, "quality": 90}
    layout = open_layout(source, (0.8, 0.1, 0.1), 0)
    for _, _, data in stored(dest, "val"):  # pixels re-encoded; the order, names and labels kept (below)
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("JPEG", (16, 16))
    assert [(n, lab) for n, lab, _ in stored(dest, "val")] == [
        (layout.records["val"].name(i), layout.records["val"].label(i)) for i in range(12)
    ]
