"""MkDocs hooks: the pages that are generated from the code and its results, so they cannot drift.

- ``reference/<command>.md``: each command's ``--help``, as the CLI prints it (LightningCLI/jsonargparse build it
  from the typed signatures and docstrings).
- ``benchmarks/<run>.md``: each ``bench/results/*.json`` as a table headed by its CPU, flags and date (the table
  ``python -m bench.table`` prints); ``benchmarks/scale.md`` from ``bench/scale.json``.
- ``design/modules.md``: every module of the package, by import layer (``tests/test_architecture.py``'s LAYERS),
  with its line count and the first line of its docstring.
- ``guide/dataset-layouts.md``: ``dataset/README.md``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]

# (page name, title, command line after the Python interpreter)
COMMANDS = [
    ("fit", "fit", ["cli.py", "fit", "--help"]),
    ("validate", "validate", ["cli.py", "validate", "--help"]),
    ("test", "test", ["cli.py", "test", "--help"]),
    ("predict", "predict", ["cli.py", "predict", "--help"]),
    ("prepare", "prepare", ["-m", "imagenet_cls.prepare", "--help"]),
    ("export", "export", ["-m", "imagenet_cls.export", "--help"]),
    ("serve", "serve", ["cli.py", "serve", "--help"]),
]


def _help_text(argv: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "118", "WANDB_MODE": "disabled", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"docs: `python {' '.join(argv)}` exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def reference_pages() -> dict[str, str]:
    """``reference/*.md``: every command's options, from its own ``--help``."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        helps = list(pool.map(_help_text, [argv for _, _, argv in COMMANDS]))
    pages, rows = {}, []
    for (name, title, argv), text in zip(COMMANDS, helps):
        command = "python " + " ".join(argv)
        pages[f"reference/{name}.md"] = (
            f"# {title}\n\nGenerated at build time from `{command}`: every option with its type, default and "
            f"documentation.\n\n```text\n{text.rstrip()}\n```\n"
        )
        rows.append(f"| [{title}]({name}.md) | `{command}` |")
    pages["reference/index.md"] = (
        "# Reference\n\nEvery option of every command, generated from the command's own `--help` each time the site "
        "is built (`make docs`). Options of fit/validate/test/predict can also be set in a YAML file given with "
        "`--config` (keys as in `--print_config`).\n\n| command | generated from |\n| --- | --- |\n"
        + "\n".join(rows)
        + "\n"
    )
    return pages


def benchmark_pages() -> dict[str, str]:
    """``benchmarks/*.md``: each archived ``make bench`` run and the ``make scale`` run, with CPU and date."""
    sys.path.insert(0, str(REPO))
    from bench.table import markdown_table

    pages = {}
    for path in sorted((REPO / "bench" / "results").glob("*.json"), reverse=True):
        payload = json.loads(path.read_text())
        pages[f"benchmarks/{path.stem}.md"] = (
            f"# make bench: {payload.get('date', path.stem)}\n\nGenerated from `bench/results/{path.name}`.\n\n"
            f"{markdown_table(payload)}\n"
        )
    scale = REPO / "bench" / "scale.json"
    if scale.is_file():
        pages["benchmarks/scale.md"] = scale_page(json.loads(scale.read_text()))
    return pages


def scale_page(payload: dict) -> str:
    """``make scale``'s targets: cost per file at 100 % against the smaller fraction, per step."""
    lines = [
        f"# make scale: {payload.get('date', '?')}",
        "",
        f"Generated from `bench/scale.json`. CPU: {payload.get('cpu', '?')}; whole run "
        f"{payload.get('total_seconds', 0):.0f} s; finished: {payload.get('finished', '?')}.",
        "",
        "| step | cost per file, 100 % / smaller fraction | CPU time ratio | against | met |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for step, target in payload.get("targets", {}).items():
        lines.append(
            f"| {step} | {target.get('per_file_ratio', float('nan')):.2f} | "
            f"{target.get('per_file_cpu_ratio', float('nan')):.2f} | {target.get('against', '')} | "
            f"{target.get('met', '')} |"
        )
    rest = {key: value for key, value in payload.items() if key not in {"targets", "date", "cpu"}}
    lines += ["", "The rest of the file, as written:", "", "```json", json.dumps(rest, indent=1)[:20000], "```", ""]
    return "\n".join(lines)


def module_map() -> str:
    """``design/modules.md``: the package's modules by import layer, each with its size and docstring summary."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_architecture import LAYERS

    package = REPO / "imagenet_cls"
    lines = [
        "# Module map",
        "",
        "Generated from the source at build time. Imports go one way, from a layer to the layers above it in this "
        "list, never back (`tests/test_architecture.py` fails otherwise): " + " → ".join(LAYERS) + ".",
        "",
    ]
    for layer in LAYERS:
        paths = sorted((package / layer).rglob("*.py")) if (package / layer).is_dir() else [package / f"{layer}.py"]
        lines += [f"## {layer}", "", "| module | lines | what it is |", "| --- | ---: | --- |"]
        for path in paths:
            if not path.is_file():
                continue
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            summary = doc.strip().splitlines()[0] if doc.strip() else ""
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            lines.append(f"| `{name}` | {len(path.read_text().splitlines())} | {summary.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def generated_pages() -> dict[str, str]:
    """Every generated page, by its path under docs/."""
    pages = {**reference_pages(), **benchmark_pages(), "design/modules.md": module_map()}
    layouts = (REPO / "dataset" / "README.md").read_text(encoding="utf-8")
    pages["guide/dataset-layouts.md"] = layouts.replace("](../", "](../../")
    return pages


def on_files(files, config):  # noqa: ANN001, ANN201 (MkDocs' hook signature)
    """Add the generated pages to the site."""
    for path, text in generated_pages().items():
        files.append(File.generated(config, path, content=text))
    return files


def on_config(config):  # noqa: ANN001, ANN201 (MkDocs' hook signature)
    """List every generated benchmark page under Benchmarks in the navigation (newest first)."""
    names = [f"benchmarks/{p.stem}.md" for p in sorted((REPO / "bench" / "results").glob("*.json"), reverse=True)]
    if (REPO / "bench" / "scale.json").is_file():
        names.append("benchmarks/scale.md")
    for section in config["nav"]:
        if isinstance(section, dict) and "Benchmarks" in section:
            section["Benchmarks"] += [{Path(name).stem: name} for name in names]
    return config
