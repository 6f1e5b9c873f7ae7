"""A full disk (simulated with a file-size limit, RLIMIT_FSIZE, as ``ulimit -f`` sets) while writing a checkpoint,
prepared files, an optimized dataset, an export or predict's CSV: one ``error:`` line, the previous checkpoint and
outputs intact, and no half-written file under a final name."""

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL, fit_args, untrained_weights

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
ROOT = str(Path(__file__).resolve().parents[1])


def _limited(args: list[str], limit: int, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``args`` with every file it writes limited to ``limit`` bytes (writes beyond fail with EFBIG)."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, preexec_fn=limit_files, env=env, cwd=cwd
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])  # not -SIGXFSZ (25), not a traceback
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "File too large" in line, line
    return line


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkpoint_write_on_a_full_disk_keeps_the_last_checkpoint(class_folders, tmp_path):
    root = tmp_path / "runs"
    first = subprocess.run([sys.executable, CLI, *fit_args(class_folders, root, "--trainer.max_epochs", "1")],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = root / "checkpoints"
    before = _snapshot(checkpoints)
    assert "last.ckpt" in before and all(len(data) > 200_000 for data in before.values())
    resumed = _limited([sys.executable, CLI, *fit_args(class_folders, root, "--trainer.max_epochs", "2",
                                                       "--ckpt_path", "last")], 100_000, tmp_path)  # fmt: skip
    line = _one_line_error(resumed)
    assert "last checkpoint" in line and "is intact" in line
    assert _snapshot(checkpoints) == before  # nothing new, nothing changed, no partial file


def test_predict_csv_on_a_full_disk_leaves_no_predictions_csv(class_folders, tmp_path):
    weights = untrained_weights(tmp_path)
    out = tmp_path / "predicted"
    result = _limited([sys.executable, CLI, "predict", *TINY_MODEL, *weights, "--data.predict_path",
                       str(class_folders), "--data.num_workers", "0", "--trainer.logger", "false",
                       "--trainer.accelerator", "cpu", "--writer.output_dir", str(out), "--writer.write_images",
                       "false", "--writer.top_k", "3"], 3_000, tmp_path)  # fmt: skip
    _one_line_error(result)
    assert not list(out.rglob("predictions.csv")) and not list(out.rglob("predictions.json"))


@pytest.mark.slow  # 22 s: make test keeps the full disk under a checkpoint and under predict's CSV
def test_export_on_a_full_disk_keeps_the_previous_export(class_folders, tmp_path):
    root = tmp_path / "runs"
    fit = subprocess.run([sys.executable, CLI, *fit_args(class_folders, root, "--trainer.max_epochs", "1")],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint, out = root / "checkpoints" / "last.ckpt", tmp_path / "exported"
    export = [sys.executable, "-m", "imagenet_cls.export", str(checkpoint), str(out), "--no-onnx"]
    assert subprocess.run(export, capture_output=True, timeout=600).returncode == 0
    before = _snapshot(out)
    (out / "model.safetensors").unlink()  # the weights are written again; the other files are replaced
    _one_line_error(_limited(export, 50_000, tmp_path))
    after = _snapshot(out)
    assert "model.safetensors" not in after and after == {k: v for k, v in before.items() if k in after}
    assert not [name for name in after if "partial" in name]


def test_prepare_on_a_full_disk_is_one_line_and_leaves_only_whole_files(class_folders, tmp_path):
    dest = tmp_path / "dest"
    args = [sys.executable, "-m", "imagenet_cls.prepare", str(class_folders), str(dest), "--no-progress", "--mode",
            "copy"]  # fmt: skip
    _one_line_error(_limited(args, 600, tmp_path))  # each image is about 1 KB
    copied = list(dest.rglob("*.jpg"))  # copies go through .partial files: every image under its final name is whole
    assert all(path.read_bytes() == (class_folders / path.parent.name / path.name).read_bytes() for path in copied)


@pytest.mark.slow
def test_optimize_on_a_full_disk_is_one_line(class_folders, tmp_path):
    dest = tmp_path / "dest"
    args = [sys.executable, "-m", "imagenet_cls.prepare", str(class_folders), str(dest), "--no-progress", "--format",
            "litdata"]  # fmt: skip
    # Before the fix LitData's orphaned workers kept stderr open: subprocess.run waited past its timeout.
    _one_line_error(_limited(args, 600, tmp_path, timeout=60))
    assert sorted(path.name for path in dest.iterdir()) == []  # no split, whole or partial, and no dataset.json
    assert not _processes_running(str(dest))


FAIL_AT_THE_LAST_CHUNK = """
import errno, sys, time
from litdata.processing import data_processor
from imagenet_cls.prepare.sources import main

def fail(worker):  # every item is counted by now: LitData's main process has stopped reading errors to join workers
    time.sleep(1.0)
    raise OSError(errno.EFBIG, "File too large")

data_processor.BaseWorker._handle_data_chunk_recipe_end = fail
sys.exit(main(sys.argv[1:]))
"""


def test_optimize_whose_workers_fail_at_their_last_chunk_is_one_line(class_folders, tmp_path):
    """LitData 0.2.76 hung there (the failed worker waited for its remover) or lost the error: seen 1 run in 16 of the
    full-disk optimize above; here every run, injected after each worker has counted all its items."""
    dest = tmp_path / "dest"
    args = [sys.executable, "-c", FAIL_AT_THE_LAST_CHUNK, str(class_folders), str(dest), "--no-progress", "--format",
            "litdata"]  # fmt: skip
    _one_line_error(_limited(args, 2**40, tmp_path, timeout=60))
    assert sorted(path.name for path in dest.iterdir()) == []
    assert not _processes_running(str(dest))


def test_one_pass_optimize_from_parquet_on_a_full_disk_leaves_no_split(split_folders, tmp_path):
    """The streamed writer (parquet, WebDataset, ILSVRC tars to ``--format litdata``) writes into a partial folder."""
    pytest.importorskip("datasets")
    from imagenet_cls.data.layout import read_layout
    from tests.record_sources import write_parquet_snapshot

    snapshot = write_parquet_snapshot(read_layout(split_folders).splits, ["red", "green", "blue"], tmp_path / "pq")
    dest = tmp_path / "dest"
    args = [sys.executable, "-m", "imagenet_cls.prepare", str(snapshot), str(dest), "--no-progress", "--format",
            "litdata"]  # fmt: skip
    line = _one_line_error(_limited(args, 5_000, tmp_path))  # the 36 training images need more
    assert f"writing {dest}/" in line, line
    assert not [path.name for path in dest.iterdir() if path.is_dir()]  # no split, whole or partial


def _processes_running(argument: str) -> list[str]:
    """The command lines of this machine's processes that were given ``argument``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if argument.encode() in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def test_a_child_in_its_own_session_returns_a_full_disk_and_leaves_no_process(tmp_path):
    import errno

    from imagenet_cls.errors import UserError, disk_full
    from imagenet_cls.prepare.isolated import run_in_own_session

    pid_file = tmp_path / "sleeper.pid"

    def fails_after_starting_a_process() -> None:
        sleeper = subprocess.Popen(["sleep", "60"])
        pid_file.write_text(str(sleeper.pid))
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(tmp_path / "chunk-0-0.bin"))

    with pytest.raises(OSError) as raised:
        run_in_own_session(fails_after_starting_a_process)
    error = disk_full(raised.value)
    assert isinstance(error, UserError) and raised.value.errno == errno.EFBIG
    assert f"File too large writing {tmp_path / 'chunk-0-0.bin'}: free space" in str(error)
    assert _ends_within(int(pid_file.read_text()), 5)  # killed with the child's group


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` is gone or a zombie (killed, not yet reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in "ZX":
            return True
        time.sleep(0.05)
    return False
