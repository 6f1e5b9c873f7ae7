"""INT8: ONNX Runtime static quantization of an exported graph, its top-1 cost, and where int8 pays off.

``quantize_int8`` calibrates on images preprocessed exactly as predict preprocesses them (the model's eval crop,
then ``model.normalize``) and writes a QDQ graph with per-channel int8 weights and uint8 activations. On x86 that
graph is faster than float32 only where the CPU has 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX);
elsewhere ONNX Runtime emulates them with 16-bit multiply-adds, which are slower and may saturate, so ``auto``
keeps float32 there (:func:`cpu_has_fast_int8`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagenet_cls.model.cpu import cpu_has_fast_int8

log = logging.getLogger(__name__)

INT8_FILE = "model_int8.onnx"  # beside model.onnx in an exported folder
CALIBRATION_BATCH = 32


def preprocessed_batches(
    model: Any, paths: Sequence[str], batch_size: int = CALIBRATION_BATCH
) -> Iterator[tuple[list[int], np.ndarray]]:
    """(positions in ``paths``, (B, 3, H, W) float32 normalised) batches, preprocessed exactly as predict does.

    Files that cannot be decoded are skipped with a warning (their positions are left out).
    """
    from imagenet_cls.data.images import ImageFile
    from imagenet_cls.data.transforms import create_eval_transform
    from imagenet_cls.errors import UserError

    transform = create_eval_transform(model.data_config)
    for start in range(0, len(paths), batch_size):
        kept, images = [], []
        for position in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(transform(ImageFile(paths[position])))
            except UserError as error:
                log.warning("int8: skipped %s", error)
                continue
            kept.append(position)
        if images:
            with torch.no_grad():
                yield kept, model.normalize(torch.stack(images)).numpy()


class _Calibration:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over :func:`preprocessed_batches` (``get_next`` feeds)."""

    def __init__(self, model: Any, paths: Sequence[str], input_name: str) -> None:
        self.batches = preprocessed_batches(model, paths)
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch[1]}


