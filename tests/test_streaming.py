"""LitData optimized datasets: written by prepare --format litdata, read by fit/validate locally and from S3.

The S3 tests talk to moto's S3 server on 127.0.0.1 (a free port, dummy credentials): nothing leaves the machine.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_cls.cli import ImageNetCLI, main
from imagenet_cls.data.classes import read_class_map
from imagenet_cls.data.datamodule import scan_data_dir
from imagenet_cls.data.layout import read_layout
from imagenet_cls.errors import UserError
from imagenet_cls.prepare.sources import main as prepare_main
from tests.conftest import (
    COLOURS,
    FAST_TRAINER,
    NAMES,
    TINY_MODEL,
    differing_tensors,
    fit_args,
    untrained_weights,
    upload,
    write_image,
)

CLI = str(Path(__file__).resolve().parents[1] / "cli.py")


def optimize(source: Path, dest: Path, *extra: str) -> Path:
    assert prepare_main([str(source), str(dest), "--format", "litdata", "--no-progress", *extra]) == 0
    return dest


def items(split_dir: Path) -> list[dict]:
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    from litdata import StreamingDataset

    dataset = StreamingDataset(str(split_dir))
    return [dataset[i] for i in range(len(dataset))]


def validate(data: str | Path, ckpt: Path, *extra: str) -> dict[str, float]:
    cli = ImageNetCLI(args=["validate", "--ckpt_path", str(ckpt), "--data.data_dir", str(data), *FAST_TRAINER,
                            "--data.num_workers", "0", "--data.batch_size", "4", *extra])  # fmt: skip
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}


def test_optimize_keeps_bytes_labels_names_and_classes(class_folders, tmp_path, capsys, monkeypatch):
    import imagenet_cls.prepare.litdata_writer as writer

    monkeypatch.setattr(writer, "ITEMS_PER_CALL", 7)  # a split written in several appended batches keeps its order
    before = {p: p.read_bytes() for p in class_folders.rglob("*") if p.is_file()}
    dest = optimize(class_folders, tmp_path / "optimized")
    manifest = json.loads((dest / "dataset.json").read_text())
    assert manifest["classes"] == sorted(COLOURS)
    assert manifest["splits"] == {"train": 24, "val": 3, "test": 3}
    layout = read_layout(class_folders)  # the split the folder reader makes: the same files in the same order
    for split, samples in layout.splits.items():
        stored = items(dest / split)
        assert [(item["name"], int(item["label"])) for item in stored] == [
            (os.path.relpath(path, class_folders), label) for path, label in samples
        ]
        assert all(bytes(item["image"]) == Path(path).read_bytes() for item, (path, _) in zip(stored, samples))
    assert read_class_map(dest / "folder_num_class_map.txt") == NAMES
    # What the evaluation report shows of an item: the same picture and name as from the file.
    from imagenet_cls.data.datasets import ImageFileDataset
    from imagenet_cls.data.streaming import StreamingImageDataset

    files = ImageFileDataset(layout.splits["val"], transform=None)
    streamed = StreamingImageDataset(str(dest / "val"), 3, transform=None)
    assert streamed.describe(2) == str(dest / "val" / os.path.relpath(files.describe(2), class_folders))
    assert streamed.rgb(2).tobytes() == files.rgb(2).tobytes() and streamed.rgb(2).size == (24, 24)
    with pytest.raises(UserError, match=f"one split of an optimized dataset: give its parent {dest}"):
        scan_data_dir(dest / "val", (0.8, 0.1, 0.1), 0)
    assert {p: p.read_bytes() for p in class_folders.rglob("*") if p.is_file()} == before  # source untouched
    capsys.readouterr()
    optimize(class_folders, dest)  # a rerun keeps finished splits
    assert capsys.readouterr().err.count("already optimized") == 3
    index = json.loads((dest / "train" / "index.json").read_text())
    index["chunks"] = index["chunks"][:-1]  # a split cut short between two appended batches
    (dest / "train" / "index.json").write_text(json.dumps(index))
    optimize(class_folders, dest)
    err = capsys.readouterr().err
    assert err.count("already optimized") == 2 and "train: 24 images" in err
    assert len(items(dest / "train")) == 24


def test_optimize_with_a_worker_killed_is_one_line_and_keeps_the_finished_split(class_folders, tmp_path, capsys,
                                                                                 monkeypatch):  # fmt: skip
    import signal

    import imagenet_cls.prepare.litdata_writer as writer

    first_val = read_layout(class_folders).splits["val"][0][0]
    encode = writer.encode_sample

    def killed_in_val(item, **kwargs):  # as the out-of-memory killer would: LitData itself returns as if done
        if item[0] == first_val:
            os.kill(os.getpid(), signal.SIGKILL)
        return encode(item, **kwargs)

    monkeypatch.setattr(writer, "encode_sample", killed_in_val)
    dest = tmp_path / "optimized"
    capsys.readouterr()
    assert prepare_main([str(class_folders), str(dest), "--format", "litdata", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: optimizing val into {dest / 'val'} failed (LitData indexed ") and (
        "a worker process died" in error
    )
    assert sorted(path.name for path in dest.iterdir()) == ["dataset.json", "train"]  # no val, no .val.partial
    assert json.loads((dest / "dataset.json").read_text())["splits"] == {"train": 24}
    monkeypatch.setattr(writer, "encode_sample", encode)
    optimize(class_folders, dest)
    assert capsys.readouterr().err.count("already optimized") == 1  # train kept; val and test written
    assert [len(items(dest / split)) for split in ("train", "val", "test")] == [24, 3, 3]


def test_max_side_reencodes_only_larger_images(tmp_path):
    source = tmp_path / "src"
    big = write_image(source / "train" / "n00000001" / "big.jpg", (200, 30, 30), size=(120, 80))
    small = write_image(source / "train" / "n00000002" / "small.jpg", (30, 200, 30), size=(24, 24))
    dest = optimize(source, tmp_path / "optimized", "--max-side", "48", "--quality", "85")
    stored = {item["name"]: bytes(item["image"]) for item in items(dest / "train")}
    assert stored[str(small.relative_to(source))] == small.read_bytes()
    import io

    with Image.open(io.BytesIO(stored[str(big.relative_to(source))])) as image:
        assert (image.format, image.size) == ("JPEG", (48, 32))
    assert json.loads((dest / "dataset.json").read_text())["options"] == {"max_side": 48, "quality": 85}


def test_optimize_reads_a_flat_folder_in_one_step_and_names_a_broken_tar(tmp_path, capsys):
    flat = tmp_path / "flat"
    colours = {1: (200, 0, 0), 2: (0, 0, 200)}
    files = [
        write_image(flat / f"n0000000{c}_{i}.jpg", colour, seed=i) for c, colour in colours.items() for i in range(5)
    ]
    dest = optimize(flat, tmp_path / "out", "--split", "val")
    assert json.loads((dest / "dataset.json").read_text())["classes"] == ["n00000001", "n00000002"]
    stored = items(dest / "val")
    by_name = {item["name"]: item for item in stored}  # each class's files in its seeded split order
    assert sorted(by_name) == sorted(f.name for f in files) and len(stored) == 10
    assert all(bytes(by_name[f.name]["image"]) == f.read_bytes() for f in files)
    assert all(int(by_name[f.name]["label"]) == int(f.name[8]) - 1 for f in files)
    assert not any(p.is_dir() for p in dest.glob("val/*"))  # no intermediate class folders
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "ILSVRC2012_img_val.tar").write_bytes(b"")
    capsys.readouterr()
    assert prepare_main([str(archives), str(tmp_path / "out2"), "--format", "litdata"]) == 2
    error = capsys.readouterr().err.strip()
    tar = archives / "ILSVRC2012_img_val.tar"
    assert error == f"error: {tar} is truncated or not a tar (empty file): download it again"
    assert not (tmp_path / "out2").exists()


def test_fit_and_validate_from_optimized_equal_folders(class_folders, tmp_path):
    """Same order, augmentations and decode: the weights after an epoch and the metrics are identical."""
    dest = optimize(class_folders, tmp_path / "optimized")
    deterministic = ("--trainer.max_epochs", "1", "--trainer.deterministic", "true")
    assert main(fit_args(class_folders, tmp_path / "folders", *deterministic)) == 0
    assert main(fit_args(dest, tmp_path / "streamed", *deterministic)) == 0
    from_folders = torch.load(tmp_path / "folders" / "checkpoints" / "last.ckpt", weights_only=True)
    streamed = torch.load(tmp_path / "streamed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert streamed["hyper_parameters"]["class_names"] == [NAMES[c] for c in sorted(COLOURS)]
    different = differing_tensors(from_folders["state_dict"], streamed["state_dict"])
    assert not different, different
    ckpt = tmp_path / "folders" / "checkpoints" / "last.ckpt"
    expected, got = validate(class_folders, ckpt), validate(dest, ckpt)
    assert got["val_images"] == 3 and got["val_acc"] == expected["val_acc"]
    assert got["val_loss"] == pytest.approx(expected["val_loss"], abs=1e-6)


def test_bad_image_in_an_optimized_dataset_is_named_or_skipped(class_folders, tmp_path, capsys):
    layout = read_layout(class_folders)
    bad = Path(layout.splits["val"][0][0])
    bad.write_bytes(b"not an image")
    dest = optimize(class_folders, tmp_path / "optimized")
    assert main(fit_args(class_folders, tmp_path / "run", "--trainer.max_epochs", "1", "--data.skip_bad_images",
                         "true")) == 0  # fmt: skip
    weights = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert validate(dest, weights, "--data.skip_bad_images", "true")["val_images"] == 2
    capsys.readouterr()
    assert main(["validate", "--ckpt_path", str(weights), "--data.data_dir", str(dest), *FAST_TRAINER,
                 "--data.num_workers", "0"]) == 2  # fmt: skip
    assert f"optimized/val/{bad.relative_to(class_folders)}" in capsys.readouterr().err


def predict(spec: str | Path, weights: list[str], out: Path, *extra: str) -> int:
    return main(["predict", *TINY_MODEL, *weights, "--data.predict_path", str(spec), "--data.num_workers", "0",
                 "--data.batch_size", "4", "--writer.output_dir", str(out), *FAST_TRAINER, *extra])  # fmt: skip


def predictions(out: Path) -> list[tuple[str, str, str, str]]:
    import pandas as pd

    rows = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    return list(zip(rows["path"], rows["output"], rows["pred_folder"], rows["prob"]))


def test_a_batch_from_a_bucket_is_read_concurrently_and_equals_reading_in_turn(class_folders, tmp_path, monkeypatch):
    """Each item from a bucket is an HTTP request: a batch's requests overlap; the items and RNG are unchanged."""
    import random
    import threading
    import time

    import litdata

    from imagenet_cls.data.streaming import StreamingImageDataset

    dest = optimize(class_folders, tmp_path / "optimized")
    in_turn = StreamingImageDataset(str(dest / "train"), 24, image_width)
    batch = [(i, 100 + i) for i in (5, 3, 17, 3, 0, 11, 8, 20)]  # (index, seed) as the sampler gives; a repeat
    expected = [in_turn[index] for index in batch]
    in_flight, most, reads, failed = [0], [0], [], []
    lock, local_reader, original = threading.Lock(), threading.Lock(), litdata.StreamingDataset.__getitem__

    def slow_request(self, index):  # a request that waits on the network, and fails once for item 17
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            reads.append(index)
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        if index == 17 and not failed:
            failed.append(index)
            raise ConnectionError("reset by peer")
        with local_reader:  # LitData's reader of local chunks (an mmap it moves) is not thread-safe; its range
            return original(self, index)  # requests to a bucket are: only this stand-in needs the lock

    monkeypatch.setattr(litdata.StreamingDataset, "__getitem__", slow_request)
    from_bucket = StreamingImageDataset(str(dest / "train"), 24, image_width, timeout=30)
    from_bucket.items.remote = True  # the local chunks stand in for a bucket: only the waiting matters here
    random.seed(7)
    got = from_bucket.__getitems__(batch)
    assert random.random() == random.Random(7).random()  # reads never move the augmentations' generator
    assert got == expected
    assert most[0] > 1, "the batch's requests did not overlap"
    assert sorted(reads) == sorted([0, 3, 5, 8, 11, 17, 17, 20])  # each once; item 17 again after its failure


