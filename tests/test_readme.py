"""The README keeps its promises: its tour runs as written, its links lead somewhere, it stays short."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def tour_commands(text: str) -> list[str]:
    """The command lines of the first ``bash`` block under "## A short tour" (comments dropped)."""
    section = text.split("## A short tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("#", 1)[0].strip() if " #" in line else line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_is_short_and_its_links_lead_to_files():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links, "the README links to the docs"
    broken = []
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = REPO / path
        if not target.is_file():
            broken.append(link)
        elif anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            if anchor not in slugs:
                broken.append(link)
    assert broken == []


@pytest.mark.slow
def test_the_tour_runs_as_written(tmp_path):
    commands = tour_commands(README.read_text(encoding="utf-8"))
    assert [c.split()[:3] for c in commands][:2] == [
        ["python", "-m", "imagenet_cls.demo"],
        ["python", "cli.py", "fit"],
    ]
    shutil.copy(REPO / "cli.py", tmp_path / "cli.py")
    shutil.copytree(REPO / "config", tmp_path / "config")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "disabled",
    }
    outputs = {}
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs[command] = done.stdout
    # What the README says the tour left behind.
    runs = list((tmp_path / "runs").rglob("best.ckpt"))
    assert len(runs) == 1
    run = runs[0].parent
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("resnet18-epoch=*-val_acc=*.ckpt"))
    assert {p.parent.name for p in run.rglob("summary.json")} >= {"val", "test"}
    rows = pd.read_csv(tmp_path / "predictions" / "predictions.csv")
    sevens = len(list((tmp_path / "dataset" / "digits" / "7").iterdir()))
    assert len(rows) == sevens and (rows["pred_folder"].astype(str) == "7").mean() > 0.5
    assert len(list((tmp_path / "predictions" / "images").rglob("*.png"))) == sevens
    exported = {p.name for p in (tmp_path / "exported").iterdir()}
    assert {"config.json", "model.safetensors", "model.onnx", "README.md", "predict.yaml"} <= exported
    assert "--data.data_dir" in outputs["python cli.py fit --help"]
