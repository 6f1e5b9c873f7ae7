"""``make bench``: run every benchmark, print the table, write bench/results.json."""

from __future__ import annotations

import importlib
import shutil
import sys
import time

from bench.common import REPO, WORK, format_table, machine, sample_dir, write_results
from bench.table import markdown_table

BENCHMARKS = [
    "bench.startup",
    "bench.pipeline",
    "bench.predict",
    "bench.pretrained",
    "bench.fit_overhead",
    "bench.memory",
    "bench.finetune",
    "bench.streaming",
    "bench.records",
    "bench.wds_index",
    "bench.serve",
]
NEEDS_SAMPLE = {"bench.pipeline", "bench.predict", "bench.pretrained", "bench.serve", "bench.records"}


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)  # every figure comes from this run: nothing is reused from an earlier one
    WORK.mkdir(parents=True)
    results = []
    started = time.perf_counter()
    for name in sys.argv[1:] or BENCHMARKS:
        if name in NEEDS_SAMPLE and sample_dir() is None:
            print(f"skipping {name}: ../shared/data/imagenet-sample is absent", file=sys.stderr)
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results += importlib.import_module(name).run()
        write_results(results, REPO / "bench" / "results.json", time.perf_counter() - started)  # kept if stopped
    seconds = time.perf_counter() - started
    payload = write_results(results, REPO / "bench" / "results.json", seconds)
    print(f"\n{machine()}, {seconds:.0f} s\n{format_table(results)}")
    print("\n" + markdown_table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
