"""INT8: ``export --quantize int8``, predict on the int8 graph, and the CPU decision of ``--model.predict_backend``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

import imagenet_cls.model.cpu as cpu
import imagenet_cls.model.inference as inference
from imagenet_cls.cli import main
from imagenet_cls.errors import UserError
from imagenet_cls.export import main as export_main
from imagenet_cls.model.cpu import cpu_has_fast_int8
from imagenet_cls.model.inference import OnnxRunner, choose_plan
from imagenet_cls.model.quantize import INT8_FILE, graph_metadata, preprocessed_batches
from tests.conftest import FAST_TRAINER, fit_args, make_class_folders

CPU = torch.device("cpu")
VNNI = ["avx2", "avx512f", "avx512_vnni"]
AVX2_ONLY = ["avx2"]


def fake_cpu(monkeypatch, flags: list[str]) -> None:
    """This process sees an x86 CPU with ``flags`` (and ONNX Runtime installed)."""
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(cpu, "cpu_description", lambda: {"model": "fake x86", "flags": list(flags)})
    monkeypatch.setattr(inference, "onnxruntime_available", lambda: True)


def test_fast_int8_needs_vnni_or_amx():
    assert cpu_has_fast_int8(["avx2", "avx512f", "avx512_vnni"])
    assert cpu_has_fast_int8(["avx2", "avx_vnni"]) and cpu_has_fast_int8(["amx_tile", "amx_int8"])
    assert not cpu_has_fast_int8(["avx2", "avx512f", "avx512_bf16"])
    assert not cpu_has_fast_int8([])


@pytest.mark.parametrize("flags", [VNNI, AVX2_ONLY])
def test_auto_takes_int8_only_with_vnni_and_says_why_not(monkeypatch, flags):
    fake_cpu(monkeypatch, flags)
    plan = choose_plan(CPU, "auto", "auto", int8_graph=True)
    assert plan.backend == "onnxruntime"
    assert plan.int8 == (flags is VNNI)
    assert plan.describe() == f"ONNX Runtime, {'int8' if flags is VNNI else 'float32'}"
    if flags is AVX2_ONLY:
        assert "no VNNI/AMX" in plan.why and "onnxruntime-int8" in plan.why
    forced = choose_plan(CPU, "onnxruntime-int8", "auto", int8_graph=True)  # asked for: int8 on every CPU
    assert forced.int8 and (("slower" in forced.why) == (flags is AVX2_ONLY))
    assert not choose_plan(CPU, "auto", "auto", int8_graph=False).int8  # no int8 graph: float32 as before


def test_int8_without_a_graph_or_on_gpu_is_a_one_line_error(monkeypatch):
    fake_cpu(monkeypatch, VNNI)
    with pytest.raises(UserError, match="--quantize int8"):
        choose_plan(CPU, "onnxruntime-int8", "auto", int8_graph=False)
    with pytest.raises(UserError, match="runs on CPU"):
        choose_plan(torch.device("cuda"), "onnxruntime-int8", "auto", int8_graph=True)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, export folder with model_int8.onnx) of the tiny model fitted on 3 colour classes."""
    root = tmp_path_factory.mktemp("int8")
    for split, count in (("train", 12), ("val", 4)):
        make_class_folders(root / "data" / split, per_class=count)
    args = fit_args(root / "data", root / "run", "--trainer.max_epochs", "2", "--model.lr", "0.01")
    assert main([*args, "--model.optimizer", "adamw"]) == 0
    checkpoint = next((root / "run" / "checkpoints").glob("test_resnet-*.ckpt"))
    out = root / "export"
    # Calibration data: the run's own data folder (its config.yaml), train split by default.
    assert export_main([str(checkpoint), str(out), "--quantize", "int8", "--calibration-images", "12"]) == 0
    return root / "data", out


