import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from imagenet_cls.callbacks.annotate import annotate
from imagenet_cls.callbacks.writer import spreadsheet_safe
from imagenet_cls.cli import main
from imagenet_cls.data.datasets import output_path
from tests.conftest import FAST_TRAINER, TINY_MODEL, make_class_folders, write_image


@pytest.mark.parametrize("size", [(32, 32), (600, 800), (120, 800)])
def test_annotation_is_drawn_and_fits(size):
    image = np.full((*size, 3), 255, dtype=np.uint8)
    out = annotate(image, ['Predicted class: "3", Predicted label: "three" (97.0%)', "2. eight (2.0%)"])
    assert out.shape == image.shape
    assert (out[: max(4, size[0] // 20), : size[1] // 2] < 100).mean() > 0.3  # a dark box behind the text
    assert (out != 255).any(axis=2).mean() < 0.5  # the picture is not covered


def test_output_paths_mirror_the_tree_and_never_escape(tmp_path):
    root = tmp_path / "in"
    assert output_path(str(root / "a" / "x.jpg"), root) == Path("a/x.jpg")
    assert output_path(str(root / "b" / "x.jpg"), root) == Path("b/x.jpg")
    assert output_path(str(tmp_path / "elsewhere" / "y.png"), root) == Path("elsewhere/y.png")
    assert output_path(str(root / "z.gif"), root) == Path("z.gif.png")


def test_spreadsheet_formulas_are_defused():
    assert spreadsheet_safe("=cmd|' /C calc'!A0") == "'=cmd|' /C calc'!A0"
    assert (
        spreadsheet_safe("@SUM(1)") == "'@SUM(1)"
        and spreadsheet_safe("-2+3") == "'-2+3"
        and spreadsheet_safe("cat") == "cat"
    )
    assert spreadsheet_safe(3) == 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a tiny model fitted 2 epochs on 3 colour classes."""
    root = tmp_path_factory.mktemp("fit")
    data = make_class_folders(root / "data", per_class=12)
    code = main(
        [
            "fit",
            *TINY_MODEL,
            *FAST_TRAINER,
            "--data.data_dir",
            str(data),
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "8",
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            str(root / "runs"),
            "--model.optimizer",
            "adamw",
            "--model.lr",
            "0.01",
            "--test_after_fit",
            "false",
        ]
    )
    assert code == 0
    return next((root / "runs" / "checkpoints").glob("test_resnet-*.ckpt"))


def _predict(checkpoint, spec, out, *extra):
    return main(
        [
            "predict",
            "--ckpt_path",
            str(checkpoint),
            "--data.mode",
            "predict",
            "--data.predict_path",
            str(spec),
            "--data.num_workers",
            "0",
            "--writer.output_dir",
            str(out),
            *FAST_TRAINER,
            *extra,
        ]
    )


def test_predict_folder_with_collisions_bad_files_and_formula_names(checkpoint, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    write_image(inputs / "a" / "same.jpg", (220, 40, 40), size=(64, 48))
    write_image(inputs / "b" / "same.jpg", (40, 60, 220), size=(1200, 900))
    write_image(inputs / "=cmd.png", (40, 200, 40), fmt="PNG")
    (inputs / "broken.jpg").write_text("this is text")
    out = tmp_path / "out"
    monkeypatch.chdir(inputs)  # relative input paths, so "=cmd.png" starts a CSV cell
    assert _predict(checkpoint, ".", out, "--writer.top_k", "2", "--writer.draw_top_k", "2") == 0
    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert len(rows) == 4
    assert list(rows.columns[:6]) == ["path", "output", "pred_index", "pred_folder", "pred_name", "prob"]
    assert "top2_name" in rows.columns and "top3_name" not in rows.columns
    by_name = {p.lstrip("'"): row for p, row in zip(rows["path"], rows.to_dict("records"))}
    assert by_name["=cmd.png"]["path"].startswith("'=")  # cannot run as a spreadsheet formula
    assert "cannot decode image" in by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["output"] == ""
    assert by_name["a/same.jpg"]["pred_folder"] == "n00000001" and by_name["b/same.jpg"]["pred_folder"] == "n00000003"
    for key in ("a/same.jpg", "b/same.jpg", "=cmd.png"):
        written = cv2.imread(str(out / by_name[key]["output"]))
        assert written is not None and written.shape[1] <= 800 and written.shape[0] <= 600
        assert written.shape[1] == 800 or written.shape[0] == 600  # scaled to fit, up or down
    assert cv2.imread(str(out / "images" / "b" / "same.jpg")).shape[:2] == (600, 800)
    assert not list(out.glob(".predictions*"))  # partial files are gone once predictions.csv is complete


@pytest.mark.parametrize("kind", ["file", "glob", "list"])
def test_predict_file_glob_and_list_inputs(checkpoint, tmp_path, kind):
    inputs = make_class_folders(tmp_path / "in", per_class=2)
    spec = {
        "file": inputs / "n00000002" / "img_000.jpg",
        "glob": f"{inputs}/*/img_001.jpg",
        "list": tmp_path / "l.txt",
    }[kind]
    (tmp_path / "l.txt").write_text("in/n00000001/img_000.jpg\nin/n00000003/img_001.jpg\n")
    out = tmp_path / "out"
    assert _predict(checkpoint, spec, out) == 0
    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    expected = {"file": 1, "glob": 3, "list": 2}[kind]
    assert len(rows) == expected
    assert all(row["pred_folder"] == Path(row["path"]).parent.name for row in rows)  # colours are learnt
    assert len(list((out / "images").rglob("*.jpg"))) == expected


def test_predict_where_every_file_fails_exits_non_zero(checkpoint, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_text("x")
    assert _predict(checkpoint, tmp_path / "bad.jpg", tmp_path / "out") == 2
    assert "none of the 1 files could be read" in capsys.readouterr().err
    assert (tmp_path / "out" / "predictions.csv").is_file()


def test_json_and_threshold(checkpoint, tmp_path):
    inputs = make_class_folders(tmp_path / "in", per_class=2)
    out = tmp_path / "out"
    assert _predict(checkpoint, inputs, out, "--writer.write_json", "true", "--writer.threshold", "1.01") == 0
    rows = pd.read_csv(out / "predictions.csv", dtype=str)
    records = pd.read_json(out / "predictions.json", dtype=str)
    assert len(records) == len(rows) == 6
    assert (rows["pred_name"] == "unknown").all()  # no probability reaches the threshold
    assert list(records["path"]) == list(rows["path"])


def test_ddp_predict_on_cpu_merges_the_ranks_parts(checkpoint, tmp_path):
    import subprocess
    import sys

    inputs = make_class_folders(tmp_path / "in", per_class=5)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "cli.py"),
            "predict",
            "--ckpt_path",
            str(checkpoint),
            "--data.mode",
            "predict",
            "--data.predict_path",
            str(inputs),
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "2",
            "--writer.output_dir",
            str(out),
            "--trainer.strategy",
            "ddp",
            "--trainer.devices",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pd.read_csv(out / "predictions.csv")
    expected = sorted(str(p) for p in inputs.rglob("*.jpg"))
    assert list(rows["path"]) == expected  # every image once, in input order, from both ranks
    assert (rows["pred_folder"] == rows["path"].map(lambda p: Path(p).parent.name)).all()
    assert not list(out.glob(".predictions*"))


def test_show_without_display_warns_and_class_map_overrides_names(checkpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    inputs = make_class_folders(tmp_path / "in", per_class=1)
    names = tmp_path / "names.txt"
    names.write_text("n00000001 0 crimson\nn00000002 1 emerald\nn00000003 2 azure\n")
    out = tmp_path / "out"
    assert _predict(checkpoint, inputs, out, "--writer.show", "true", "--data.class_map", str(names)) == 0
    assert "no display found; writing files only" in caplog.text
    rows = pd.read_csv(out / "predictions.csv")
    assert set(rows["pred_name"]) == {"crimson", "emerald", "azure"}


def test_export_to_safetensors_loads_back_for_predict(checkpoint, tmp_path):
    import json

    from imagenet_cls.export import main as export_main

    assert export_main([str(checkpoint), str(tmp_path / "exported")]) == 0
    description = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert description["label_names"] == ["n00000001", "n00000002", "n00000003"]
    assert description["pretrained_cfg"]["input_size"] == [3, 32, 32]
    inputs = make_class_folders(tmp_path / "in", per_class=2)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--config",
            str(tmp_path / "exported" / "predict.yaml"),
            "--data.mode",
            "predict",
            "--data.predict_path",
            str(inputs),
            "--data.num_workers",
            "0",
            "--writer.output_dir",
            str(out),
            *FAST_TRAINER,
        ]
    )
    assert code == 0
    rows = pd.read_csv(out / "predictions.csv")
    assert (rows["pred_folder"] == rows["path"].map(lambda p: Path(p).parent.name)).all()


def test_drawn_names_use_spaces_and_the_csv_keeps_the_class_map(checkpoint, tmp_path, monkeypatch):
    from imagenet_cls.callbacks import annotate as annotate_module

    drawn = []
    original = annotate_module.annotate
    monkeypatch.setattr(annotate_module, "annotate", lambda image, lines: drawn.append(lines) or original(image, lines))
    inputs = make_class_folders(tmp_path / "in", per_class=1)
    names = tmp_path / "names.txt"
    names.write_text("n00000001 0 academic_gown\nn00000002 1 great_white_shark\nn00000003 2 red_wine\n")
    out = tmp_path / "out"
    assert _predict(checkpoint, inputs, out, "--data.class_map", str(names), "--writer.draw_top_k", "2") == 0
    rows = pd.read_csv(out / "predictions.csv")
    assert set(rows["pred_name"]) == {"academic_gown", "great_white_shark", "red_wine"}
    assert len(drawn) == 3 and all(len(lines) == 2 for lines in drawn)
    labels = {lines[0].split('label: "')[1].split('"')[0] for lines in drawn}  # Predicted label: "academic gown"
    seconds = {lines[1].split(". ", 1)[1].rsplit(" (", 1)[0] for lines in drawn}  # 2. red wine (1.0%)
    assert labels | seconds <= {"academic gown", "great white shark", "red wine"} and len(labels) == 3


def test_writer_cam_draws_a_heat_map_on_the_models_crop(tmp_path):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=3)
    with torch.no_grad():  # class 0 (predicted) sums the last feature map, so its Grad-CAM is that map's sum
        model.fc.weight.copy_(torch.tensor([1.0, -1.0, -1.0])[:, None])
        model.fc.bias.zero_()
    weights = tmp_path / "resnet10t.pth"
    torch.save(model.state_dict(), weights)
    inputs = tmp_path / "in"
    write_image(inputs / "wide.jpg", (200, 120, 60), size=(400, 200), seed=1)
    args = ["--model.model_name", "resnet10t", "--model.num_classes", "3", "--model.image_size", "96"]
    args += ["--model.crop_pct", "0.875"]
    args += ["--model.pretrained", str(weights)]
    outputs = {}
    for cam in ("false", "true"):
        out = tmp_path / f"out_{cam}"
        code = main(
            ["predict", *args, "--data.mode", "predict", "--data.predict_path", str(inputs), "--data.num_workers", "0"]
            + ["--writer.output_dir", str(out), "--writer.cam", cam, *FAST_TRAINER]
        )
        assert code == 0
        outputs[cam] = cv2.imread(str(out / "images" / "wide.jpg")).astype(int)
    assert outputs["true"].shape == outputs["false"].shape == (400, 800, 3)  # scaled to fit 800 x 600
    changed = np.abs(outputs["true"] - outputs["false"]).sum(axis=2) > 40
    # The model saw the centre crop: 96 / (96 / 0.875) of the shorter side, a 350-pixel square in the middle.
    inside, left_strip, right_strip = changed[60:340, 240:560], changed[:, :200], changed[:, 600:]
    assert inside.mean() > 0.05 and left_strip.mean() < 0.01 and right_strip.mean() < 0.01


@pytest.mark.parametrize("write_images", [False, True])
def test_csv_only_predict_makes_no_display_copy_and_draws_nothing(checkpoint, tmp_path, monkeypatch, write_images):
    import imagenet_cls.callbacks.annotate as annotate_module
    import imagenet_cls.data.datasets as datasets_module
    from imagenet_cls.data.images import ImageFile

    calls = {"fit_within": 0, "annotate": 0, "reductions": []}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    decode = ImageFile.decode

    def recording_decode(self, reduction=1):
        calls["reductions"].append(reduction)
        return decode(self, reduction)

    monkeypatch.setattr(datasets_module, "fit_within", counting("fit_within", datasets_module.fit_within))
    monkeypatch.setattr(annotate_module, "annotate", counting("annotate", annotate_module.annotate))
    monkeypatch.setattr(ImageFile, "decode", recording_decode)
    inputs = tmp_path / "in"
    write_image(inputs / "large.jpg", (220, 40, 40), size=(1200, 900))
    out = tmp_path / "out"
    assert _predict(checkpoint, inputs, out, "--writer.write_images", str(write_images).lower()) == 0
    rows = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(rows) == 1 and rows["error"].iloc[0] == ""
    drawn = 1 if write_images else 0
    assert (calls["fit_within"], calls["annotate"]) == (drawn, drawn)
    assert (out / "images" / "large.jpg").is_file() == write_images
    # The 32 px model input allows a 1/8 DCT decode; the 800x600 display copy limits it to full size.
    assert calls["reductions"] == ([1] if write_images else [8])
