"""Credentials given in ``--data.storage_options``, the environment or a config file reach none of the files that fit,
validate, predict and export write (config.yaml, checkpoint hyper-parameters, W&B offline files, logs, exports, the
model card), nor their output, nor serve's ``/info``.

Steps: fit, validate, predict, export, serve, and validate/predict on parquet and WebDataset records. To cover
another command or source, add a step to ``STEPS`` that runs it with the secrets and returns what it printed or
served.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import FAST_TRAINER, TINY_MODEL

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")
MARKER = "s3cr3t-MARKER-7f3a9c"  # a secret no file would hold by chance
OPTIONS = f'{{"key": "AKIA{MARKER}", "secret": "{MARKER}", "client_kwargs": {{"aws_session_token": "{MARKER}"}}}}'


def _run(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _fit(work: Path, data: Path, env: dict[str, str]) -> str:
    config = work / "secret.yaml"  # the secret from a config file too
    config.write_text(f"data:\n  storage_options:\n    profile: default\n    password: {MARKER}-config\n")
    at = FAST_TRAINER.index("--trainer.logger")
    trainer = FAST_TRAINER[:at] + FAST_TRAINER[at + 2 :]  # keep the default W&B logger (offline)
    return _run([sys.executable, CLI, "fit", "--config", str(config), *TINY_MODEL, *trainer, "--data.data_dir",
                 str(data), "--data.num_workers", "0", "--data.batch_size", "8", "--trainer.max_epochs", "1",
                 "--trainer.default_root_dir", str(work / "runs"), "--data.storage_options", OPTIONS,
                 "--trainer.logger.save_dir", str(work / "runs")], env)  # fmt: skip


def _checkpoint(work: Path) -> Path:
    return sorted((work / "runs").rglob("last*.ckpt"))[0]


def _validate(work: Path, data: Path, env: dict[str, str]) -> str:
    return _run([sys.executable, CLI, "validate", *TINY_MODEL, *FAST_TRAINER, "--ckpt_path", str(_checkpoint(work)),
                 "--data.data_dir", str(data), "--data.num_workers", "0", "--data.storage_options", OPTIONS,
                 "--trainer.default_root_dir", str(work / "runs")], env)  # fmt: skip


def _predict(work: Path, data: Path, env: dict[str, str]) -> str:
    return _run([sys.executable, CLI, "predict", *TINY_MODEL, *FAST_TRAINER, "--ckpt_path", str(_checkpoint(work)),
                 "--data.predict_path", str(data / "n00000001"), "--data.num_workers", "0", "--data.storage_options",
                 OPTIONS, "--writer.output_dir", str(work / "predicted")], env)  # fmt: skip


def _export(work: Path, data: Path, env: dict[str, str]) -> str:
    return _run([sys.executable, "-m", "imagenet_cls.export", str(_checkpoint(work)), str(work / "exported"),
                 "--no-onnx"], env)  # fmt: skip


def _serve(work: Path, data: Path, env: dict[str, str]) -> str:
    """``cli.py serve`` over the checkpoint, with the secrets in its environment: what ``/info`` and its log show."""
    import requests

    from bench.serving import Server

    log = work / "serve.log"
    server = Server(["--ckpt_path", str(_checkpoint(work)), "--runtime", "torch"], log, env=env)
    try:
        info = requests.get(f"{server.url}/info", timeout=30).text
    finally:
        server.stop()
    return info + log.read_text()


def _records(work: Path, data: Path, env: dict[str, str]) -> str:
    """validate on a parquet snapshot and predict on WebDataset shards of the same images, with the secrets."""
    from imagenet_cls.data.layout import read_layout
    from tests.conftest import COLOURS
    from tests.record_sources import write_parquet_snapshot, write_wds_shards

    splits = read_layout(data).splits
    snapshot = write_parquet_snapshot(splits, sorted(COLOURS), work / "parquet", files=1)
    shards = write_wds_shards(splits, work / "shards")
    checkpoint = str(_checkpoint(work))
    validated = _run([sys.executable, CLI, "validate", *TINY_MODEL, *FAST_TRAINER, "--ckpt_path", checkpoint,
                      "--data.data_dir", str(snapshot), "--data.num_workers", "0", "--data.storage_options", OPTIONS,
                      "--trainer.default_root_dir", str(work / "runs")], env)  # fmt: skip
    predicted = _run([sys.executable, CLI, "predict", *TINY_MODEL, *FAST_TRAINER, "--ckpt_path", checkpoint,
                      "--data.predict_path", str(shards / "val"), "--data.num_workers", "0", "--data.storage_options",
                      OPTIONS, "--writer.output_dir", str(work / "predicted_wds")], env)  # fmt: skip
    assert (work / "predicted_wds" / "predictions.csv").is_file()  # the step ran on the shards
    return validated + predicted


# Each step: (name, function(work folder, data folder, environment) -> its output).
STEPS: list[tuple[str, Callable[[Path, Path, dict[str, str]], str]]] = [
    ("fit", _fit),
    ("validate", _validate),
    ("predict", _predict),
    ("export", _export),
    ("serve", _serve),
    ("parquet_and_webdataset", _records),
]


@pytest.mark.slow
def test_no_secret_reaches_a_written_file_or_the_output(class_folders, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": MARKER, "AWS_ACCESS_KEY_ID": f"AKIA{MARKER}",
           "WANDB_API_KEY": f"{MARKER}-wandb-0123456789abcdef0123", "WANDB_MODE": "offline",
           "WANDB_DIR": str(work / "runs"), "PYTHONPATH": str(Path(CLI).parent)}  # fmt: skip
    leaks = []
    for name, step in STEPS:
        output = step(work, class_folders, env)
        if MARKER in output:
            leaks.append(f"{name} output: ...{output[max(0, output.index(MARKER) - 80) : output.index(MARKER)]}")
    written = [p for p in work.rglob("*") if p.is_file() and p.name != "secret.yaml"]
    assert any(p.suffix == ".wandb" for p in written), "no W&B offline files were written"  # the check is real
    assert any(p.name == "config.yaml" for p in written) and any(p.suffix == ".ckpt" for p in written)
    assert any(p.name == "README.md" for p in (work / "exported").iterdir())
    for path in written:
        if MARKER.encode() in path.read_bytes():
            leaks.append(str(path.relative_to(work)))
    assert not leaks, leaks


def test_redaction_keeps_endpoints_and_drops_credentials():
    from imagenet_cls.data.secrets import REDACTED, redact, redact_argv

    endpoint = "http://127.0.0.1:9000"
    options = {"key": "AKIA1", "secret": MARKER, "endpoint_url": endpoint, "anon": False,
               "client_kwargs": {"region_name": "eu", "aws_session_token": MARKER}}  # fmt: skip
    assert redact(options) == {"key": REDACTED, "secret": REDACTED, "endpoint_url": endpoint, "anon": False,
                               "client_kwargs": {"region_name": "eu", "aws_session_token": REDACTED}}  # fmt: skip
    argv = ["cli.py", "fit", "--data.storage_options", OPTIONS, f"--data.storage_options={OPTIONS}",
            "--data.storage_options.secret", MARKER, "--data.storage_options", f"not json {MARKER}",
            "--seed", "1"]  # fmt: skip
    redacted = redact_argv(argv)
    assert MARKER not in " ".join(redacted) and redacted[-2:] == ["--seed", "1"] and len(redacted) == len(argv)
    plain = ["cli.py", "fit", "--data.data_dir", "s3://b/x"]
    assert redact_argv(plain) == plain
