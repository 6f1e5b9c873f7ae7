"""Issue 6: peak memory of fit per image size and batch size, and no growth from epoch to epoch."""

from __future__ import annotations

import json

from bench.common import PEAK_RSS_MB, WORK, Result, run_python

FIT = (
    PEAK_RSS_MB
    + """
import json
from lightning.pytorch import Callback
from imagenet_cls.cli import ImageNetCLI

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

class Epochs(Callback):
    rss = []
    def on_train_epoch_end(self, trainer, pl_module):
        self.rss.append(rss_mb())

cli = ImageNetCLI(args={args!r}, run=False)
cli.trainer.callbacks.append(Epochs())
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
print(json.dumps({{"peak_mb": peak_rss_mb(), "epochs": Epochs.rss, "steps": cli.trainer.num_training_batches}}))
"""
)


def synthetic_folders() -> str:
    """A synthetic 10-class folder of 12 256x192 JPEGs each (made once per run)."""
    import numpy as np
    from PIL import Image

    root = WORK / "memory-data"
    if not root.exists():
        rng = np.random.default_rng(0)
        for c in range(10):
            (root / f"class{c}").mkdir(parents=True)
            for i in range(12):
                pixels = rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg")
    return str(root)


def fit_memory(image_size: int, batch_size: int, epochs: int) -> dict:
    args = [  # run=False: no subcommand, the trainer is built and fit is called below
        "--model.model_name", "resnet18",
        "--model.image_size", str(image_size),
        "--data.data_dir", synthetic_folders(),
        "--data.batch_size", str(batch_size),
        "--data.num_workers", "0",
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(WORK / f"memory-{image_size}-{batch_size}"),
    ]  # fmt: skip
    return json.loads(run_python(FIT.format(args=args)).strip().splitlines()[-1])


def run() -> list[Result]:
    results = []
    small = fit_memory(64, 16, 2)
    for size, batch in ((128, 64), (128, 16)):
        epochs = 4 if batch == 16 else 2  # batch 16: several optimizer steps per epoch
        measured = fit_memory(size, batch, epochs)
        results.append(
            Result(
                f"fit peak RSS, resnet18 {size}px batch {batch}",
                measured["peak_mb"],
                small["peak_mb"],
                "MB",
                higher_is_better=False,
                note="baseline: 64px batch 16",
            )
        )
        if epochs > 2:
            rss = measured["epochs"]
            results.append(
                Result(
                    f"fit RSS after epoch {len(rss)} vs epoch 2, {size}px batch {batch}",
                    rss[-1],
                    rss[1],
                    "MB",
                    higher_is_better=False,
                    note=f"{measured['steps']} steps per epoch; per epoch: {', '.join(f'{r:.0f}' for r in rss)} MB "
                    "(target: no growth)",
                )
            )
    return results
