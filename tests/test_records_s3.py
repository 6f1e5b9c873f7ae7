"""Parquet snapshots and WebDataset shards read in place from ``s3://`` (moto's S3 server on 127.0.0.1).

The same files are uploaded and read from the bucket and from disk: a run on either gives the same weights (bitwise),
metrics and predictions; a missing bucket, prefix or shard is one line.
"""

import gc
import json
import os
import pickle
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from imagenet_cls.cli import ImageNetCLI, main
from imagenet_cls.data.backends import backend_of, open_layout
from imagenet_cls.data.layout import read_layout
from imagenet_cls.errors import UserError
from tests.conftest import FAST_TRAINER, TINY_MODEL, differing_tensors, fit_args, untrained_weights, upload
from tests.record_sources import write_parquet_snapshot, write_wds_shards

pytest.importorskip("datasets")
pytest.importorskip("webdataset")

NAMES = ["red", "green", "blue"]


@pytest.fixture
def sources(split_folders, tmp_path, s3) -> dict[str, tuple[Path, str]]:
    """``{source: (local folder, its copy's URL)}``: a parquet snapshot (test split unlabelled) and tar shards."""
    splits = read_layout(split_folders).splits
    snapshot = write_parquet_snapshot(splits, NAMES, tmp_path / "snapshot", hidden=("test",))
    shards = write_wds_shards(splits, tmp_path / "shards")
    return {
        "parquet": (snapshot, upload(s3, snapshot, "snapshot")),
        "webdataset": (shards, upload(s3, shards, "shards")),
    }


def test_bucket_sources_are_found_and_read_as_on_disk(sources, s3):
    s3.put_object(Bucket="imagenet", Key="optimized/dataset.json", Body=b"{}")
    assert backend_of("s3://imagenet/optimized") == "optimized"  # LitData's, as before
    for name, (local, url) in sources.items():
        assert backend_of(url) == name
        on_disk, in_bucket = open_layout(local, (0.8, 0.1, 0.1), 0), open_layout(url, (0.8, 0.1, 0.1), 0)
        assert in_bucket.classes == on_disk.classes and in_bucket.kind == on_disk.kind
        for split, records in on_disk.records.items():
            remote = pickle.loads(pickle.dumps(in_bucket.records[split]))  # as a DataLoader worker gets it
            assert len(remote) == len(records) and remote.unlabelled == records.unlabelled
            for i in range(len(records)):
                expected = (records.image_bytes(i), records.label(i), records.name(i))
                assert (remote.image_bytes(i), remote.label(i), remote.name(i)) == expected
    # A brace pattern over the bucket: the shards it names, in its order.
    local, url = sources["webdataset"]
    pattern = open_layout(f"{url}/train-{{000000..000005}}.tar", (0.8, 0.1, 0.1), 0)
    assert list(pattern.records) == ["train"] and len(pattern.records["train"]) == 36
    on_disk = open_layout(local, (0.8, 0.1, 0.1), 0).records["train"]
    assert [pattern.records["train"].image_bytes(i) for i in range(36)] == [on_disk.image_bytes(i) for i in range(36)]


def test_missing_bucket_prefix_or_shard_is_one_line(sources, tmp_path, capsys):
    url = sources["webdataset"][1]
    with pytest.raises(UserError, match=r"4 shards missing, such as s3://imagenet/shards/train-000006.tar"):
        open_layout(f"{url}/train-{{000000..000009}}.tar", (0.8, 0.1, 0.1), 0)
    for data, expected in (
        ("s3://imagenet/nothing", "--data.data_dir s3://imagenet/nothing holds no dataset.json"),
        ("s3://no-such-bucket/shards", "--data.data_dir s3://no-such-bucket/shards cannot be read (NoSuchBucket"),
    ):
        assert main(fit_args(data, tmp_path / "run")) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "Traceback" not in err


