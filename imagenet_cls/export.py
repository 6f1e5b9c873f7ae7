"""Export a checkpoint as a folder that timm, ONNX Runtime and this tool load, ready for a model hub.

``python -m imagenet_cls.export CKPT OUT_DIR`` writes into ``OUT_DIR``:

- ``config.json``: timm's hub format (``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg`` with
  input size, interpolation, crop, mean and std), so ``timm.create_model("local-dir:OUT_DIR", pretrained=True)``
  rebuilds the network with these weights (timm architectures; ``tv:`` models have no timm loader);
- ``model.safetensors``: the network's state dict (tensors only, nothing that runs code);
- ``model.onnx``: the same network for ONNX Runtime, batch size dynamic, classes and preprocessing in its
  metadata, checked against PyTorch when written;
- ``model_int8.onnx`` (with ``--quantize int8``): ONNX Runtime static quantization (QDQ, per-channel int8
  weights), calibrated on ``--calibration-images`` images of ``--calibration-split`` and checked against
  ``model.onnx`` on other images of that split (top-1 cost printed, in the model card and in the file's metadata);
- ``README.md``: a model card (metrics from the run's evaluation report, data, configuration, preprocessing,
  how to load it);
- ``predict.yaml``: ``python cli.py predict --config OUT_DIR/predict.yaml --data.predict_path photos/``
  (after moving the folder, add ``--model.pretrained NEW_DIR``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from imagenet_cls.errors import UserError, ignore_file_size_signal, report_disk_full, report_user_error
from imagenet_cls.export_card import model_card, run_config_of, summaries_of
from imagenet_cls.export_int8 import INT8_FILE, Calibration, int8_card, write_int8
from imagenet_cls.logs import configure_logging
from imagenet_cls.model.inference import plain
from imagenet_cls.runs.checkpoints import find_checkpoint

log = logging.getLogger(__name__)

KEPT_HPARAMS = (
    "model_name",
    "num_classes",
    "classes",
    "class_names",
    "image_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
)


def export(
    checkpoint: Path,
    out_dir: Path,
    report: Path | None = None,
    onnx: bool = True,
    quantize: Literal["int8"] | None = None,
    calibration: Calibration | None = None,
) -> Path:
    """Write the exported folder for ``checkpoint`` into ``out_dir``; returns ``out_dir``.

    Args:
        checkpoint: A ``.ckpt`` written by ``fit``.
        out_dir: The folder to write (created; files of an earlier export are replaced).
        report: The evaluation report's ``summary.json`` whose metrics the model card shows; default: the
            newest ``report/*/summary.json`` of the checkpoint's run folder, when there is one.
        onnx: Also write ``model.onnx`` (needs ``onnx``, ``onnxscript`` and ``onnxruntime`` for the check).
        quantize: ``int8``: also write ``model_int8.onnx`` (needs ``onnx``).
        calibration: The images int8 is calibrated and checked on; default: 256 and 256 of the run's train split.

    Raises:
        UserError: the checkpoint is missing or was not written by this tool, or the ONNX graph disagrees with
            PyTorch.
    """
    from safetensors.torch import save

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if quantize and not onnx:
        raise UserError("--quantize int8 quantizes model.onnx: drop --no-onnx")
    model, saved = load_model(checkpoint)
    hparams = dict(model.hparams)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.backbone.state_dict().items()}
    weights = save(state, metadata={"format": "pt"})  # bytes: a write error is an OSError (a full disk: one line)
    _atomic(out_dir / "model.safetensors", lambda path: path.write_bytes(weights))
    if hparams["model_name"].startswith("tv:"):
        log.info("%s is a torchvision model: timm cannot load it, config.json is left out", hparams["model_name"])
    else:
        _atomic(out_dir / "config.json", lambda path: write_timm_config(model, path))
    kept = {k: plain(hparams[k]) for k in KEPT_HPARAMS if k in hparams}
    predict = {"model": {**kept, "pretrained": str(out_dir.resolve())}, "data": {"mode": "predict"}}
    predict_yaml = yaml.safe_dump({**predict, "trainer": {"logger": False}}, sort_keys=False)
    _atomic(out_dir / "predict.yaml", lambda path: path.write_text(predict_yaml))
    onnx_check = int8 = None
    if quantize is None:
        (out_dir / INT8_FILE).unlink(missing_ok=True)  # an earlier export's, of other weights
    if onnx:
        onnx_check = _atomic(out_dir / "model.onnx", lambda path: write_onnx(model, path))
    summaries = summaries_of(checkpoint, report)
    run_config = run_config_of(checkpoint)
    if quantize == "int8":
        int8 = write_int8(model, out_dir, calibration or Calibration(), (run_config.get("data") or {}).get("data_dir"))
    card = model_card(hparams, model.data_config, checkpoint, saved, summaries, run_config, out_dir, onnx_check)
    if int8 is not None:
        card += int8_card(int8, out_dir)
    _atomic(out_dir / "README.md", lambda path: path.write_text(card))
    return out_dir


def _atomic(path: Path, write: Callable[[Path], Any]) -> Any:
    """``write(temporary path)``, then rename it to ``path``: a full disk never leaves a half-written file there."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        result = write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return result


def load_model(checkpoint: Path) -> tuple[Any, dict[str, Any]]:
    """The ClassificationModel of ``checkpoint`` in eval mode (CPU, float32) and the loaded checkpoint dict."""
    from imagenet_cls.model.module import ClassificationModel
    from imagenet_cls.runs.checkpoints import load_checkpoint

    if not checkpoint.is_file():
        raise UserError(f"CKPT {checkpoint} is not a file: give a .ckpt written by fit")
    saved = load_checkpoint(checkpoint)
    hparams = dict(saved.get("hyper_parameters", {}))
    if "model_name" not in hparams:
        raise UserError(f"CKPT {checkpoint} has no model hyper-parameters: was it written by this tool's fit?")
    hparams.pop("_instantiator", None)
    hparams.pop("_class_path", None)
    hparams.update(pretrained=False, compile=False)  # weights come from the checkpoint; export the eager network
    model = ClassificationModel(**hparams)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def write_timm_config(model: Any, path: Path) -> None:
    """Write ``config.json`` with timm's own writer (``save_config_for_hf``) with our classes and eval preprocessing."""
    from timm.models._hub import save_config_for_hf

    hp, data = model.hparams, model.data_config
    classes = list(hp.classes or [str(i) for i in range(hp.num_classes)])
    names = list(hp.class_names or [])
    model_config = {"label_names": classes}
    if len(names) == len(classes):
        model_config["label_descriptions"] = dict(zip(classes, names))
    data_config = {
        "input_size": tuple(data["input_size"]),
        "interpolation": data["interpolation"],
        "crop_pct": data["crop_pct"],
        "crop_mode": data.get("crop_mode", "center"),
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
    }
    save_config_for_hf(model.backbone, str(path), model_config=model_config, data_config=data_config)


def write_onnx(model: Any, path: Path) -> float:
    """``model.onnx`` with the classes and preprocessing in its metadata; returns its difference from PyTorch."""
    from imagenet_cls.model.inference import OnnxRunner, check_onnx, export_onnx, onnx_metadata

    input_size = tuple(model.data_config["input_size"])
    export_onnx(model.backbone, path, input_size, onnx_metadata(dict(model.hparams), model.data_config))
    try:
        return check_onnx(OnnxRunner(path, threads=1), model.backbone, input_size)
    except ValueError as error:
        path.unlink()
        raise UserError(f"{path} was not kept: {error}") from None


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m imagenet_cls.export``."""
    parser = argparse.ArgumentParser(prog="python -m imagenet_cls.export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", type=Path, help="a .ckpt written by fit, or best / last: the newest one under --root"
    )
    parser.add_argument("out_dir", type=Path, help="the folder to write")
    parser.add_argument("--report", type=Path, default=None, help="the summary.json whose metrics the card shows")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="leave model.onnx out")
    parser.add_argument("--root", type=Path, default=Path("."), help="where best / last are looked for (fit's root)")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="also write model_int8.onnx")
    parser.add_argument(
        "--calibration-data", type=Path, default=None, help="int8: the data folder (default: the run's data_dir)"
    )
    parser.add_argument("--calibration-split", default="train", help="int8: the split calibrated and checked on")
    parser.add_argument("--calibration-images", type=int, default=256, help="int8: images that set the scales")
    parser.add_argument("--held-out-images", type=int, default=256, help="int8: other images the cost is measured on")
    args = parser.parse_args(argv)
    configure_logging()  # once per process: a handler per call printed every line again
    ignore_file_size_signal()
    try:
        if str(args.checkpoint) in ("best", "last"):
            args.checkpoint = find_checkpoint(str(args.checkpoint), args.root)
        calibration = Calibration(
            args.calibration_data, args.calibration_split, args.calibration_images, args.held_out_images
        )
        out = export(args.checkpoint, args.out_dir, args.report, args.onnx, args.quantize, calibration)
    except UserError as error:
        return report_user_error(error)
    except OSError as error:
        return report_disk_full(error)
    print(f"exported {args.checkpoint} to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
