"""The tar offset index of WebDataset shards in a bucket is kept on disk: a second open makes no index GET.

Requests are counted by the proxy of :mod:`tests.s3_faults` between boto3 and moto's server (no fault scheduled).
"""

import os
import shutil

import numpy as np
import pytest

from imagenet_cls.data.backends import open_layout
from imagenet_cls.data.datamodule import ImageNetDataModule
from imagenet_cls.data.layout import read_layout
from imagenet_cls.data.wds_index import index_path
from tests.conftest import upload
from tests.record_sources import write_wds_shards
from tests.s3_faults import FaultProxy

pytest.importorskip("webdataset")

SPLIT = (0.8, 0.1, 0.1)
MARKER = "s3cr3t-MARKER-wds-index"


@pytest.fixture
def shards(split_folders, tmp_path, s3, monkeypatch):
    """(local shards, their copy's URL, a counting proxy the client goes through, the moto client)."""
    local = write_wds_shards(read_layout(split_folders).splits, tmp_path / "shards")
    url = upload(s3, local, "shards")
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield local, url, proxy, s3


def tar_requests(proxy: FaultProxy) -> dict[str, int]:
    """``{shard name: requests}`` the proxy received for ``.tar`` objects (GETs and HEADs)."""
    counts: dict[str, int] = {}
    for (key, _), count in proxy.requests.items():
        if key.endswith(".tar"):
            counts[key.rsplit("/", 1)[-1]] = counts.get(key.rsplit("/", 1)[-1], 0) + count
    return counts


def index_of(layout) -> dict:
    """Each split's index arrays and names, to compare two opens."""
    return {
        split: (r.shards, r.shard_of.tolist(), r.offsets.tolist(), r.sizes.tolist(), r.labels.tolist(), r.names)
        for split, r in layout.records.items()
    }


def assert_same_records(got, expected) -> None:
    """Same classes, index and, for every sample, the same image bytes, label and name."""
    assert got.classes == expected.classes and list(got.records) == list(expected.records)
    for split, records in expected.records.items():
        remote = got.records[split]
        assert len(remote) == len(records)
        for i in range(len(records)):
            expected_sample = (records.image_bytes(i), records.label(i), records.name(i))
            assert (remote.image_bytes(i), remote.label(i), remote.name(i)) == expected_sample


def test_second_open_makes_no_index_request_and_reads_the_same_records(shards, tmp_path):
    local, url, proxy, _ = shards
    cache = tmp_path / "cache_dir"
    first = open_layout(url, SPLIT, 0, cache_dir=cache)
    counts = tar_requests(proxy)
    assert len(counts) == 10 and all(counts.values())  # every shard's headers were read
    files = sorted((cache / "wds-index").iterdir())
    assert len(files) == 10 and all(f.suffix == ".npz" for f in files)  # one per shard, no partial file left

    proxy.requests.clear()
    second = open_layout(url, SPLIT, 0, cache_dir=cache)
    assert tar_requests(proxy) == {}  # the listing only: no GET or HEAD of any shard
    assert index_of(second) == index_of(first)
    assert_same_records(second, open_layout(local, SPLIT, 0))

    # The datamodule's cache_dir reaches it; without one, $XDG_CACHE_HOME/imagenet_cls/wds-index (tests: in tmp).
    proxy.requests.clear()
    module = ImageNetDataModule(data_dir=url, cache_dir=cache)
    assert index_of(module.layout) == index_of(first) and tar_requests(proxy) == {}
    open_layout(url, SPLIT, 0)
    assert len(list((tmp_path / "cache" / "imagenet_cls" / "wds-index").iterdir())) == 10
    # Local shards are indexed as they are read (fast): nothing is kept for them.
    open_layout(local, SPLIT, 0, cache_dir=tmp_path / "local_cache")
    assert not (tmp_path / "local_cache").exists()


