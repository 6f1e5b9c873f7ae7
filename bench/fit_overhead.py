"""Issue 6: our training step (Lightning + ClassificationModel) against a raw PyTorch loop, same model and batches.

Both run the same optimizer (SGD + Nesterov, no weight decay on norm/bias), the same warmup-cosine schedule
stepped per batch, uint8 batches normalised in the step, and the same number of steps after the same warm-up;
ours also updates and logs its accuracy metric, as it does in real use. Timed: the steady-state steps only.
"""

from __future__ import annotations

import time

from bench.common import Result

STEPS, WARMUP, BATCH, SIZE = 20, 5, 32, 64


def _batches():
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, ((STEPS + WARMUP) * BATCH, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 10, ((STEPS + WARMUP) * BATCH,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=BATCH)


def _model():
    import torch

    from imagenet_cls.model.module import ClassificationModel

    torch.manual_seed(0)
    return ClassificationModel("resnet18", num_classes=10, image_size=SIZE, lr=0.05, warmup_epochs=0.2)


def ours() -> float:
    """Seconds for the steady-state steps of ``Trainer.fit``."""
    from lightning.pytorch import Callback, Trainer

    class StepClock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == WARMUP:
                self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.start

    clock = StepClock()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        num_sanity_val_steps=0,
    )
    trainer.fit(_model(), train_dataloaders=_batches())
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
    for index, (images, targets) in enumerate(_batches()):
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
    times = {"ours": [], "raw": []}
    for _ in range(3):  # interleaved, best of three (two shared cores: single runs vary by several percent)
        times["ours"].append(ours())
        times["raw"].append(raw())
    best_ours, best_raw = min(times["ours"]), min(times["raw"])
    return [
        Result(
            "fit step time (ours vs raw PyTorch loop)",
            best_ours / STEPS * 1000,
            best_raw / STEPS * 1000,
            "ms/step",
            higher_is_better=False,
            note=f"resnet18 {SIZE}px batch {BATCH}, {STEPS} steps, target <= 1.03",
        )
    ]
