"""Export a checkpoint's weights as ``.safetensors`` with its classes and preprocessing in JSON beside it.

``python -m imagenet_cls.export CKPT OUT_DIR`` writes ``model.safetensors`` (the network's state dict: tensors
only, nothing that runs code), ``model.json`` (model name, classes, class names, eval preprocessing) and
``predict.yaml``, a config that predicts with them::

    python cli.py predict --config OUT_DIR/predict.yaml --data.mode predict --data.predict_path photos/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from imagenet_cls.errors import UserError, report_user_error

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


def export(checkpoint: Path, out_dir: Path) -> Path:
    """Write the three files into ``out_dir``; returns the ``.safetensors`` path."""
    from safetensors.torch import save_file

    from imagenet_cls.model.module import ClassificationModel
    from imagenet_cls.runs.checkpoints import load_checkpoint

    if not Path(checkpoint).is_file():
        raise UserError(f"CKPT {checkpoint} is not a file: give a .ckpt written by fit")
    saved = load_checkpoint(Path(checkpoint))
    hparams = {k: v for k, v in saved.get("hyper_parameters", {}).items() if k in KEPT_HPARAMS}
    if "model_name" not in hparams:
        raise UserError(f"CKPT {checkpoint} has no model hyper-parameters: was it written by this tool's fit?")
    model = ClassificationModel(**hparams)
    model.load_state_dict(saved["state_dict"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(weights))
    description = {**_plain(hparams), "data_config": _plain(model.data_config), "source": str(checkpoint)}
    (out_dir / "model.json").write_text(json.dumps(description, indent=1) + "\n")
    model_section = {**_plain(hparams), "pretrained": str(weights.resolve())}
    (out_dir / "predict.yaml").write_text(yaml.safe_dump({"model": model_section, "trainer": {"logger": False}}))
    return weights


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m imagenet_cls.export``."""
    parser = argparse.ArgumentParser(prog="python -m imagenet_cls.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by fit")
    parser.add_argument("out_dir", type=Path, help="folder for model.safetensors, model.json and predict.yaml")
    args = parser.parse_args(argv)
    try:
        weights = export(args.checkpoint, args.out_dir)
    except UserError as error:
        return report_user_error(error)
    print(f"exported {weights}, {args.out_dir / 'model.json'} and {args.out_dir / 'predict.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
