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
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

from imagenet_cls.errors import UserError, report_user_error
from imagenet_cls.export_int8 import INT8_FILE, Calibration, int8_card, write_int8
from imagenet_cls.model.inference import plain

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
# Hyper-parameters shown in the model card's configuration table (the training recipe).
RECIPE_HPARAMS = (
    "pretrained",
    "optimizer",
    "lr",
    "lr_base_batch_size",
    "weight_decay",
    "scheduler",
    "warmup_epochs",
    "loss",
    "label_smoothing",
    "drop_rate",
    "drop_path_rate",
    "train_image_size",
    "mixup_alpha",
    "cutmix_alpha",
    "random_erase_prob",
    "ema_decay",
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
    from safetensors.torch import save_file

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if quantize and not onnx:
        raise UserError("--quantize int8 quantizes model.onnx: drop --no-onnx")
    model, saved = load_model(checkpoint)
    hparams = dict(model.hparams)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.backbone.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if hparams["model_name"].startswith("tv:"):
        log.info("%s is a torchvision model: timm cannot load it, config.json is left out", hparams["model_name"])
    else:
        write_timm_config(model, out_dir / "config.json")
    kept = {k: plain(hparams[k]) for k in KEPT_HPARAMS if k in hparams}
    predict = {"model": {**kept, "pretrained": str(out_dir.resolve())}, "data": {"mode": "predict"}}
    (out_dir / "predict.yaml").write_text(yaml.safe_dump({**predict, "trainer": {"logger": False}}, sort_keys=False))
    onnx_check = int8 = None
    if quantize is None:
        (out_dir / INT8_FILE).unlink(missing_ok=True)  # an earlier export's, of other weights
    if onnx:
        onnx_check = write_onnx(model, out_dir / "model.onnx")
    summaries = _summaries(checkpoint, report)
    run_config = _run_config(checkpoint)
    if quantize == "int8":
        int8 = write_int8(model, out_dir, calibration or Calibration(), (run_config.get("data") or {}).get("data_dir"))
    card = model_card(hparams, model.data_config, checkpoint, saved, summaries, run_config, out_dir, onnx_check)
    if int8 is not None:
        card += int8_card(int8, out_dir)
    (out_dir / "README.md").write_text(card)
    return out_dir


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


def model_card(
    hparams: dict[str, Any],
    data_config: dict[str, Any],
    checkpoint: Path,
    saved: dict[str, Any],
    summaries: dict[str, dict[str, Any]],
    run_config: dict[str, Any],
    out_dir: Path,
    onnx_difference: float | None,
) -> str:
    """The ``README.md`` of an exported folder (Hugging Face model-card front matter, then Markdown)."""
    # Long on purpose: a template, the card's sections top to bottom.
    name, classes = hparams["model_name"], list(hparams.get("classes") or [])
    names = list(hparams.get("class_names") or classes)
    timm_model = not name.startswith("tv:")
    lines = ["---", "tags:", "- image-classification", "- imagenet-cls"]
    lines += ["- timm", "library_name: timm"] if timm_model else []
    lines += ["---", "", f"# {name}, {len(classes) or hparams['num_classes']} classes", ""]
    lines += [
        f"Exported by `python -m imagenet_cls.export` from the checkpoint `{checkpoint.name}` "
        f"(epoch {saved.get('epoch', '?')}, step {saved.get('global_step', '?')}).",
        "",
        "## Metrics",
        "",
    ]
    if summaries:
        lines += ["| split | images | top-1 | top-5 | epoch |", "| --- | --- | --- | --- | --- |"]
        for split, summary in summaries.items():
            lines.append(
                f"| {split} | {summary.get('images')} | {summary.get('top1', 0) * 100:.2f}% | "
                f"{summary.get('top5', 0) * 100:.2f}% | {summary.get('epoch')} |"
            )
        lines.append("")
        lines.append("From the run's evaluation report (`report/<split>/summary.json`).")
    else:
        lines.append("No evaluation report was found beside the checkpoint: evaluate with `cli.py test`.")
    data = run_config.get("data") or {}
    lines += ["", "## Data", ""]
    if data.get("data_dir"):
        lines.append(f"Trained on `{data['data_dir']}` (batch size {data.get('batch_size', '?')}).")
    preview = ", ".join(f"`{c}` {n}" if n != c else f"`{c}`" for c, n in list(zip(classes, names))[:20])
    more = f", ... ({len(classes)} in all)" if len(classes) > 20 else ""
    lines.append(f"Classes in output order: {preview}{more}." if classes else "Class order: the output index.")
    lines += ["", "## Training configuration", "", "| option | value |", "| --- | --- |"]
    trainer = run_config.get("trainer") or {}
    recipe = {f"model.{k}": hparams[k] for k in RECIPE_HPARAMS if hparams.get(k) not in (None, False, 0, 0.0)}
    recipe.update({f"trainer.{k}": trainer[k] for k in ("max_epochs", "precision") if trainer.get(k) is not None})
    lines += [f"| `{key}` | `{value}` |" for key, value in recipe.items()]
    size = data_config["input_size"]
    lines += [
        "",
        "## Preprocessing",
        "",
        f"RGB, resize the shorter side to {math.floor(size[-1] / data_config['crop_pct'])} (crop_pct "
        f"{data_config['crop_pct']}) with "
        f"{data_config['interpolation']} interpolation, centre crop {size[-2]}x{size[-1]}, scale to 0-1, then "
        f"normalise with mean {tuple(data_config['mean'])} and std {tuple(data_config['std'])}.",
        "",
        "## How to load it",
        "",
    ]
    if timm_model:
        lines += [
            "timm (offline, from this folder):",
            "",
            "```python",
            "import timm",
            f'model = timm.create_model("local-dir:{out_dir.name}", pretrained=True).eval()',
            "config = timm.data.resolve_data_config(model=model)",
            "transform = timm.data.create_transform(**config)",
            "```",
            "",
        ]
    if onnx_difference is not None:
        lines += [
            f"ONNX Runtime (`model.onnx`, input `input` (batch, 3, {size[-2]}, {size[-1]}) float32 normalised as"
            f" above, output `logits`; classes and preprocessing in the file's metadata; largest difference from"
            f" PyTorch at export {onnx_difference:.1e} of the logit range):",
            "",
            "```python",
            "import onnxruntime",
            f'session = onnxruntime.InferenceSession("{out_dir.name}/model.onnx")',
            'logits = session.run(["logits"], {"input": batch})[0]',
            "```",
            "",
        ]
    lines += [
        "imagenet-cls (annotated images and a CSV):",
        "",
        "```bash",
        f"python cli.py predict --config {out_dir.name}/predict.yaml --model.pretrained {out_dir.name} "
        "--data.predict_path photos/",
        "```",
        "",
    ]
    return "\n".join(lines)


def _summaries(checkpoint: Path, report: Path | None) -> dict[str, dict[str, Any]]:
    """``{split: summary}`` from ``report`` or the checkpoint run's ``report/*/summary.json`` (test first)."""
    if report is not None:
        if not report.is_file():
            raise UserError(f"--report {report} is not a file: give an evaluation report's summary.json")
        paths = [report]
    else:
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        paths = sorted((run / "report").glob("*/summary.json"), key=lambda p: p.parent.name != "test")
    found = {}
    for path in paths:
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found[str(summary.get("split", path.parent.name))] = summary
    return found


def _run_config(checkpoint: Path) -> dict[str, Any]:
    """The run's saved ``config.yaml`` (data folder, batch size, epochs), or ``{}``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    path = run / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m imagenet_cls.export``."""
    parser = argparse.ArgumentParser(prog="python -m imagenet_cls.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by fit")
    parser.add_argument("out_dir", type=Path, help="the folder to write")
    parser.add_argument("--report", type=Path, default=None, help="the summary.json whose metrics the card shows")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="leave model.onnx out")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="also write model_int8.onnx")
    parser.add_argument(
        "--calibration-data", type=Path, default=None, help="int8: the data folder (default: the run's data_dir)"
    )
    parser.add_argument("--calibration-split", default="train", help="int8: the split calibrated and checked on")
    parser.add_argument("--calibration-images", type=int, default=256, help="int8: images that set the scales")
    parser.add_argument("--held-out-images", type=int, default=256, help="int8: other images the cost is measured on")
    args = parser.parse_args(argv)
    ours = logging.getLogger("imagenet_cls")
    ours.setLevel(logging.INFO)
    ours.addHandler(logging.StreamHandler())
    try:
        calibration = Calibration(
            args.calibration_data, args.calibration_split, args.calibration_images, args.held_out_images
        )
        out = export(args.checkpoint, args.out_dir, args.report, args.onnx, args.quantize, calibration)
    except UserError as error:
        return report_user_error(error)
    print(f"exported {args.checkpoint} to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
