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
    from imagenet_cls.prepare import prepare

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
