"""Parquet and WebDataset sources under DDP (gloo, CPU) and across a kill -9: each image once per evaluation over 2
and 3 processes (13 images: uneven), and a run killed mid-epoch resumes bitwise equal to an uninterrupted one.

The default run checks the data module's loaders in 2 and 3 forked gloo processes (seconds), in the full and the
grouped shuffle (``--data.shuffle_window``), and a kill -9 resume in each; the same evaluation through the CLI's fit
and validate (Lightning's DDP launcher, minutes on 2 cores) is a slow test.
"""

import hashlib
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from imagenet_cls.data.layout import read_layout
from tests.conftest import assert_same_final_weights, make_class_folders
from tests.record_sources import write_parquet_snapshot, write_wds_shards
from tests.test_ddp import SEVEN, _validate
from tests.test_resume import _fit

pytest.importorskip("datasets")
pytest.importorskip("webdataset")


def _as(source: str, folders: Path, dest: Path, names: list[str]) -> Path:
    splits = read_layout(folders).splits
    if source == "parquet":
        return write_parquet_snapshot(splits, names, dest, files=2)
    return write_wds_shards(splits, dest, per_shard=5)


def _thirteen(tmp_path: Path, source: str) -> Path:
    """7 classes, 21 training and 13 validation images (uneven over 2 and 3 processes) as ``source``."""
    folders = tmp_path / "thirteen"
    make_class_folders(folders / "train", per_class=3, classes=SEVEN)
    make_class_folders(folders / "val", per_class=2, classes=SEVEN)
    (folders / "val" / "n00000007" / "img_001.jpg").unlink()  # 13: 7 + 6 over 2, 5 + 4 + 4 over 3
    return _as(source, folders, tmp_path / source, sorted(SEVEN))