def test_export_writes_int8_with_its_measured_cost(quantized, capsys):
    _, out = quantized
    metadata = graph_metadata(out / INT8_FILE)
    cost = json.loads(metadata["int8_cost"])
    assert cost["calibration_images"] == 12 and cost["images"] == 24  # the other 24 train images, held out
    assert 0 <= cost["top1_int8"] <= 1
    assert cost["cost_points"] == pytest.approx((cost["top1_fp32"] - cost["top1_int8"]) * 100)
    assert json.loads(metadata["classes"]) == ["n00000001", "n00000002", "n00000003"]
    assert "QDQ, per-channel" in metadata["quantization"] and len(metadata["weights_sha256"]) == 64
    card = (out / "README.md").read_text()
    assert "## INT8" in card and f"{cost['top1_int8']:.2%}" in card
    import onnx

    ops = {node.op_type for node in onnx.load(str(out / INT8_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_top1_matches_fp32_on_most_images(quantized):
    data, out = quantized
    from imagenet_cls.export import load_model

    model, _ = load_model(next(data.parent.glob("run/checkpoints/test_resnet-*.ckpt")))
    paths = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    fp32, int8 = OnnxRunner(out / "model.onnx", 1), OnnxRunner(out / INT8_FILE, 1)
    same = total = 0
    for _, batch in preprocessed_batches(model, paths):
        images = torch.from_numpy(batch)
        same += int((fp32(images).argmax(1) == int8(images).argmax(1)).sum())
        total += len(batch)
    assert total == 12 and same >= 10, (same, total)


@pytest.mark.parametrize("flags", [VNNI, AVX2_ONLY])
def test_predict_from_the_folder_runs_int8_where_it_pays(quantized, tmp_path, monkeypatch, caplog, flags):
    data, out = quantized
    fake_cpu(monkeypatch, flags)

    def predict(backend: str, folder: Path) -> pd.DataFrame:
        args = ["predict", "--config", str(out / "predict.yaml"), "--data.predict_path", str(data / "val")]
        args += ["--data.num_workers", "0", "--writer.output_dir", str(folder), "--writer.write_images", "false"]
        assert main([*args, *FAST_TRAINER, "--model.predict_backend", backend]) == 0
        return pd.read_csv(folder / "predictions.csv")

    with caplog.at_level(logging.INFO, logger="imagenet_cls"):
        auto = predict("auto", tmp_path / "auto")
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predict on CPU")]
    assert len(chosen) == 1
    assert ("ONNX Runtime, int8" in chosen[0]) == (flags is VNNI), chosen
    if flags is AVX2_ONLY:
        assert "no VNNI/AMX" in chosen[0]
    fp32 = predict("onnxruntime", tmp_path / "fp32")
    int8 = predict("onnxruntime-int8", tmp_path / "int8")
    assert len(int8) == 12 and (int8["pred_index"] == fp32["pred_index"]).mean() >= 10 / 12
    assert auto["pred_index"].tolist() == (int8 if flags is VNNI else fp32)["pred_index"].tolist()


def test_int8_graph_of_other_weights_is_refused(quantized, tmp_path, capsys, caplog):
    data, out = quantized
    import shutil

    from imagenet_cls.export_int8 import _add_metadata

    other = tmp_path / "other"
    shutil.copytree(out, other)
    _add_metadata(other / INT8_FILE, {"weights_sha256": "0" * 64})  # later properties win when read back
    args = ["predict", "--config", str(other / "predict.yaml"), "--model.pretrained", str(other)]
    args += ["--data.predict_path", str(data / "val"), "--data.num_workers", "0", *FAST_TRAINER]
    assert main([*args, "--model.predict_backend", "onnxruntime-int8"]) != 0
    assert "quantized from other weights" in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="imagenet_cls"):  # auto: float32 ONNX Runtime instead
        assert main([*args, "--writer.output_dir", str(tmp_path / "out"), "--writer.write_images", "false"]) == 0
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predict on CPU")]
    assert len(chosen) == 1 and "ONNX Runtime, float32" in chosen[0], chosen


def test_export_without_quantize_drops_an_earlier_int8_graph_and_errors_are_one_line(quantized, tmp_path, capsys):
    import shutil

    data, out = quantized
    checkpoint = next(data.parent.glob("run/checkpoints/test_resnet-*.ckpt"))
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert export_main([str(checkpoint), str(again)]) == 0
    assert not (again / INT8_FILE).exists() and (again / "model.onnx").is_file()
    capsys.readouterr()
    assert export_main([str(checkpoint), str(tmp_path / "x"), "--quantize", "int8", "--no-onnx"]) == 2
    assert "drop --no-onnx" in capsys.readouterr().err
    args = [str(checkpoint), str(tmp_path / "y"), "--quantize", "int8", "--calibration-data", str(data)]
    assert export_main([*args, "--calibration-images", "100"]) == 2
    err = capsys.readouterr().err
    assert "--calibration-split train" in err and "give --calibration-images below that" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["onnxruntime-int8", "auto"])
def test_validate_from_the_folder_scores_the_int8_graph(quantized, monkeypatch, caplog, backend):
    from imagenet_cls.cli import ImageNetCLI
    from imagenet_cls.export import load_model
    from imagenet_cls.model.quantize import top1

    data, out = quantized
    fake_cpu(monkeypatch, AVX2_ONLY)  # auto keeps float32 here; onnxruntime-int8 runs int8 anyway
    args = ["validate", "--config", str(out / "predict.yaml"), "--data.mode", "train", "--data.data_dir", str(data)]
    args += ["--data.num_workers", "0", "--data.batch_size", "5", *FAST_TRAINER, "--model.predict_backend", backend]
    with caplog.at_level(logging.INFO, logger="imagenet_cls"):
        accuracy = float(ImageNetCLI(args=args).trainer.callback_metrics["val_acc"])
    int8_lines = [r for r in caplog.records if "ONNX Runtime, int8" in r.getMessage()]
    assert len(int8_lines) == (1 if backend == "onnxruntime-int8" else 0)
    model, _ = load_model(next(data.parent.glob("run/checkpoints/test_resnet-*.ckpt")))
    samples = [
        (str(p), ["n00000001", "n00000002", "n00000003"].index(p.parent.name)) for p in (data / "val").rglob("*.jpg")
    ]
    graph = out / (INT8_FILE if backend == "onnxruntime-int8" else "model.onnx")
    assert accuracy == pytest.approx(top1(OnnxRunner(graph, 1), model, samples), abs=1e-6)
