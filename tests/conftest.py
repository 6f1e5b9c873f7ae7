"""Shared fixtures: CPU only, offline, tiny generated images."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"n00000001": (220, 40, 40), "n00000002": (40, 200, 40), "n00000003": (40, 60, 220)}
NAMES = {"n00000001": "red", "n00000002": "green", "n00000003": "blue"}
TINY_MODEL = ["--model.model_name", "test_resnet", "--model.image_size", "32", "--model.crop_pct", "1.0"]
FAST_TRAINER = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.devices",
    "1",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def fit_args(data: Path, root: Path, *extra: str, logger: bool = False) -> list[str]:
    """``fit`` on ``data`` into ``root``: tiny model, CPU, batch 4, no workers, no test after fit; ``extra`` last.

    ``logger=True`` keeps the default W&B logger (FAST_TRAINER turns it off).
    """
    trainer = list(FAST_TRAINER)
    if logger:
        at = trainer.index("--trainer.logger")
        del trainer[at : at + 2]
    common = ["--data.data_dir", str(data), "--data.num_workers", "0", "--data.batch_size", "4"]
    return ["fit", *TINY_MODEL, *trainer, *common, "--trainer.default_root_dir", str(root),
            "--test_after_fit", "false", *extra]  # fmt: skip


def differing_tensors(expected: dict, got: dict) -> list[str]:
    """Names of ``expected``'s tensors that ``got`` lacks or holds with other values (bitwise)."""
    import torch

    return [name for name, tensor in expected.items() if name not in got or not torch.equal(tensor, got[name])]


def assert_same_final_weights(expected: Path, got: Path, steps: int) -> None:
    """Both checkpoints end at step ``steps`` with bitwise-equal weights (a resumed run vs an uninterrupted one)."""
    import torch

    reference, final = torch.load(expected, weights_only=True), torch.load(got, weights_only=True)
    assert final["global_step"] == reference["global_step"] == steps
    different = differing_tensors(reference["state_dict"], final["state_dict"])
    assert not different, different


def untrained_weights(folder: Path, num_classes: int = 3) -> list[str]:
    """Options giving TINY_MODEL freshly initialised weights from a file: validate/test/predict refuse no weights."""
    import torch

    from imagenet_cls.model.backbones import create_backbone

    path = folder / f"untrained_{num_classes}.pth"
    torch.manual_seed(0)
    torch.save(create_backbone("test_resnet", num_classes, False).state_dict(), path)
    return ["--model.pretrained", str(path), "--model.num_classes", str(num_classes)]


@pytest.fixture(autouse=True)
def _offline_in_tmp(monkeypatch, tmp_path):
    """No W&B, no GPU, and the working directory in tmp, so default outputs (runs/) never land in the repo."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # predict's ONNX graph cache
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.chdir(tmp_path)


def write_image(path: Path, colour, size=(24, 24), seed=0, mode="RGB", fmt=None) -> Path:
    """A small image of ``colour`` with noise, so classes are learnable but not identical."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def make_class_folders(root: Path, per_class: int = 10, classes=COLOURS) -> Path:
    for c, (name, colour) in enumerate(classes.items()):
        for i in range(per_class):
            write_image(root / name / f"img_{i:03d}.jpg", colour, seed=c * 1000 + i)
    return root


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """One folder of 3 class folders x 10 JPEGs (the seed's layout) plus a class map."""
    root = make_class_folders(tmp_path / "data")
    (root / "folder_num_class_map.txt").write_text(
        "".join(f"{w} {i} {NAMES[w]}\n" for i, w in enumerate(sorted(COLOURS)))
    )
    return root


@pytest.fixture
def split_folders(tmp_path) -> Path:
    """train/ val/ test/ folders, each with the 3 classes."""
    root = tmp_path / "splits"
    for split, count in (("train", 12), ("val", 4), ("test", 4)):
        make_class_folders(root / split, per_class=count)
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# ---- S3 on the loopback -----------------------------------------------------------------------------------------
@pytest.fixture
def s3(monkeypatch, tmp_path):
    """moto's S3 server on a free 127.0.0.1 port, found by boto3 and LitData through the AWS_* variables."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="imagenet")
    yield client
    server.stop()


def upload(client, folder: Path, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "imagenet", f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://imagenet/{prefix}"
