"""The README's benchmark table, generated from a ``results.json`` written by ``make bench``.

``python -m bench.table [RESULTS_JSON] [--archive]`` prints the Markdown table; ``--archive`` also copies the file
to ``bench/results/<date>.json``, the artifact the README's figures cite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench.common import REPO


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def markdown_table(payload: dict) -> str:
    """A Markdown table of ``payload``'s rows, headed by the CPU, threads and date they were measured with."""
    cpu = payload.get("cpu", {})
    flags = ", ".join(cpu.get("flags", [])) or "no AVX2"
    when, seconds, load = payload.get("date", "?"), payload.get("seconds", "?"), payload.get("load_average_at_end", 0)
    threads = f"torch {payload.get('torch', '?')} with {cpu.get('torch_threads', '?')} threads"
    lines = [
        f"Measured {when} by `make bench` ({seconds} s) on {cpu.get('model', '?')} ({flags}; {cpu.get('cores', '?')}"
        f" cores; {threads}; load average {load:.1f} at the end).",
        "",
        "| benchmark | ours | baseline | ratio | unit | precision / runtime | note |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in payload["results"]:
        ratio = f"{row['ratio']:.2f}" + ("" if row["higher_is_better"] else " (lower is better)")
        cells = [row["name"], _number(row["ours"]), _number(row["baseline"]), ratio, row["unit"]]
        cells += [row.get("precision", ""), row.get("note", "")]
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.table", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=REPO / "bench" / "results.json")
    parser.add_argument("--archive", action="store_true", help="copy it to bench/results/<date>.json")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        print(f"error: {args.results} is not a file: run `make bench` first", file=sys.stderr)
        return 2
    payload = json.loads(args.results.read_text())
    if args.archive:
        folder = REPO / "bench" / "results"
        folder.mkdir(exist_ok=True)
        target = folder / f"{payload['date'][:10]}.json"
        shutil.copyfile(args.results, target)
        print(f"archived as {target.relative_to(REPO)}", file=sys.stderr)
    print(markdown_table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