def test_refused_connection_is_retried_as_configured_then_one_line(monkeypatch):
    """botocore's retries, bounded by RETRY_CONFIG, then one line naming the URL; ``random`` left as it was."""
    import socket

    from imagenet_cls.data import object_store

    with socket.socket() as probe:  # a port nobody listens on: every connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    retries = {**object_store.RETRY_CONFIG["retries"], "total_max_attempts": 3}
    monkeypatch.setitem(object_store.RETRY_CONFIG, "retries", retries)
    store = object_store.ObjectStore({"endpoint_url": f"http://127.0.0.1:{port}", "aws_access_key_id": "k",
                                      "aws_secret_access_key": "s3cr3t-value", "region_name": "us-east-1"})  # fmt: skip
    attempts = []
    store.client.meta.events.register("before-send.s3", lambda **_: attempts.append(1))
    random.seed(5)
    with pytest.raises(UserError) as raised:
        store.list("s3://imagenet/shards")
    assert random.random() == random.Random(5).random()  # the backoff's jitter drew from a kept state
    assert len(attempts) == 3
    message = str(raised.value)
    assert message.startswith("s3://imagenet/shards cannot be read (EndpointConnectionError")
    assert "\n" not in message and "s3cr3t-value" not in message


@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_fit_validate_predict_from_s3_equal_local(sources, tmp_path, source, capsys, caplog):
    """One epoch from the bucket gives the local copy's weights bitwise; validate and predict give its numbers."""
    local, url = sources[source]
    # The endpoint and credentials from --data.storage_options (a secret that must be written nowhere).
    endpoint = os.environ.pop("AWS_ENDPOINT_URL")
    secret = "s3cr3t-in-storage-options"
    keys = {"endpoint_url": endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": secret}
    options = ["--data.storage_options", json.dumps(keys)]
    deterministic = ("--trainer.max_epochs", "1", "--trainer.deterministic", "true")
    assert main(fit_args(local, tmp_path / "local", *deterministic)) == 0
    assert main(fit_args(url, tmp_path / "bucket", *deterministic, *options)) == 0
    expected = torch.load(tmp_path / "local" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(tmp_path / "bucket" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not differing_tensors(expected["state_dict"], got["state_dict"])

    ckpt = str(tmp_path / "local" / "checkpoints" / "last.ckpt")
    metrics = {}
    for name, data, extra in (("local", local, []), ("bucket", url, options)):
        cli = ImageNetCLI(args=["validate", "--ckpt_path", ckpt, "--data.data_dir", str(data), *FAST_TRAINER,
                                "--data.num_workers", "0", "--data.batch_size", "4", *extra])  # fmt: skip
        metrics[name] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["bucket"]["val_images"] == 12 and metrics["bucket"]["val_acc"] == metrics["local"]["val_acc"]
    assert metrics["bucket"]["val_loss"] == pytest.approx(metrics["local"]["val_loss"], abs=1e-6)

    tables = {}
    for name, spec, extra in (("local", local / "val", []), ("bucket", f"{url}/val", options)):
        out = tmp_path / f"predict_{name}"
        # 2 workers (each opens its own client); an earlier run's ONNX Runtime session, left as garbage, would be
        # freed in a forked worker and hang there (pthread_cond_destroy): collected here first.
        gc.collect()
        args = ["predict", *TINY_MODEL, *untrained_weights(tmp_path), *FAST_TRAINER, "--data.num_workers", "2",
                "--data.predict_path", str(spec), "--writer.output_dir", str(out), *extra]  # fmt: skip
        assert main(args) == 0
        tables[name] = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    local_rows, bucket_rows = tables["local"], tables["bucket"]
    assert len(bucket_rows) == 12 and (bucket_rows["error"] == "").all()
    assert list(bucket_rows["path"]) == [path.replace(str(local), url) for path in local_rows["path"]]
    assert bucket_rows.drop(columns="path").equals(local_rows.drop(columns="path"))

    said = capsys.readouterr()
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert secret not in said.out + said.err + caplog.text and not any(secret.encode() in b for b in written)
