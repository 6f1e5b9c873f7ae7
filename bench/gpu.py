"""Issue 6, for a lent GPU: training throughput of ours vs a raw PyTorch loop (timm's settings), same GPU, run.

ResNet-50 and ViT-B/16 at 224 px, bf16 mixed precision + channels-last (and torch.compile with ``--compile``),
SGD, batches of uint8 images normalised on the GPU in both loops; plus the data pipeline's images/s per CPU core.
Prints one JSON line per measurement and a table; ``bash bench/gpu.sh`` runs it in under 5 minutes.
"""

from __future__ import annotations

import json
import sys
import time

import torch

STEPS, WARMUP = 30, 10


def _loader(batch: int):
    images = torch.randint(0, 256, (batch * 4, 3, 224, 224), dtype=torch.uint8)
    targets = torch.randint(0, 1000, (batch * 4,))
    dataset = torch.utils.data.TensorDataset(images, targets)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * (STEPS + WARMUP))
    from imagenet_cls.data.batches import collate_labeled  # the model's batch type (raw loop: the same batches)

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=sampler, pin_memory=True, drop_last=True, collate_fn=collate_labeled
    )


def raw(model_name: str, batch: int, compile: bool) -> float:
    """timm train.py's core: channels-last, bf16 autocast, SGD; images/s over the steady-state steps."""
    import timm

    model = timm.create_model(model_name, num_classes=1000).cuda().to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda").view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(1, 3, 1, 1) * 255
    start = 0.0
    for step, (images, targets, _) in enumerate(_loader(batch)):
        if step == WARMUP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        images = images.cuda(non_blocking=True)
        images = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images), targets.cuda(non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return STEPS * batch / (time.perf_counter() - start)


def ours(model_name: str, batch: int, compile: bool) -> float:
    """Lightning Trainer + ClassificationModel with the same settings; images/s over the same steps."""
    from lightning.pytorch import Callback, Trainer

    from imagenet_cls.model.module import ClassificationModel

    class Clock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch_data, batch_idx):
            if batch_idx == WARMUP:
                torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            torch.cuda.synchronize()
            self.rate = STEPS * batch / (time.perf_counter() - self.start)

    clock = Clock()
    model = ClassificationModel(model_name, num_classes=1000, channels_last=True, compile=compile, lr=0.1)
    trainer = Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[clock], num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, train_dataloaders=_loader(batch))
    return clock.rate


def pipeline_per_core() -> dict[str, float]:
    """Our eval/train preprocessing, 1 thread, on synthetic photo-like 500x375 JPEGs."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from bench.pipeline import _pipelines, _rates

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    files = []
    for i in range(200):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path, quality=90)
        files.append(str(path))
    torch.set_num_threads(1)
    return _rates(files, _pipelines())


def main() -> int:
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    use_compile = "--compile" in sys.argv
    rows = []
    for model_name, batch in (("resnet50", 128), ("vit_base_patch16_224", 64)):
        for compile in (False, True) if use_compile else (False,):
            theirs = raw(model_name, batch, compile)
            mine = ours(model_name, batch, compile)
            row = {"model": model_name, "batch": batch, "compile": compile, "ours_img_s": round(mine, 1),
                   "raw_img_s": round(theirs, 1), "ratio": round(mine / theirs, 3)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    rates = pipeline_per_core()
    print(json.dumps({"pipeline_img_s_per_core": {k: round(v, 1) for k, v in rates.items()}}), flush=True)
    print(f"\n{torch.cuda.get_device_name()}, bf16-mixed, channels-last")
    for row in rows:
        print(f"{row['model']:24} compile={row['compile']!s:5} ours {row['ours_img_s']:8.1f} img/s  "
              f"raw {row['raw_img_s']:8.1f} img/s  ratio {row['ratio']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
