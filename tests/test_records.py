"""Hugging Face parquet snapshots and WebDataset shards read in place (written by ``datasets`` and ``webdataset``).

Both are read by index through the folders' samplers and decode, so a run on them equals a run on the folders they
were written from: the same weights after an epoch (bitwise), the same metrics, each image once under DDP.
"""

from pathlib import Path

import pandas as pd
import pytest
import torch

from imagenet_cls.cli import main
from imagenet_cls.data.backends import backend_of, open_layout
from imagenet_cls.data.layout import read_layout
from imagenet_cls.errors import UserError
from tests.conftest import FAST_TRAINER, TINY_MODEL, differing_tensors, fit_args, untrained_weights
from tests.record_sources import write_parquet_snapshot, write_wds_shards

pytest.importorskip("datasets")
pytest.importorskip("webdataset")

NAMES = ["red", "green", "blue"]


@pytest.fixture
def sources(split_folders, tmp_path) -> dict[str, Path]:
    """The split folders, and the same samples as a parquet snapshot (test split unlabelled) and as tar shards."""
    splits = read_layout(split_folders).splits
    return {
        "folders": split_folders,
        "parquet": write_parquet_snapshot(splits, NAMES, tmp_path / "snapshot", hidden=("test",)),
        "webdataset": write_wds_shards(splits, tmp_path / "shards"),
    }


def test_backend_and_classes_of_each_source(sources):
    assert {name: backend_of(path) for name, path in sources.items()} == {
        "folders": "folders", "parquet": "parquet", "webdataset": "webdataset"}  # fmt: skip
    parquet = open_layout(sources["parquet"], (0.8, 0.1, 0.1), 0)
    assert parquet.classes == NAMES  # the ClassLabel names, from the schema metadata
    assert {s: len(r) for s, r in parquet.records.items()} == {"train": 36, "val": 12, "test": 12}
    assert parquet.records["test"].unlabelled and not parquet.records["val"].unlabelled
    shards = open_layout(sources["webdataset"], (0.8, 0.1, 0.1), 0)
    assert shards.classes == ["0", "1", "2"] and len(shards.records["train"].shards) == 6
    folders = read_layout(sources["folders"])
    for layout in (parquet, shards):  # the same bytes and labels in the same order
        records = layout.records["val"]
        assert [records.image_bytes(i) for i in range(12)] == [Path(p).read_bytes() for p, _ in folders.splits["val"]]
        assert [records.label(i) for i in range(12)] == [label for _, label in folders.splits["val"]]
    assert parquet.records["val"].name(0) == "n00000001/img_000.jpg"
    assert shards.records["val"].name(5) == "000005_n00000002_img_001.jpg"


def test_parquet_reads_stay_right_with_one_file_open_at_a_time(sources, monkeypatch):
    """Files beyond ``OPEN_FILES`` are closed (hundreds of files, several workers: no running out of descriptors)."""
    import imagenet_cls.data.parquet as parquet_module

    monkeypatch.setattr(parquet_module, "OPEN_FILES", 1)
    monkeypatch.setattr(parquet_module, "CACHE_BYTES", 1)  # one row group cached: every other read opens its file
    records = open_layout(sources["parquet"], (0.8, 0.1, 0.1), 0).records["train"]
    expected = [Path(p).read_bytes() for p, _ in read_layout(sources["folders"]).splits["train"]]
    order = [0, 35, 1, 34, 17, 18, 2, 33]  # back and forth between the two files
    assert [records.image_bytes(i) for i in order] == [expected[i] for i in order]
    assert len(records._files) == 1


def test_imagenet_names_become_wordnet_ids(tmp_path, split_folders):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = list(info.label_names())[:3]
    splits = {"val": read_layout(split_folders).splits["val"]}
    snapshot = write_parquet_snapshot(splits, [info.label_name_to_description(w) for w in wnids], tmp_path / "in1k")
    assert open_layout(snapshot, (0.8, 0.1, 0.1), 0).classes == wnids
    from imagenet_cls.data.classes import classes_from_names

    every = list(info.label_names())
    names = [info.label_name_to_description(w) for w in every]
    names[every.index("n03126707")] = "crane (machine)"  # a ClassLabel cannot hold timm's two "crane"s
    assert classes_from_names(names) == every  # by position: 999 of 1000 names are ImageNet's
    # Out of order, with an ambiguous "crane": no guess; the names are the classes.
    assert classes_from_names(names[::-1])[:2] == [
        "toilet_tissue,_toilet_paper,_bathroom_tissue",
        "ear,_spike,_capitulum",
    ]