def _rank_reads(data: Path, store: Path, world: int, rank: int, queue, window: int) -> None:
    """One gloo process: what its validation loader yields and which training records its sampler gives it."""
    import torch.distributed as dist

    from imagenet_cls.data.datamodule import ImageNetDataModule

    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=world, rank=rank)
    try:
        data_module = ImageNetDataModule(data_dir=data, batch_size=2, num_workers=1, shuffle_window=window)
        data_module.trainer = SimpleNamespace(world_size=world, global_rank=rank)
        data_module.set_preprocessing({"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0})
        data_module.setup("fit")
        val = [
            (int(label), hashlib.sha1(image.numpy().tobytes()).hexdigest())
            for images, labels, _ in data_module.val_dataloader()
            for image, label in zip(images, labels, strict=True)
        ]
        sampler = data_module.train_dataloader().sampler
        names = [data_module.datasets["train"].describe(index) for index, _ in sampler]
        dist.barrier()
        queue.put((rank, val, names))
    except BaseException as error:  # the parent's wait ends now, with the reason
        queue.put((rank, repr(error), []))
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("window", [1024, 4], ids=["full-shuffle", "grouped-shuffle"])
@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_loaders_over_2_and_3_gloo_processes_give_each_record_once(tmp_path, source, window):
    import imagenet_cls.data.datamodule  # noqa: F401  (imported once, before the forks)

    data = _thirteen(tmp_path, source)
    context = multiprocessing.get_context("fork")  # no re-import per process: seconds, not minutes
    seen = {}
    for world in (1, 2, 3):
        queue = context.Queue()
        processes = [
            context.Process(target=_rank_reads, args=(data, tmp_path / f"store{world}", world, rank, queue, window))
            for rank in range(world)
        ]
        for process in processes:
            process.start()
        results = sorted(queue.get(timeout=120) for _ in processes)
        assert all(isinstance(val, list) for _, val, _ in results), results
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
        seen[world] = results
    single_val, single_train = seen[1][0][1], seen[1][0][2]
    assert len(single_val) == 13 and len(set(single_train)) == len(single_train) == 21
    for world in (2, 3):
        val = [item for _, rank_val, _ in seen[world] for item in rank_val]
        assert sorted(val) == sorted(single_val)  # each validation image once, the same pixels and labels
        assert [len(rank_val) for _, rank_val, _ in seen[world]] == [len(range(r, 13, world)) for r in range(world)]
        assert [item for _, rank_val, _ in seen[world] for item in rank_val] == single_val  # contiguous shares
        train = [name for _, _, names in seen[world] for name in names]
        assert set(train) == set(single_train)  # every training record in the epoch, padded to equal shares only
        assert len(train) == -(-21 // world) * world


@pytest.mark.slow  # fit + validate on 1, 2 and 3 processes through the CLI: minutes on 2 cores
@pytest.mark.parametrize("source", ["parquet", "webdataset"])
def test_evaluation_over_2_and_3_processes_counts_each_record_once(tmp_path, source):
    data = _thirteen(tmp_path, source)
    from tests.test_ddp import COMMON, TINY_MODEL, _run

    root = tmp_path / "fit"
    _run("fit", *TINY_MODEL, *COMMON, "--data.data_dir", str(data), "--trainer.default_root_dir", str(root),
         "--trainer.logger", "false", "--trainer.max_epochs", "1", "--data.batch_size", "4",
         "--test_after_fit", "false", "--seed_everything", "1")  # fmt: skip
    checkpoint = root / "checkpoints" / "last.ckpt"
    metrics, summary, per_class = _validate(data, checkpoint, tmp_path / "one", 1)
    assert metrics["val_images"] == summary["images"] == 13
    for devices in (2, 3):
        ddp_metrics, ddp_summary, ddp_per_class = _validate(data, checkpoint, tmp_path / f"ddp{devices}", devices)
        assert ddp_metrics["val_images"] == 13 and ddp_summary["images"] == 13
        assert (
            ddp_metrics["val_acc"] == metrics["val_acc"] and abs(ddp_metrics["val_loss"] - metrics["val_loss"]) < 1e-5
        )
        assert ddp_per_class == per_class


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """Class folders (3 x 10 images, split 0.8/0.1/0.1) and the last checkpoint of an uninterrupted fit on them."""
    root = tmp_path_factory.mktemp("uninterrupted")
    folders = make_class_folders(root / "data")
    reference = _fit(folders, root / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    return folders, root / "reference" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("source", ["webdataset"])  # parquet: in the grouped order below
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(uninterrupted, tmp_path, source):
    """Killed and resumed on the records, the weights equal an uninterrupted run on the folders they hold (records
    read in the folders' order with the same seeds: ``test_records.py`` shows the uninterrupted runs equal)."""
    folders, reference = uninterrupted
    data = _as(source, folders, tmp_path / source, ["red", "green", "blue"])
    killed_root = tmp_path / "killed"
    # 24 training rows, batch 4: 6 steps per epoch; killed at step 9 (mid epoch 1), last saved at step 8.
    killed = _fit(data, killed_root, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    resumed = _fit(data, killed_root, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_final_weights(reference, killed_root / "checkpoints" / "last.ckpt", steps=18)


def test_kill_9_mid_epoch_then_resume_in_the_grouped_order_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    """The grouped shuffle (row groups of 4, windows of 8) resumes exactly: killed and resumed equals uninterrupted."""
    folders, _ = uninterrupted
    data = _as("parquet", folders, tmp_path / "parquet", ["red", "green", "blue"])
    window = ("--data.shuffle_window", "8")
    reference = _fit(data, tmp_path / "reference", *window)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_root = tmp_path / "killed"
    kill = ("--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step", "9")
    killed = _fit(data, killed_root, *window, *kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _fit(data, killed_root, *window, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_final_weights(tmp_path / "reference" / "checkpoints" / "last.ckpt",
                              killed_root / "checkpoints" / "last.ckpt", steps=18)  # fmt: skip
    folders_run = torch.load(uninterrupted[1], weights_only=True)["state_dict"]
    grouped_run = torch.load(killed_root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(folders_run[k], grouped_run[k]) for k in folders_run)  # another order was trained
