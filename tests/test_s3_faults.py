"""A flaky bucket: an optimized dataset in moto's S3, read through a fault-injecting proxy (tests/s3_faults.py).

Transient faults (5xx, resets, stalls, cut bodies) are tried again and change nothing: the same metrics and each
item read once per epoch. A bucket that keeps failing is one line after READ_ATTEMPTS tries. A damaged chunk is an
error naming the item, or a counted bad image, never another label.
"""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from imagenet_cls.cli import ImageNetCLI, main
from imagenet_cls.data.litdata_items import OptimizedSplit
from imagenet_cls.data.retries import READ_ATTEMPTS
from tests.conftest import FAST_TRAINER, TINY_MODEL, differing_tensors, fit_args, untrained_weights, upload
from tests.s3_faults import STALL_S, FaultProxy
from tests.test_streaming import CLI, _fit, optimize


@pytest.fixture
def bucket(class_folders, tmp_path, s3, monkeypatch):  # noqa: F811
    """(local optimized dataset, its URL in moto, a FaultProxy the client goes through, no fault scheduled yet)."""
    local = optimize(class_folders, tmp_path / "optimized")
    url = upload(s3, local, "optimized")
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield local, url, proxy


@pytest.fixture
def reads(monkeypatch) -> Counter:
    """(split URL, item index) -> successful item reads (fetched and checked), whatever HTTP requests it took."""
    counted: Counter = Counter()
    original = OptimizedSplit._checked

    def checked(self, index, item):
        result = original(self, index, item)
        counted[self.url, index] += 1
        return result

    monkeypatch.setattr(OptimizedSplit, "_checked", checked)
    return counted


def chunk_requests(proxy: FaultProxy, split: str) -> dict[tuple[str, str], int]:
    return {key: count for key, count in proxy.requests.items() if f"/{split}/chunk-" in key[0]}


def metrics(data: str | Path, tmp_path: Path, *extra: str) -> dict[str, float]:
    """validate ``data`` with TINY_MODEL's untrained weights (batch 4, no workers)."""
    cli = ImageNetCLI(args=["validate", *TINY_MODEL, *untrained_weights(tmp_path), "--data.data_dir", str(data),
                            *FAST_TRAINER, "--data.num_workers", "0", "--data.batch_size", "4", *extra])  # fmt: skip
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}


FAULTS = ("500", "503", "reset", "reset_mid_body", "truncate", "truncate_lying_length")


def test_transient_faults_are_retried_and_change_nothing(bucket, tmp_path, reads):
    """validate through 5xx, resets and cut bodies: the same metrics, each image read once."""
    local, url, proxy = bucket
    expected = metrics(local, tmp_path)
    for kind in FAULTS:
        proxy.add(kind, key="/val/chunk-", every=2, times=1)  # 6 of the val chunks' range requests fail
    reads.clear()
    assert metrics(url, tmp_path, "--data.cache_dir", str(tmp_path / "cache")) == expected
    assert proxy.injected == dict.fromkeys(FAULTS, 1)
    assert reads == {(f"{url}/val", index): 1 for index in range(3)}  # each image read once, retries or not
    # 2 ranges per item (its offsets, its bytes), each answered in full; a retried item asks for both again.
    requests = chunk_requests(proxy, "val")
    assert len(requests) == 6 and all(proxy.served[key] >= 1 for key in requests)
    assert sum(requests.values()) == sum(proxy.served[key] for key in requests) + 6


def test_a_fit_through_transient_faults_equals_a_local_fit(bucket, tmp_path, reads):
    """A 1-epoch fit through 5xx, resets and cut bodies (train and val): bitwise the weights of a local fit."""
    local, url, proxy = bucket
    fit = ("--trainer.max_epochs", "1", "--trainer.deterministic", "true", "--trainer.num_sanity_val_steps", "0")
    assert main(fit_args(local, tmp_path / "local", *fit)) == 0
    for kind in FAULTS:
        proxy.add(kind, key="/train/chunk-", every=5, times=2)
    reads.clear()
    assert main(fit_args(url, tmp_path / "bucket", *fit, "--data.cache_dir", str(tmp_path / "cache2"))) == 0
    assert proxy.injected == dict.fromkeys(FAULTS, 2)
    assert reads == {**{(f"{url}/train", i): 1 for i in range(24)}, **{(f"{url}/val", i): 1 for i in range(3)}}
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for run in ("local", "bucket")]  # fmt: skip
    assert not differing_tensors(*weights)


