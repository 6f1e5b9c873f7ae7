"""The package's import direction: each subpackage imports only those below it, never one above, never in a circle.

Layers, bottom to top: errors → data → runs → model → prepare → callbacks → export (int8, card, folder) → serve → cli
(then the demo, which drives the CLI). Imports inside functions and under ``TYPE_CHECKING`` count too: a deferred
upward import is still a dependency upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imagenet_cls"
LAYERS = [
    "errors",
    "logs",
    "data",
    "runs",
    "model",
    "prepare",
    "callbacks",
    "export_int8",
    "export_card",
    "export",
    "serve",
    "cli",
    "demo",
    # Old paths of the callbacks (before the subpackages), kept for saved configs: each only re-exports one class.
    "signals",
    "writer",
    "report",
    "resume",
]
OLD_CALLBACK_PATHS = {
    "imagenet_cls.signals.GracefulShutdown": "imagenet_cls.callbacks.signals.GracefulShutdown",
    "imagenet_cls.writer.PredictionWriter": "imagenet_cls.callbacks.writer.PredictionWriter",
    "imagenet_cls.report.EvaluationReport": "imagenet_cls.callbacks.report.EvaluationReport",
    "imagenet_cls.resume.ResumeState": "imagenet_cls.callbacks.resume.ResumeState",
}


def _unit(module: str) -> str | None:
    """``imagenet_cls.data.images`` -> ``data``; None for modules outside the package or the package itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "imagenet_cls" and len(parts) > 1 else None


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``, relative imports resolved."""
    name = _module_name(path, package)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.append((node.lineno, module))
            # ``from imagenet_cls import data`` imports the subpackage data
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if module == "imagenet_cls"]
    return found


def import_violations(package: Path = PACKAGE) -> list[str]:
    """Every import from one subpackage to another that goes up the layers, or is between unknown units."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        source = _unit(_module_name(path, package))
        if source is None:
            continue
        for line, module in imported_modules(path, package):
            target = _unit(module)
            if target is None or target == source:
                continue
            where = f"{path.relative_to(package.parent)}:{line}"
            if source not in LAYERS or target not in LAYERS:
                problems.append(f"{where}: {source} -> {target}: add the new subpackage to LAYERS")
            elif LAYERS.index(target) > LAYERS.index(source):
                problems.append(f"{where}: {source} imports {module}, a layer above it")
    return problems


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Circles in the graph of subpackages (none can exist while the layers hold; checked on its own anyway)."""
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        source = _unit(_module_name(path, package))
        if source is None:
            continue
        for _, module in imported_modules(path, package):
            target = _unit(module)
            if target is not None and target != source:
                graph.setdefault(source, set()).add(target)
    cycles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append([*trail[trail.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return cycles


def test_every_subpackage_imports_only_layers_below_it():
    assert import_violations() == []
    assert import_cycles() == []


def test_every_subpackage_is_placed_in_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    units -= {"__init__", "__pycache__"}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


@pytest.mark.parametrize(
    ("planted_in", "statement"),
    [
        ("data/planted.py", "from imagenet_cls.callbacks.resume import ResumeState\n"),
        ("runs/planted.py", "def f():\n    from imagenet_cls.callbacks import writer\n"),
        ("errors_planted.py", "import imagenet_cls.cli.app\n"),
        ("model/planted.py", "from ..prepare import sources\n"),
    ],
)
def test_a_planted_upward_import_is_caught(tmp_path, planted_in, statement):
    copy = tmp_path / "imagenet_cls"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert import_violations(copy) == []
    planted = copy / planted_in
    if planted_in == "errors_planted.py":  # a top-level module: make it part of the errors layer
        planted = copy / "errors.py"
        statement = planted.read_text(encoding="utf-8") + statement
    planted.write_text(statement, encoding="utf-8")
    violations = import_violations(copy)
    assert len(violations) == 1 and planted.name in violations[0], violations


def test_a_planted_circle_is_caught(tmp_path):
    copy = tmp_path / "imagenet_cls"
    for name, text in {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from imagenet_cls.runs import b\n",
        "runs/__init__.py": "",
        "runs/b.py": "from imagenet_cls.data import a\n",
    }.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text(text, encoding="utf-8")
    assert import_cycles(copy) == [["data", "runs", "data"]]


MAX_MODULE_LINES = 350


def test_no_module_is_longer_than_350_lines():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split by concern: {long}"


def test_old_callback_class_paths_resolve_as_saved_configs_name_them(tmp_path):
    """A config saved before the subpackages (``class_path: imagenet_cls.signals.GracefulShutdown``) still loads."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning.pytorch import Callback

    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--callbacks", type=list[Callback])
    config = tmp_path / "old.yaml"
    config.write_text("callbacks:\n" + "".join(f"  - class_path: {old}\n" for old in OLD_CALLBACK_PATHS))
    callbacks = parser.instantiate(parser.parse_args(["--config", str(config)])).callbacks
    expected = [new.rsplit(".", 1) for new in OLD_CALLBACK_PATHS.values()]
    assert [(type(c).__module__, type(c).__name__) for c in callbacks] == [tuple(pair) for pair in expected]