def test_predict_on_an_optimized_split_equals_the_folder(class_folders, tmp_path, capsys):
    """The same predictions and annotated copies (mirroring the source's tree) as from the split's files."""
    dest = optimize(class_folders, tmp_path / "optimized")
    weights = untrained_weights(tmp_path)
    files = tmp_path / "val_files"  # the val split's files, as predict on folders reads them
    for path, _ in read_layout(class_folders).splits["val"]:
        target = files / os.path.relpath(path, class_folders)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    assert predict(dest / "val", weights, tmp_path / "streamed") == 0
    assert predict(files, weights, tmp_path / "files") == 0
    streamed, expected = predictions(tmp_path / "streamed"), predictions(tmp_path / "files")
    assert len(streamed) == 3
    assert [(path, out) for path, out, *_ in streamed] == [
        (f"{dest / 'val'}/{os.path.relpath(path, files)}", f"images/{os.path.relpath(path, files)}")
        for path, *_ in expected
    ]
    assert [row[2:] for row in streamed] == [row[2:] for row in expected]
    for _, out, *_ in streamed:
        written, reference = (cv2.imread(str(tmp_path / run / out)) for run in ("streamed", "files"))
        assert written is not None and np.array_equal(written, reference)
    capsys.readouterr()
    assert predict(dest, weights, tmp_path / "whole") == 2
    assert f"{dest} is a whole optimized dataset: give one split ({dest}/train, " in capsys.readouterr().err
    (dest / "valid").mkdir()
    (dest / "valid" / "index.json").write_text("{}")
    assert predict(dest / "valid", weights, tmp_path / "missing") == 2
    assert f"the optimized dataset {dest} has no split 'valid'" in capsys.readouterr().err


