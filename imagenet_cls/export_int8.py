"""``export --quantize int8``: ``model_int8.onnx`` beside ``model.onnx``, its top-1 cost, and the card's section."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagenet_cls.errors import UserError
from imagenet_cls.model.quantize import INT8_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """The images of ``--quantize int8``.

    ``images`` of ``split`` of ``data_dir`` (default: the run's data folder) calibrate; up to ``held_out`` others of
    the same split measure the top-1 cost.
    """

    data_dir: Path | None = None
    split: str = "train"
    images: int = 256
    held_out: int = 256


def write_int8(model: Any, out_dir: Path, calibration: Calibration, run_data_dir: str | None) -> dict[str, Any]:
    """``model_int8.onnx`` from ``model.onnx``; returns its top-1 cost against float32 (also in its metadata)."""
    from imagenet_cls.model.inference import onnx_metadata, weights_digest
    from imagenet_cls.model.quantize import calibration_split, describe_cost, int8_cost, quantize_int8

    if calibration.images < 1 or calibration.held_out < 1:
        raise UserError("--calibration-images and --held-out-images must be at least 1")
    data_dir = calibration.data_dir or run_data_dir
    if not data_dir:
        raise UserError("--quantize int8 needs images: give --calibration-data DIR (the run's config names none)")
    paths, held_out = calibration_split(
        Path(data_dir), calibration.split, model.hparams.get("classes"), calibration.images, calibration.held_out
    )
    metadata = onnx_metadata(dict(model.hparams), model.data_config)
    metadata["weights_sha256"] = weights_digest(model.backbone, tuple(model.data_config["input_size"]))
    metadata["quantization"] = (
        f"onnxruntime {_version('onnxruntime')} quantize_static: QDQ, per-channel int8 weights, uint8 activations, "
        f"MinMax calibration on {len(paths)} images of {calibration.split} of {data_dir}"
    )
    fp32, int8 = out_dir / "model.onnx", out_dir / INT8_FILE
    quantize_int8(model, fp32, int8, paths, metadata)
    cost = {**int8_cost(model, fp32, int8, held_out), "calibration_images": len(paths), "split": calibration.split}
    _add_metadata(int8, {"int8_cost": json.dumps(cost)})
    log.info("%s: %s", int8, describe_cost(cost))
    return cost


def int8_card(cost: dict[str, Any], out_dir: Path) -> str:
    """The model card's int8 section."""
    return "\n".join(
        [
            "## INT8",
            "",
            f"`model_int8.onnx`: ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 activations),"
            f" calibrated on {cost['calibration_images']} images of the `{cost['split']}` split. Top-1 on "
            f"{cost['images']} other images of that split: float32 {cost['top1_fp32']:.2%}, int8 "
            f"{cost['top1_int8']:.2%} (cost {cost['cost_points']:+.2f} points). Faster than float32 only on CPUs with"
            " VNNI or AMX; `--model.predict_backend auto` uses it there when predicting with"
            f" `--model.pretrained {out_dir.name}`.",
            "",
        ]
    )


def _add_metadata(path: Path, properties: dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path))
    for key, value in properties.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
