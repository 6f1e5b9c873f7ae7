"""Issue: ``python cli.py --help`` starts about as fast as importing Lightning itself allows."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import REPO, Result


def _best_of(command: list[str], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def run() -> list[Result]:
    lightning = _best_of([sys.executable, "-c", "import lightning.pytorch"])
    help_time = _best_of([sys.executable, "cli.py", "--help"])
    return [
        Result(
            "start-up: cli.py --help vs import lightning.pytorch",
            help_time,
            lightning,
            "s",
            higher_is_better=False,
            note="best of 2",
        )
    ]
