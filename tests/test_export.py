"""python -m imagenet_cls.export: a folder that timm, ONNX Runtime and our predict load, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from imagenet_cls.cli import main
from imagenet_cls.errors import UserError
from imagenet_cls.export import export, load_model
from imagenet_cls.export import main as export_main
from tests.conftest import FAST_TRAINER, NAMES, fit_args, make_class_folders


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint of the tiny model fitted on train/val/test folders, tested after fit (an evaluation report)."""
    root = tmp_path_factory.mktemp("fit")
    for split, count in (("train", 8), ("val", 3), ("test", 3)):
        make_class_folders(root / "data" / split, per_class=count)
    (root / "data" / "folder_num_class_map.txt").write_text(
        "".join(f"{w} {i} {NAMES[w]}\n" for i, w in enumerate(sorted(NAMES)))
    )
    args = fit_args(root / "data", root / "run", "--trainer.max_epochs", "1", "--model.lr", "0.01")
    args[args.index("--test_after_fit") + 1] = "true"
    assert main(args) == 0
    return next((root / "run" / "checkpoints").glob("test_resnet-*.ckpt"))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-colours"
    assert export_main([str(trained), str(out)]) == 0
    return out


def test_folder_holds_timm_config_weights_onnx_card_and_predict_config(exported):
    assert {p.name for p in exported.iterdir()} == {
        "config.json",
        "model.safetensors",
        "model.onnx",
        "README.md",
        "predict.yaml",
    }
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == ["n00000001", "n00000002", "n00000003"]
    assert config["label_descriptions"] == {"n00000001": "red", "n00000002": "green", "n00000003": "blue"}
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0
    assert cfg["interpolation"] == "bilinear" and len(cfg["mean"]) == len(cfg["std"]) == 3


def test_timm_loads_the_folder_offline_with_our_logits(exported, trained, monkeypatch):
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = load_model(trained)
    theirs = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    assert theirs.pretrained_cfg["label_names"] == ["n00000001", "n00000002", "n00000003"]
    config = timm.data.resolve_data_config(model=theirs)
    assert config["input_size"] == (3, 32, 32) and config["crop_pct"] == 1.0
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        ours = model(images)
        mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
        torch.testing.assert_close(theirs((images / 255 - mean) / std), ours, atol=1e-5, rtol=1e-5)


def test_onnx_has_dynamic_batch_metadata_and_our_logits(exported, trained):
    import onnxruntime

    model, _ = load_model(trained)
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["classes"]) == ["n00000001", "n00000002", "n00000003"]
    assert json.loads(metadata["class_names"]) == ["red", "green", "blue"]
    preprocessing = json.loads(metadata["preprocessing"])
    assert preprocessing["input_size"] == [3, 32, 32] and preprocessing["interpolation"] == "bilinear"
    for batch in (1, 5):
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
        normalised = model.normalize(images)
        (logits,) = session.run(["logits"], {"input": normalised.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(images).numpy(), atol=1e-4, rtol=1e-4)


def test_model_card_shows_the_report_metrics_and_how_to_load(exported, trained):
    summary = json.loads((trained.parent.parent / "report" / "test" / "summary.json").read_text())
    card = (exported / "README.md").read_text()
    assert card.startswith("---\ntags:\n- image-classification")
    assert f"| test | {summary['images']} | {summary['top1'] * 100:.2f}% |" in card
    assert "`n00000001` red" in card and "`model.lr` | `0.01`" in card
    assert 'timm.create_model("local-dir:tiny-colours", pretrained=True)' in card
    assert "bilinear interpolation, centre crop 32x32" in card


def test_predict_runs_from_the_exported_folder(exported, tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in exported.iterdir():  # the folder moved elsewhere: --model.pretrained names its new place
        (moved / path.name).write_bytes(path.read_bytes())
    inputs = make_class_folders(tmp_path / "in", per_class=2)
    out = tmp_path / "out"
    args = ["predict", "--config", str(moved / "predict.yaml"), "--model.pretrained", str(moved)]
    args += ["--data.predict_path", str(inputs), "--data.num_workers", "0", "--writer.output_dir", str(out)]
    assert main([*args, *FAST_TRAINER]) == 0
    rows = pd.read_csv(out / "predictions.csv")
    assert len(rows) == 6 and set(rows["pred_name"]) <= {"red", "green", "blue"}
    assert (rows["pred_folder"] == rows["path"].map(lambda p: Path(p).parent.name)).mean() >= 0.5


def test_export_errors_are_one_line(tmp_path, capsys):
    assert export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out")]) == 2
    message = f"error: CKPT {tmp_path / 'missing.ckpt'} is not a file: give a .ckpt written by fit\n"
    assert capsys.readouterr().err == message
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(UserError, match="has no model hyper-parameters"):
        export(tmp_path / "bare.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