def test_a_changed_shard_is_indexed_again_and_only_it(shards, tmp_path):
    local, url, proxy, client = shards
    cache = tmp_path / "cache_dir"
    open_layout(url, SPLIT, 0, cache_dir=cache)
    # train-000001.tar is overwritten with other samples (another shard's: other images, labels and names).
    changed = tmp_path / "changed"
    shutil.copytree(local, changed)
    shutil.copy(local / "train-000004.tar", changed / "train-000001.tar")
    client.upload_file(str(changed / "train-000001.tar"), "imagenet", "shards/train-000001.tar")

    proxy.requests.clear()
    layout = open_layout(url, SPLIT, 0, cache_dir=cache)
    assert set(tar_requests(proxy)) == {"train-000001.tar"}
    assert_same_records(layout, open_layout(changed, SPLIT, 0))
    proxy.requests.clear()
    assert index_of(open_layout(url, SPLIT, 0, cache_dir=cache)) == index_of(layout)  # its new index was kept
    assert tar_requests(proxy) == {}


def test_a_damaged_cache_file_is_ignored_and_written_again(shards, tmp_path, caplog):
    local, url, proxy, _ = shards
    cache = tmp_path / "cache_dir"
    expected = index_of(open_layout(url, SPLIT, 0, cache_dir=cache))
    folder = cache / "wds-index"
    garbage, truncated, inconsistent, other = (index_path(folder, f"{url}/{name}") for name in (
        "train-000000.tar", "train-000001.tar", "validation-000000.tar", "test-000000.tar"))  # fmt: skip
    garbage.write_bytes(b"not an npz")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with np.load(inconsistent, allow_pickle=False) as saved:  # a label short: lengths disagree
        arrays = {name: saved[name] for name in saved.files}
    np.savez(inconsistent, **{**arrays, "labels": arrays["labels"][:-1]})
    os.replace(other, index_path(folder, f"{url}/test-000001.tar"))  # another shard's index under its name

    proxy.requests.clear()
    layout = open_layout(url, SPLIT, 0, cache_dir=cache)
    damaged = {"train-000000.tar", "train-000001.tar", "validation-000000.tar", "test-000000.tar", "test-000001.tar"}
    assert set(tar_requests(proxy)) == damaged  # these only
    assert index_of(layout) == expected
    assert_same_records(layout, open_layout(local, SPLIT, 0))
    proxy.requests.clear()
    open_layout(url, SPLIT, 0, cache_dir=cache)
    assert tar_requests(proxy) == {}  # all written again

    # A cache folder that cannot be written: indexed on every open, a warning, never an error.
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    assert index_of(open_layout(url, SPLIT, 0, cache_dir=blocked)) == expected
    assert "is not kept" in caplog.text


def test_the_cache_holds_no_secret(shards, tmp_path, monkeypatch):
    _, url, proxy, _ = shards
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    options = {"aws_access_key_id": f"AKIA{MARKER}", "aws_secret_access_key": MARKER, "aws_session_token": MARKER}
    cache = tmp_path / "cache_dir"
    layout = open_layout(url, SPLIT, 0, storage_options=options, cache_dir=cache)
    assert len(layout.records["train"]) == 36
    files = [path for path in cache.rglob("*") if path.is_file()]
    assert len(files) == 10
    for path in files:
        assert MARKER not in str(path) and MARKER.encode() not in path.read_bytes()
        assert url.encode() in path.read_bytes()  # s3://bucket/key only
    assert tar_requests(proxy)  # the options were used (moto takes any key)


def test_a_shard_without_etag_is_not_cached(shards, tmp_path, monkeypatch):
    from imagenet_cls.data.object_store import ObjectStore

    _, url, proxy, _ = shards
    monkeypatch.setattr(ObjectStore, "etag", lambda self, url: None)
    cache = tmp_path / "cache_dir"
    open_layout(url, SPLIT, 0, cache_dir=cache)
    proxy.requests.clear()
    open_layout(url, SPLIT, 0, cache_dir=cache)
    assert len(tar_requests(proxy)) == 10 and not cache.exists()