def test_a_stall_longer_than_the_read_timeout_is_retried(bucket, tmp_path, reads):
    local, url, proxy = bucket
    proxy.add("stall", key="/val/chunk-", times=1)
    proxy.add("stall_reset", key="/val/chunk-", times=1)
    options = ("--data.storage_options", json.dumps({"read_timeout": 0.5}))
    expected = metrics(local, tmp_path)
    reads.clear()
    start = time.monotonic()
    assert metrics(url, tmp_path, "--data.cache_dir", str(tmp_path / "cache"), *options) == expected
    elapsed = time.monotonic() - start
    assert proxy.injected == {"stall": 1, "stall_reset": 1}
    assert reads == {(f"{url}/val", index): 1 for index in range(3)}
    requests = chunk_requests(proxy, "val")
    assert len(requests) == 6 and sum(requests.values()) == sum(proxy.served[key] for key in requests) + 2
    assert elapsed < 30
    # The client gave up on each stalled request and asked again while the proxy still held it.
    for kind in ("stall", "stall_reset"):
        at, key, span, _ = next(entry for entry in proxy.log if entry[3] == kind)
        again = next(entry[0] for entry in proxy.log if entry[0] > at and entry[1:3] == (key, span))
        assert again - at < STALL_S, (kind, again - at)


def test_a_bucket_that_keeps_failing_is_one_line_after_the_attempts(bucket, tmp_path, capsys):
    _, url, proxy = bucket
    proxy.add("503", key="/val/chunk-", times=None)
    start = time.monotonic()
    code = main(["validate", *TINY_MODEL, *untrained_weights(tmp_path), "--data.data_dir", url, *FAST_TRAINER,
                 "--data.num_workers", "0", "--data.batch_size", "4", "--data.cache_dir", str(tmp_path / "cache"),
                 "--data.skip_bad_images", "true"])  # fmt: skip
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{url}/val: reading item" in lines[0] and f"{READ_ATTEMPTS} attempts failed" in lines[0]
    assert "check the endpoint" in lines[0] and "SlowDown" in lines[0]
    requests = chunk_requests(proxy, "val")  # each item's first range: READ_ATTEMPTS tries, then the run stops
    assert requests and set(requests.values()) == {READ_ATTEMPTS}, requests
    assert elapsed < 60


def test_a_damaged_chunk_is_an_error_or_a_counted_bad_image_never_another_label(class_folders, tmp_path, s3, capsys):  # noqa: F811
    local = optimize(class_folders, tmp_path / "optimized")
    chunk = next((local / "val").glob("chunk-*.bin"))
    data = bytearray(chunk.read_bytes())
    begin = int.from_bytes(data[4:8], "little")  # item 0 (uint32 count, uint32 offsets, then the items)
    # LitData's item: a uint32 size per field (image, label, name, crc32), then the fields; the label an int64.
    image_size = int.from_bytes(data[begin : begin + 4], "little")
    data[begin + 16 + image_size] ^= 1  # label 0 <-> 1: without the checksum, a silently wrong label
    chunk.write_bytes(bytes(data))
    url = upload(s3, local, "damaged")
    got = metrics(url, tmp_path, "--data.skip_bad_images", "true", "--data.cache_dir", str(tmp_path / "cache"))
    assert got["val_images"] == 2  # the damaged item counted as a bad image, the two others read
    capsys.readouterr()
    assert main(["validate", *TINY_MODEL, *untrained_weights(tmp_path), "--data.data_dir", str(local),
                 *FAST_TRAINER, "--data.num_workers", "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"{local}/val: item 0 fails its checksum (crc32)" in err and "Traceback" not in err


@pytest.mark.slow
def test_through_cli_with_workers_a_failing_bucket_is_one_line_and_a_flaky_one_resumes_exactly(bucket, tmp_path):
    """``python cli.py`` with 2 loader workers: a persistent 503 is one line (the error raised in a worker), exit 2;
    a fit through transient faults killed with kill -9 and resumed ends bitwise equal to a local fit."""
    local, url, proxy = bucket
    failing = proxy.add("503", key="/val/chunk-", times=None)
    ckpt = untrained_weights(tmp_path)
    args = ["validate", *TINY_MODEL, *ckpt, "--data.data_dir", url, *FAST_TRAINER, "--data.num_workers", "2",
            "--data.batch_size", "4", "--data.cache_dir", str(tmp_path / "cache")]  # fmt: skip
    result = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{READ_ATTEMPTS} attempts failed" in result.stderr and "check the endpoint" in result.stderr
    proxy.faults.remove(failing)

    proxy.add("reset_mid_body", key="/train/chunk-", every=7, times=None)  # one request in 7 fails, all along
    reference = _fit(local, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    root = tmp_path / "killed"
    killed = _fit(url, root, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9")
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _fit(url, root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sum(proxy.injected.values()) > 6
    expected, final = (torch.load(path / "checkpoints" / "last.ckpt", weights_only=True) for path in
                       (tmp_path / "reference", root))  # fmt: skip
    assert final["global_step"] == expected["global_step"] == 12
    assert not differing_tensors(expected["state_dict"], final["state_dict"])