def test_class_names_from_the_card_when_the_schema_has_none(tmp_path, split_folders):
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = read_layout(split_folders).splits["val"]
    table = pa.table({"image": [{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p, _ in samples],
                      "label": [label for _, label in samples]})  # fmt: skip
    (tmp_path / "plain" / "default" / "validation").mkdir(parents=True)
    pq.write_table(table, tmp_path / "plain" / "default" / "validation" / "0000.parquet")  # the converter's layout
    card = "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n"
    card += "      class_label:\n        names:\n          '0': red\n          '1': green\n          '2': blue\n---\n"
    (tmp_path / "plain" / "README.md").write_text(card)
    layout = open_layout(tmp_path / "plain", (0.8, 0.1, 0.1), 0)
    assert layout.classes == NAMES and len(layout.records["val"]) == 12


@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_fit_and_validate_equal_folders(sources, tmp_path, source):
    """Same order, per-sample augmentation seeds and decode: bitwise-equal weights after an epoch, equal metrics."""
    deterministic = ("--trainer.max_epochs", "1", "--trainer.deterministic", "true")
    assert main(fit_args(sources["folders"], tmp_path / "folders", *deterministic)) == 0
    assert main(fit_args(sources[source], tmp_path / source, *deterministic)) == 0
    expected = torch.load(tmp_path / "folders" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(tmp_path / source / "checkpoints" / "last.ckpt", weights_only=True)
    assert not differing_tensors(expected["state_dict"], got["state_dict"])
    metrics = {}
    for name in ("folders", source):  # each with its own checkpoint (equal weights; the classes are named apart)
        from imagenet_cls.cli import ImageNetCLI

        ckpt = str(tmp_path / name / "checkpoints" / "last.ckpt")
        cli = ImageNetCLI(args=["validate", "--ckpt_path", ckpt, "--data.data_dir", str(sources[name]),
                                *FAST_TRAINER, "--data.num_workers", "0", "--data.batch_size", "4"])  # fmt: skip
        metrics[name] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics[source]["val_images"] == 12 and metrics[source]["val_acc"] == metrics["folders"]["val_acc"]
    assert metrics[source]["val_loss"] == pytest.approx(metrics["folders"]["val_loss"], abs=1e-6)


def test_unlabelled_split_predicts_and_refuses_test(sources, tmp_path, capsys):
    weights = untrained_weights(tmp_path)
    out = tmp_path / "out"
    args = ["predict", *TINY_MODEL, *weights, *FAST_TRAINER, "--data.num_workers", "0",
            "--data.predict_path", str(sources["parquet"] / "test"), "--writer.output_dir", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(rows) == 12 and (rows["error"] == "").all()
    assert rows["path"].iloc[0] == f"{sources['parquet']}/n00000001/img_000.jpg"  # the stored path
    assert (out / "images" / "n00000001" / "img_000.jpg").is_file()
    capsys.readouterr()
    args = ["test", *TINY_MODEL, *weights, *FAST_TRAINER, "--data.data_dir", str(sources["parquet"])]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "the 'test' split has no labels (all -1)" in err and "Traceback" not in err


def test_bad_row_is_named_or_skipped_and_counted(split_folders, tmp_path, capsys, caplog):
    splits = read_layout(split_folders).splits
    bad = Path(splits["val"][2][0])
    bad.write_bytes(b"not an image")
    snapshot = write_parquet_snapshot(splits, NAMES, tmp_path / "snapshot")
    ckpt = tmp_path / "w"
    weights = untrained_weights(tmp_path)
    base = ["validate", *TINY_MODEL, *weights, *FAST_TRAINER, "--data.num_workers", "0", "--data.data_dir",
            str(snapshot), "--trainer.default_root_dir", str(ckpt)]  # fmt: skip
    assert main(base) != 0
    stored = f"{snapshot}/{bad.parent.name}/{bad.name}"
    assert f"cannot decode image {stored}" in capsys.readouterr().err
    from imagenet_cls.cli import ImageNetCLI

    cli = ImageNetCLI(args=[*base, "--data.skip_bad_images", "true"])
    assert float(cli.trainer.callback_metrics["val_images"]) == 11  # 12 rows, one skipped
    assert stored in caplog.text  # the skipped row, named by its stored path


def test_hub_url_is_one_line_without_network(capsys):
    with pytest.raises(UserError, match="hf download ILSVRC/imagenet-1k --repo-type dataset"):
        backend_of("hf://datasets/ILSVRC/imagenet-1k")


@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_report_gallery_names_each_image_by_its_stored_path_or_key(sources, tmp_path, monkeypatch, source):
    """The evaluation report's gallery of mistakes names and draws each image from its record."""
    from imagenet_cls.callbacks import report_drawing

    drawn = []
    original = report_drawing.write_gallery

    def spy(path, gallery, *args, **kwargs):
        drawn.append(([name for name, *_ in gallery], kwargs.get("pictures")))
        return original(path, gallery, *args, **kwargs)

    monkeypatch.setattr(report_drawing, "write_gallery", spy)
    root = tmp_path / "runs"
    args = ["validate", *TINY_MODEL, *untrained_weights(tmp_path), *FAST_TRAINER, "--data.num_workers", "0",
            "--data.data_dir", str(sources[source]), "--trainer.default_root_dir", str(root)]  # fmt: skip
    assert main(args) == 0
    (report,) = root.rglob("report/val")
    stored = {
        f"{sources[source]}/{name}"
        for name in (
            [f"{Path(p).parent.name}/{Path(p).name}" for p, _ in read_layout(sources["folders"]).splits["val"]]
            if source == "parquet"  # datasets keeps the stored path; the shards' image member is <key>.jpg
            else [f"{n:06d}_{Path(p).parent.name}_{Path(p).stem}.jpg" for n, (p, _) in enumerate(
                read_layout(sources["folders"]).splits["val"])]
        )
    }  # fmt: skip
    (names, _), *_ = drawn
    assert names and set(names) <= stored, (names, stored)
    assert (report / "misclassified.jpg").is_file()