def quantize_int8(
    model: Any, fp32_path: Path, int8_path: Path, calibration: Sequence[str], metadata: dict[str, str]
) -> Path:
    """Write ``int8_path``: ``fp32_path`` statically quantized (QDQ, per-channel int8 weights, uint8 activations).

    Args:
        model: The ClassificationModel ``fp32_path`` was exported from (its preprocessing feeds calibration).
        fp32_path: The float32 graph (``export_onnx``).
        int8_path: Where to write; replaced atomically.
        calibration: Image files whose activation ranges set the quantization scales.
        metadata: String properties to store in the graph (classes, preprocessing, the top-1 cost ...).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imagenet_cls.model.inference import ONNX_INPUT

    with tempfile.TemporaryDirectory(dir=int8_path.parent) as tmp:
        prepared, staged = Path(tmp) / "prepared.onnx", Path(tmp) / int8_path.name
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)  # folds BN, infers shapes
        quantize_static(
            str(prepared),
            str(staged),
            _Calibration(model, calibration, ONNX_INPUT),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        graph = onnx.load(str(staged))
        kept = {p.key: p.value for p in graph.metadata_props}
        del graph.metadata_props[:]
        for key, value in {**kept, **metadata}.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(staged))
        os.replace(staged, int8_path)
    return int8_path


def top1(run: Callable[[torch.Tensor], torch.Tensor], model: Any, samples: Sequence[tuple[str, int]]) -> float:
    """Top-1 accuracy of ``run`` (normalised batch -> logits) on ``samples`` (path, model class index)."""
    paths = [path for path, _ in samples]
    right = seen = 0
    for kept, batch in preprocessed_batches(model, paths):
        predicted = run(torch.from_numpy(batch)).argmax(1).tolist()
        right += sum(int(p == samples[i][1]) for p, i in zip(predicted, kept, strict=True))
        seen += len(kept)
    return right / max(seen, 1)


def int8_cost(
    model: Any, fp32_path: Path, int8_path: Path, held_out: Sequence[tuple[str, int]]
) -> dict[str, float | int]:
    """Top-1 of the float32 and int8 graphs on ``held_out`` (path, model class index) and the difference (points)."""
    from imagenet_cls.model.inference import OnnxRunner

    threads = torch.get_num_threads()
    fp32 = top1(OnnxRunner(fp32_path, threads), model, held_out)
    int8 = top1(OnnxRunner(int8_path, threads), model, held_out)
    return {"images": len(held_out), "top1_fp32": fp32, "top1_int8": int8, "cost_points": (fp32 - int8) * 100}


def int8_graph(pretrained: Any) -> Path | None:
    """The int8 graph of an exported folder given as ``--model.pretrained``, when it has one."""
    if not isinstance(pretrained, (str, Path)) or not Path(pretrained).is_dir():
        return None
    path = Path(pretrained) / INT8_FILE
    return path if path.is_file() else None


def calibration_split(
    data_dir: Path, split: str, model_classes: Sequence[str] | None, calibration: int, held_out: int, seed: int = 0
) -> tuple[list[str], list[tuple[str, int]]]:
    """Calibration files and disjoint held-out (path, model class index) samples of ``split`` of ``data_dir``.

    Both are drawn from one seeded shuffle of the split: the first ``calibration``, then up to ``held_out``.
    Classes the model does not have are left out.

    Raises:
        UserError: the folder or split is missing, or too small for both.
    """
    import random

    from imagenet_cls.data.layout import read_layout
    from imagenet_cls.errors import UserError

    layout = read_layout(Path(data_dir))
    index = {folder: i for i, folder in enumerate(model_classes or layout.classes)}
    samples = [
        (path, index[layout.classes[label]])
        for path, label in layout.samples(split, option="--calibration-data")
        if layout.classes[label] in index
    ]
    random.Random(seed).shuffle(samples)
    if len(samples) <= calibration:
        raise UserError(
            f"--calibration-split {split} of {data_dir} has {len(samples)} images of the model's classes: give "
            f"--calibration-images below that, leaving some for the held-out check"
        )
    return [path for path, _ in samples[:calibration]], samples[calibration : calibration + held_out]


def int8_runner(model: Any, path: Path) -> tuple[Any, str]:
    """An ONNX Runtime session over the int8 graph ``path``, once its metadata shows it holds ``model``'s weights.

    Raises:
        ValueError: the graph was quantized from other weights (or has no record of them).
    """
    from imagenet_cls.model.inference import OnnxRunner, weights_digest

    metadata = graph_metadata(path)
    if metadata.get("weights_sha256") != weights_digest(model.backbone, tuple(model.data_config["input_size"])):
        raise ValueError(f"{path} was quantized from other weights: export again with --quantize int8")
    cost = json.loads(metadata.get("int8_cost", "{}"))
    measured = f"; at export: {describe_cost(cost)}" if cost else ""
    return OnnxRunner(path, torch.get_num_threads()), f"; graph {path}{measured}"


def evaluation_predictor(model: Any) -> Any:
    """validate/test outside fit on CPU: a Predictor on the int8 graph where predict would run it, else None.

    That is with ``--model.predict_backend onnxruntime-int8``, or ``auto`` when the model comes from an exported
    folder whose int8 graph holds these weights and the CPU has VNNI or AMX. fit's validation stays PyTorch.
    """
    from imagenet_cls.model.inference import create_predictor, onnxruntime_available, weights_digest

    fn = getattr(getattr(model.trainer, "state", None), "fn", None)
    backend = model.hparams.predict_backend
    if model.device.type != "cpu" or str(getattr(fn, "value", fn)) not in ("validate", "test"):
        return None
    if backend == "auto":
        path = int8_graph(model.hparams.get("pretrained"))
        if path is None or not cpu_has_fast_int8() or not onnxruntime_available():
            return None
        digest = weights_digest(model.backbone, tuple(model.data_config["input_size"]))
        if graph_metadata(path).get("weights_sha256") != digest:
            return None
    elif backend != "onnxruntime-int8":
        return None
    predictor = create_predictor(model, backend, "32")
    return predictor if predictor.plan.int8 else None


def graph_metadata(path: Path) -> dict[str, str]:
    """The string properties of an ONNX file (read without its weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props}


def describe_cost(cost: dict[str, Any]) -> str:
    """One line: the int8 top-1 cost against float32."""
    return (
        f"int8 top-1 {cost['top1_int8']:.2%} vs float32 {cost['top1_fp32']:.2%} "
        f"({-cost['cost_points']:+.2f} points) on {cost['images']} held-out images"
    )