def test_split_options_on_a_dataset_with_fixed_splits_are_a_warning(class_folders, split_folders, tmp_path, caplog):
    dest = optimize(class_folders, tmp_path / "optimized")
    for data in (dest, split_folders):
        caplog.clear()
        scan_data_dir(data, (0.5, 0.25, 0.25), 0)
        assert f"--data.split/--data.split_seed do not apply to {data}" in caplog.text
    caplog.clear()
    scan_data_dir(dest, (0.8, 0.1, 0.1), 0)
    scan_data_dir(class_folders, (0.5, 0.25, 0.25), 3)
    assert "do not apply" not in caplog.text


# ---- S3 on the loopback -----------------------------------------------------------------------------------------
def _fit(data: str | Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "fit", *TINY_MODEL, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.deterministic", "true", "--trainer.max_epochs", "2",
        "--test_after_fit", "false", "--checkpoint_every_n_steps", "2", "--data.batch_size", "4",
        "--data.num_workers", "2", "--data.auto_augment", "rand-m5-n2-mstd0.5", "--data.cache_dir",
        str(root.parent / "chunk_cache"), *extra,
    ]  # fmt: skip
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # 45 s: make test keeps a fit from a bucket (test_s3_faults.py) and kill -9 resumes (test_resume.py)
def test_fit_from_s3_killed_and_resumed_equals_local_then_validate_equal(class_folders, tmp_path, s3):
    local = optimize(class_folders, tmp_path / "optimized")
    url = upload(s3, local, "optimized")
    reference = _fit(local, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_root = tmp_path / "killed"
    # 24 training images, batch 4: 6 steps per epoch; killed at step 9 (mid epoch 1), last saved at step 8.
    killed = _fit(url, killed_root, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    resumed = _fit(url, killed_root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)
    final = torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == 12
    different = differing_tensors(expected["state_dict"], final["state_dict"])
    assert not different, different

    ckpt = killed_root / "checkpoints" / "last.ckpt"
    # The endpoint from --data.storage_options instead of AWS_ENDPOINT_URL.
    endpoint = os.environ.pop("AWS_ENDPOINT_URL")
    options = ("--data.storage_options", json.dumps({"endpoint_url": endpoint}))
    cache = ("--data.cache_dir", str(tmp_path / "validate_cache"))
    from_bucket, from_disk = validate(url, ckpt, *cache, *options), validate(local, ckpt)
    assert from_bucket["val_images"] == 3 and from_bucket["val_acc"] == from_disk["val_acc"]
    assert from_bucket["val_loss"] == pytest.approx(from_disk["val_loss"], abs=1e-6)
    # predict on the bucket's val split: the local split's predictions, named by URL
    for spec, out in ((f"{url}/val", "p_bucket"), (local / "val", "p_disk")):
        args = ["predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(spec), *cache, *options]
        assert main([*args, "--data.num_workers", "0", "--writer.output_dir", str(tmp_path / out), *FAST_TRAINER]) == 0
    bucket, disk = predictions(tmp_path / "p_bucket"), predictions(tmp_path / "p_disk")
    assert [row[0] for row in bucket] == [row[0].replace(str(local), url) for row in disk] and len(bucket) == 3
    assert [row[1:] for row in bucket] == [row[1:] for row in disk]


def test_unreadable_bucket_is_one_line(s3, tmp_path, capsys):
    assert main(fit_args("s3://imagenet/missing", tmp_path / "run")) == 2
    message = capsys.readouterr().err
    assert "--data.data_dir s3://imagenet/missing holds no dataset.json" in message and "check the URL" in message
    assert main(fit_args("s3://no-such-bucket/data", tmp_path / "run")) == 2
    message = capsys.readouterr().err.strip()
    assert "s3://no-such-bucket/data cannot be read (NoSuchBucket" in message and "storage_options" in message
    assert "Traceback" not in message


def test_litdata_opening_a_bucket_draws_from_random_and_our_reader_does_not(class_folders, tmp_path, s3):
    """The LitData defect worked around in StreamingImageDataset: opening a remote dataset moves ``random``."""
    import random

    from litdata import StreamingDataset

    from imagenet_cls.data.streaming import StreamingImageDataset

    url = upload(s3, optimize(class_folders, tmp_path / "optimized", "--split", "val"), "val-only")
    random.seed(0)
    StreamingDataset(f"{url}/val", cache_dir=str(tmp_path / "cache1"))
    moved = random.random()
    random.seed(0)
    dataset = StreamingImageDataset(f"{url}/val", 30, lambda image: image.width, cache_dir=str(tmp_path / "cache2"))
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    assert dataset[0] == (24, 0) and dataset[1] == (24, 0)
    kept = random.random()
    random.seed(0)
    assert kept == random.random() != moved
    # Only Python's generator is guarded (the others cost 50 us a read): LitData and botocore must not draw from them.
    assert (np.random.get_state()[1] == numpy_state).all() and torch.equal(torch.get_rng_state(), torch_state)


def image_width(image) -> int:
    return image.width


def test_reader_opens_once_per_process_and_reads_each_item_once(class_folders, tmp_path, monkeypatch):
    """Opening LitData's dataset costs ~1 ms (index, config): once per process, not per item; one read per item,
    and each item as LitData itself reads it."""
    import pickle

    import litdata

    from imagenet_cls.data.streaming import ChunkFiles, StreamingImageDataset

    dest = optimize(class_folders, tmp_path / "optimized")
    as_litdata_reads = items(dest / "train")
    opened, reads = [], []
    original_init, original_read = litdata.StreamingDataset.__init__, ChunkFiles.item_bytes
    monkeypatch.setattr(litdata.StreamingDataset, "__init__", lambda self, *a, **k: opened.append(1) or
                        original_init(self, *a, **k))  # fmt: skip
    monkeypatch.setattr(ChunkFiles, "item_bytes", lambda self, i: reads.append(i) or original_read(self, i))
    dataset = StreamingImageDataset(str(dest / "train"), 24, image_width)
    assert [dataset.items[i] for i in range(24)] == as_litdata_reads
    reads.clear()
    assert [dataset[(i, i)] for i in range(24)] == [(24, label) for _, label in read_layout(class_folders).splits[
        "train"]]  # fmt: skip
    assert len(opened) == 1 and sorted(reads) == list(range(24))
    copy = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker gets: no reader, opens its own once
    assert copy.items._reader is None and [copy[i] for i in range(3)] == [dataset[i] for i in range(3)]
    assert len(opened) == 2


def test_a_local_split_read_in_random_order_reads_the_items_not_the_chunks(tmp_path):
    """Training reads in random order: from disk, 20 random images cost about their own bytes, not their chunks'.

    (LitData's reader memory-maps the chunk: page faults read ahead around each item and it advises the kernel to
    read the whole chunk; on this machine's disk 10 random reads of a 100 MB split pulled ~57 MB.)
    """
    from imagenet_cls.data.streaming import OptimizedSplit

    source = tmp_path / "src"
    noise = np.random.default_rng(0)
    for i in range(120):  # ~60 KB noise JPEGs: one ~7 MB chunk
        path = source / "train" / f"n{i % 3:08d}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise.integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(path, quality=95)
    dest = optimize(source, tmp_path / "optimized")
    split = OptimizedSplit(str(dest / "train"), 120)  # opened by the first read, below: that is counted too
    chunk = next((dest / "train").glob("chunk-*.bin"))
    control = shutil.copyfile(chunk, tmp_path / "control.bin")

    def disk_bytes(read, *files: Path) -> int:
        for file in files:
            descriptor = os.open(file, os.O_RDONLY)
            os.fsync(descriptor)  # written pages leave the page cache only once on disk
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
            os.close(descriptor)
        before = int(Path("/proc/self/io").read_text().split("read_bytes: ")[1].split()[0])
        read()
        return int(Path("/proc/self/io").read_text().split("read_bytes: ")[1].split()[0]) - before

    if disk_bytes(control.read_bytes, control) < control.stat().st_size // 2:
        pytest.skip(f"{tmp_path} is not on a disk whose reads this process can count (tmpfs?)")
    order = np.random.default_rng(1).permutation(120)[:20].tolist()
    read = disk_bytes(lambda: [split[i] for i in order], chunk)
    images = sum(len(split[i]["image"]) for i in order)
    assert read < chunk.stat().st_size / 2 and read < 8 * images, (read, images, chunk.stat().st_size)


@pytest.mark.slow  # 26 s: make test keeps DDP fits on folders (test_ddp.py), records' DDP loaders (test_records_ddp.py)
def test_ddp_fit_from_optimized_equals_folders(split_folders, tmp_path):
    """2 processes (gloo): each image once per epoch over both ranks, and the same weights as from the folders."""
    import pandas as pd

    dest = optimize(split_folders, tmp_path / "optimized")

    def fit(data: Path, name: str) -> Path:
        args = [
            "fit", *TINY_MODEL, "--data.data_dir", str(data), "--data.num_workers", "0", "--data.batch_size", "4",
            "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1", "--trainer.deterministic", "true",
            "--test_after_fit", "false", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", str(tmp_path / name),
        ]  # fmt: skip
        result = subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = [log.parent for log in (tmp_path / name).rglob("metrics.csv")]
        return run

    streamed, folders = fit(dest, "streamed"), fit(split_folders, "folders")
    assert pd.read_csv(streamed / "metrics.csv")["val_images"].dropna().eq(12).all()
    expected = torch.load(folders / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    got = torch.load(streamed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not differing_tensors(expected, got)
