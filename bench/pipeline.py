"""Issue 6: eval and train preprocessing per core against timm's and torchvision's, on the real sample images.

Each pipeline runs in one thread over the same files (read from disk each time, as a DataLoader worker does),
interleaved in chunks of 50 images so that other load on the machine affects them alike.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Result, sample_dir

SIZE = 224
CROP_PCT = 0.875


def _rates(files: list[str], pipelines: dict, chunk: int = 50) -> dict[str, float]:
    """Images per second of each pipeline, run interleaved chunk by chunk so load changes hit all alike."""
    seconds = dict.fromkeys(pipelines, 0.0)
    for fn in pipelines.values():  # warm-up: imports, first allocations
        fn(files[0])
    for start in range(0, len(files), chunk):
        for name, fn in pipelines.items():
            began = time.perf_counter()
            for path in files[start : start + chunk]:
                fn(path)
            seconds[name] += time.perf_counter() - began
    return {name: len(files) / spent for name, spent in seconds.items()}


def _pipelines():
    import simplejpeg
    import torch
    from PIL import Image
    from timm.data import create_transform
    from torchvision import transforms as T

    from imagenet_cls.data.images import ImageFile
    from imagenet_cls.data.transforms import create_eval_transform, create_train_transform

    config = {"input_size": (3, SIZE, SIZE), "interpolation": "bicubic", "crop_pct": CROP_PCT}
    # timm's eval path with its prefetching loader: PIL resize + crop to uint8, normalised later in the loader
    timm_eval = create_transform(**config, is_training=False, use_prefetcher=True)
    our_eval = create_eval_transform(config)
    # torchvision's reference recipe (references/classification/presets.py, ClassificationPresetTrain defaults)
    tv_train = T.Compose(
        [
            T.RandomResizedCrop(SIZE, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.RandomHorizontalFlip(0.5),
            T.PILToTensor(),
            T.ConvertImageDtype(torch.float),
            T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ]
    )
    our_train = create_train_transform({"input_size": (3, SIZE, SIZE), "interpolation": "bilinear"})

    def pil_rgb(path):
        with Image.open(path) as image:
            return image.convert("RGB")

    return {
        "decode only (libjpeg-turbo, full size)": lambda p: simplejpeg.decode_jpeg(Path(p).read_bytes(), "RGB"),
        "timm eval transform": lambda p: timm_eval(pil_rgb(p)),
        "ours eval": lambda p: our_eval(ImageFile(p)),
        "torchvision reference train": lambda p: tv_train(pil_rgb(p)),
        "ours train": lambda p: our_train(ImageFile(p)),
    }


def run() -> list[Result]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    files = [str(p) for p in sorted(sample_dir().glob("*.JPEG"))][:500]  # 500 keeps make bench under 10 minutes
    try:
        rates = _rates(files, _pipelines())
    finally:
        torch.set_num_threads(threads)  # later benchmarks in this process use every core again
    note = f"{len(files)} sample images, 1 thread, {SIZE}px"
    return [
        Result(
            "eval preprocessing (ours vs timm eval)",
            rates["ours eval"],
            rates["timm eval transform"],
            "img/s",
            note=f"{note}, target >= 2.0",
        ),
        Result(
            "eval preprocessing (ours vs decode only)",
            rates["ours eval"],
            rates["decode only (libjpeg-turbo, full size)"],
            "img/s",
            note="target >= 0.7",
        ),
        Result(
            "train preprocessing (ours vs torchvision ref)",
            rates["ours train"],
            rates["torchvision reference train"],
            "img/s",
            note=f"{note}, target >= 1.3",
        ),
    ]
