"""The embedded demo: scikit-learn's handwritten digits (real data that ships with a dependency).

``python -m imagenet_cls.demo export dataset/digits`` writes ``<digit>/<n>.png`` (8x8 scans upscaled to 32x32)
and a ``folder_num_class_map.txt``; an existing complete export is left as it is.
``python -m imagenet_cls.demo run`` exports, then fits ``config/demo.yaml`` (test after fit included) and
predicts the test split with the best checkpoint, through the same CLI a user runs, and says where it all is.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from imagenet_cls.data.classes import write_class_map

log = logging.getLogger(__name__)

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def export_digits(destination: Path, size: int = 32) -> int:
    """Write the 1,797 digit images into ``destination``; returns the number of images there."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    destination = Path(destination)
    done = destination / ".complete"
    if done.is_file():
        return len(digits.images)
    folders = [str(d) for d in range(10)]
    for folder in folders:
        (destination / folder).mkdir(parents=True, exist_ok=True)
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        # 0..16 ink levels -> dark digit on white, like a scan.
        gray = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BICUBIC)
        image.save(destination / str(label) / f"{index:04d}.png")
    write_class_map(destination / "folder_num_class_map.txt", folders, dict(zip(folders, DIGIT_NAMES)))
    done.write_text("ok\n")
    return len(digits.images)


def run_demo(data_dir: Path, config: Path, root_dir: Path) -> dict[str, float]:
    """Export, fit (+ test) and predict; returns the test accuracy and the predict accuracy."""
    # Long on purpose: the demo is a script, fit, test and predict as a user would type them.
    import pandas as pd

    from imagenet_cls.cli import ImageNetCLI, main
    from imagenet_cls.cli.app import configure_logging
    from imagenet_cls.data.layout import read_layout

    configure_logging()  # as main() does: our log lines shown, library noise filtered
    export_digits(data_dir)
    sys.argv = sys.argv[:1]  # the CLI below gets its arguments explicitly
    started = time.perf_counter()
    fit = ImageNetCLI(
        args=[
            "fit",
            "--config",
            str(config),
            "--data.data_dir",
            str(data_dir),
            "--trainer.default_root_dir",
            str(root_dir),
        ]
    )
    test_acc = float(fit.trainer.callback_metrics["test_acc"])
    best = fit.trainer.checkpoint_callback.best_model_path
    layout = read_layout(data_dir, fit.datamodule.split, fit.datamodule.split_seed)
    test_list = Path(root_dir) / "demo_test_images.txt"
    test_list.write_text("".join(f"{Path(path).resolve()}\n" for path, _ in layout.samples("test")))
    output_dir = Path(root_dir) / "demo_predictions"
    code = main(
        [
            "predict",
            "--ckpt_path",
            best,
            "--data.mode",
            "predict",
            "--data.predict_path",
            str(test_list),
            "--writer.output_dir",
            str(output_dir),
        ]
    )
    if code:
        raise SystemExit(code)
    rows = pd.read_csv(output_dir / "predictions.csv", dtype=str)
    predict_acc = float((rows["pred_folder"] == rows["path"].map(lambda p: Path(p).parent.name)).mean())
    print(
        f"\ndemo: test_acc={test_acc:.4f}, predict accuracy on the {len(rows)} test images={predict_acc:.4f}, "
        f"{time.perf_counter() - started:.0f} s for fit + test + predict\n"
        f"  best checkpoint : {best}\n"
        f"  run folder      : {Path(best).parent.parent} (config.yaml, checkpoints/)\n"
        f"  evaluation      : {Path(best).parent.parent / 'report'} (per-class CSV, confusion matrix, mistakes)\n"
        f"  W&B (offline)   : {Path(root_dir) / 'wandb'}\n"
        f"  predictions     : {output_dir / 'predictions.csv'}\n"
        f"  annotated images: {output_dir / 'images'}"
    )
    return {"test_acc": test_acc, "predict_acc": predict_acc}


def main() -> None:
    """Command line: ``python -m imagenet_cls.demo {export DEST | run}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the digits as class folders")
    export.add_argument("destination", type=Path, help="folder to write (e.g. dataset/digits)")
    run = commands.add_parser("run", help="export, fit, test and predict")
    run.add_argument("--data_dir", type=Path, default=Path("dataset/digits"))
    run.add_argument("--config", type=Path, default=Path("config/demo.yaml"))
    run.add_argument("--root_dir", type=Path, default=Path("runs/demo"))
    args = parser.parse_args()
    if args.command == "export":
        print(f"{export_digits(args.destination)} digit images in {args.destination}")
    else:
        from imagenet_cls.errors import UserError, report_user_error

        try:
            run_demo(args.data_dir, args.config, args.root_dir)
        except UserError as error:  # as the CLI's main: one line, no traceback
            raise SystemExit(report_user_error(error)) from None


if __name__ == "__main__":
    main()
