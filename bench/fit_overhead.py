"""Issue 6: our training step (``cli.py fit`` as users run it) against a raw PyTorch loop, same model and batches.

Both run the same optimizer (SGD + Nesterov, no weight decay on norm/bias), the same warmup-cosine schedule
stepped per batch, uint8 batches normalised in the step, and the same number of steps after the same warm-up;
ours also updates and logs its accuracy metric, as it does in real use. Timed: the steady-state steps only.
"""

from __future__ import annotations

import time

from bench.common import WORK, Result, interleaved

STEPS, WARMUP, BATCH, SIZE = 12, 3, 32, 64


def _batches():
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, ((STEPS + WARMUP) * BATCH, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 10, ((STEPS + WARMUP) * BATCH,), generator=generator)
    from imagenet_cls.data.batches import collate_labeled  # the model's batch type (raw loop: the same batches)

    dataset = torch.utils.data.TensorDataset(images, targets)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, collate_fn=collate_labeled)


def _model():
    import torch

    from imagenet_cls.model.module import ClassificationModel

    torch.manual_seed(0)
    return ClassificationModel("resnet18", num_classes=10, image_size=SIZE, lr=0.05, warmup_epochs=0.2)


def ours(run: int = 0) -> float:
    """Seconds for the steady-state steps of ``cli.py fit`` with its default callbacks (checkpointing, early
    stopping, LR monitor, progress bar, evaluation report, resume state) and its default W&B logger (offline)."""
    import os

    from lightning.pytorch import Callback

    from bench.memory import synthetic_folders
    from imagenet_cls.cli import ImageNetCLI

    class StepClock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == WARMUP:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == WARMUP + STEPS - 1:
                self.seconds = time.perf_counter() - self.start

    clock = StepClock()

    class TimedCLI(ImageNetCLI):
        """Our CLI, training on the same in-memory batches as the raw loop (validating on the synthetic folder)."""

        def after_instantiate_classes(self) -> None:
            super().after_instantiate_classes()
            self.trainer.callbacks.append(clock)

        def fit(self, model, datamodule, **kwargs) -> None:
            datamodule.train_dataloader = _batches
            self.trainer.fit(model, datamodule=datamodule)

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    args = ["fit", "--model.model_name", "resnet18", "--model.image_size", str(SIZE), "--model.lr", "0.05"]
    args += ["--model.warmup_epochs", "0.2", "--data.data_dir", synthetic_folders(), "--trainer.accelerator", "cpu"]
    args += ["--data.batch_size", str(BATCH), "--data.num_workers", "0"]
    args += ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(WORK / f"fit-overhead-{run}")]
    TimedCLI(args=[*args, "--test_after_fit", "false"])
    import wandb

    wandb.finish()
    return clock.seconds


def raw() -> float:
    """Seconds for the same steps in a plain loop: normalise, forward, loss, backward, step, schedule."""
    import torch.nn.functional as F

    model = _model()
    fake = _FakeTrainer()  # the module keeps only a weak reference
    model.trainer = fake
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    network = model.backbone.train()
    start = 0.0
    for index, (images, targets, _) in enumerate(_batches()):
        if index == WARMUP:
            start = time.perf_counter()
        logits = network(model.normalize(images))
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


class _FakeTrainer:
    """What ``configure_optimizers`` reads from a trainer: the number of steps and epochs."""

    estimated_stepping_batches = STEPS + WARMUP
    max_epochs = 1
    datamodule = None


def run() -> list[Result]:
    import torch

    runs = iter(range(100))
    seconds = interleaved({"ours": lambda: ours(next(runs)), "raw": raw})
    return [
        Result(
            "fit step time (ours: cli.py fit, default callbacks + W&B offline, vs raw PyTorch loop)",
            seconds["ours"] / STEPS * 1000,
            seconds["raw"] / STEPS * 1000,
            "ms/step",
            higher_is_better=False,
            note=f"resnet18 {SIZE}px batch {BATCH}, {STEPS} steps after {WARMUP}, median of 3 interleaved, "
            "target <= 1.03",
            precision="fp32 both",
            threads=torch.get_num_threads(),
        )
    ]
