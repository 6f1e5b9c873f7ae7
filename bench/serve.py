"""Serving Lite0 over loopback against offline predict on the same images, in the same run; then a memory soak.

``python cli.py serve --config config/efficientnet_lite0.yaml`` in its own process; a bounded client (a fixed
number of threads, each posting one image per request, a fixed number of requests) measures throughput and p50/p99
latency at concurrency 1, 8 and 32. The baseline is ``python cli.py predict`` over the same images (writer on,
annotated images off: the server returns JSON) in a fresh process, img/s from its first to last batch. The soak
posts at concurrency 8 for ``--soak`` seconds (2 minutes in ``make bench``) and samples the resident memory of the
server's process tree; growth is the largest sample after the first fifth (warm-up) minus the first one after it.

``python -m bench.serve --images 100 --soak 20`` is a short run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from bench.common import REPO, WORK, Result, format_table, sample_dir
from bench.predict import _ours, _predict_args, linked_copies
from bench.serving import Server

CONCURRENCY = (1, 8, 32)


def _load(url: str, images: list[bytes], concurrency: int, count: int) -> tuple[float, list[float], int]:
    """``count`` requests by ``concurrency`` threads: (seconds, latencies in s, failures)."""
    import requests

    latencies: list[float] = []
    failures = 0
    next_index = 0
    lock = threading.Lock()

    def client() -> None:
        nonlocal next_index, failures
        session = requests.Session()
        while True:
            with lock:
                if next_index >= count:
                    return
                index = next_index
                next_index += 1
            start = time.perf_counter()
            answer = session.post(
                f"{url}/predict", data=images[index % len(images)], headers={"Content-Type": "image/jpeg"}, timeout=120
            )
            with lock:
                latencies.append(time.perf_counter() - start)
                failures += answer.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, failures


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(images: int = 256, soak: float = 120.0, max_batch_size: int = 32) -> list[Result]:
    """The serving rows of ``make bench`` (see the module docstring)."""
    folder = linked_copies(images)
    paths = sorted(folder.rglob("*.JPEG"))
    payloads = [p.read_bytes() for p in paths]
    env = {"XDG_CACHE_HOME": str(WORK / "cache")}  # the ONNX graph cache of this run (shared with bench.predict)
    config = str(REPO / "config" / "efficientnet_lite0.yaml")
    args = ["--config", config, "--max_batch_size", str(max_batch_size), "--batch_timeout", "0.01"]
    server = Server(args, WORK / "serve.log", env=env)  # exports the graph predict then finds in the cache
    results = []
    try:
        # The server idles meanwhile (its worker waits on a queue).
        offline_args = _predict_args(folder, WORK / "serve_offline", extra=("--writer.write_images", "false"))
        offline = images / _ours(offline_args)["seconds"]
        _load(server.url, payloads, 4, 16)  # warm-up: first batches, allocator
        for concurrency in CONCURRENCY:
            count = max(images, 4 * concurrency)
            seconds, latencies, failures = _load(server.url, payloads, concurrency, count)
            p50, p99 = (_percentile(latencies, q) * 1000 for q in (0.5, 0.99))
            results.append(
                Result(
                    f"serve Lite0, concurrency {concurrency} (vs offline predict)",
                    count / seconds,
                    offline,
                    "img/s",
                    note=f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, {count} requests of 1 image, {failures} failed; "
                    f"max_batch_size {max_batch_size}, 1 worker;"
                    f" {images} sample images; goal >= 0.8x at 32",
                    precision="ONNX Runtime fp32 both",
                )
            )
        samples: list[float] = []
        stop = time.perf_counter() + soak
        while time.perf_counter() < stop:
            _load(server.url, payloads, 8, 32)
            samples.append(server.rss_mb())
        settled = samples[max(1, len(samples) // 5) :] or samples
        growth = max(settled) - settled[0]
        results.append(
            Result(
                "serve Lite0 RSS growth over a soak (limit 50 MB)",
                growth,
                50.0,
                "MB",
                higher_is_better=False,
                note=f"{soak:.0f} s at concurrency 8, {len(samples)} samples of the process tree; RSS after warm-up "
                f"{settled[0]:.0f} MB, peak {max(samples):.0f} MB, end {samples[-1]:.0f} MB (a sum over processes: "
                "pages they share are counted in each)",
            )
        )
    finally:
        code = server.stop()
        if code != 0:
            print(f"serve exited with {code}: see {server.log}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="sample images posted (and predicted offline)")
    parser.add_argument("--soak", type=float, default=120.0, help="seconds of the memory soak")
    parser.add_argument("--max_batch_size", type=int, default=32, help="the server's --max_batch_size")
    args = parser.parse_args(argv)
    if sample_dir() is None:
        print("the ImageNet sample (../shared/data/imagenet-sample) is absent", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    print(format_table(run(args.images, args.soak, args.max_batch_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
