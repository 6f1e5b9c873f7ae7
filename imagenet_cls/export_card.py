"""The model card of an export folder (its ``README.md``), and the run files it is read from.

The card gives the metrics of the run's evaluation report, the data, the training recipe, the preprocessing and how
to load the folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from imagenet_cls.errors import UserError

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


def summaries_of(checkpoint: Path, report: Path | None) -> dict[str, dict[str, Any]]:
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


def run_config_of(checkpoint: Path) -> dict[str, Any]:
    """The run's saved ``config.yaml`` (data folder, batch size, epochs), or ``{}``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    path = run / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}
