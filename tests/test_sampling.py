"""The training order: a full shuffle for folders, a grouped shuffle for records stored many to a file (parquet row
groups, WebDataset shards): every sample once per epoch over 1, 2 and 3 processes, reads within a few groups at a
time, reproducible, and resumable mid-epoch."""

import random

import numpy as np
import pytest
import torch

from imagenet_cls.data.sampling import ResumableSampler, grouped_order, seeded

# 13 groups of uneven sizes (the last row group of each file is short): 1,000 samples
SIZES = [100, 100, 37, 100, 100, 100, 63, 100, 100, 100, 50, 25, 25]
GROUPS = np.concatenate([[0], np.cumsum(SIZES)])


def _orders(world: int, window: int = 64, epoch: int = 0) -> list[list[int]]:
    samplers = [ResumableSampler(1000, 7, world, rank, GROUPS, window) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [[index for index, _ in sampler] for sampler in samplers]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_once_per_epoch_in_equal_shares(world):
    orders = _orders(world)
    share = -(-1000 // world)
    assert [len(order) for order in orders] == [share] * world
    everything = [index for order in orders for index in order]
    assert set(everything) == set(range(1000))  # each sample; repeats only to pad the shares to equal length
    assert len(everything) - len(set(everything)) == share * world - 1000


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_window_reads_a_few_groups(world):
    """A window of 64 samples spans at most 3 groups of >= 25 (plus the tail handed over to even out the shares)."""
    group_of = np.searchsorted(GROUPS, np.arange(1000), side="right") - 1
    for order in _orders(world):
        windows = [order[start : start + 64] for start in range(0, len(order), 64)]
        spans = [len(set(group_of[window].tolist())) for window in windows]
        assert max(spans[:-2]) <= 4, spans  # a full shuffle of 1,000 over 13 groups: ~13 groups a window
        assert np.mean(spans) < 4, spans


def test_the_order_is_shuffled_and_changes_with_the_epoch_only():
    first, again, next_epoch = _orders(1)[0], _orders(1)[0], _orders(1, epoch=1)[0]
    assert first == again and first != next_epoch
    assert first != sorted(first)
    starts = [order[0] for order in (_orders(1, epoch=e)[0] for e in range(8))]
    assert len({int(np.searchsorted(GROUPS, s, side="right")) for s in starts}) > 2  # groups shuffled, not in order


def test_a_dataset_no_larger_than_the_window_is_shuffled_whole_as_folders_are():
    for window in (0, 1000, 4096):
        grouped = ResumableSampler(1000, 7, 2, 1, GROUPS, window)
        plain = ResumableSampler(1000, 7, 2, 1)
        assert list(grouped) == list(plain)


def test_resume_at_continues_the_same_grouped_order():
    sampler = ResumableSampler(1000, 7, 3, 2, GROUPS, 64)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.resume_at(4, 120)
    assert list(sampler) == whole[120:]
    assert list(sampler) == whole  # only the next iteration skips


def test_fewer_groups_than_processes_still_gives_each_sample_once():
    groups = np.array([0, 10, 11])  # 2 groups for 3 processes, 11 samples
    orders = grouped_order(groups, 0, 3, 4, 2)
    assert [len(order) for order in orders] == [4, 4, 4]
    assert set(np.concatenate(orders).tolist()) == set(range(11))


def test_rows_sorted_by_class_are_told_apart_from_shuffled_ones():
    from imagenet_cls.data.sampling import classes_per_group

    sorted_labels = np.repeat(np.arange(10), 100)  # 10 classes of 100 rows, stored in order
    found, shuffled = classes_per_group(GROUPS, sorted_labels)
    assert found < 2.5 and shuffled == 10
    found, _ = classes_per_group(GROUPS, np.random.default_rng(0).permutation(sorted_labels))
    assert found > 9


def test_training_on_a_sorted_parquet_warns_with_the_fix(split_folders, tmp_path, caplog):
    from types import SimpleNamespace

    from imagenet_cls.data.datamodule import ImageNetDataModule
    from imagenet_cls.data.layout import read_layout
    from tests.record_sources import write_parquet_snapshot

    data = write_parquet_snapshot(read_layout(split_folders).splits, ["red", "green", "blue"], tmp_path / "sorted")
    for window, warned in ((8, True), (0, False)):
        caplog.clear()
        data_module = ImageNetDataModule(data_dir=data, batch_size=4, num_workers=0, shuffle_window=window)
        data_module.trainer = SimpleNamespace(world_size=1, global_rank=0)
        data_module.set_preprocessing({"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0})
        data_module.setup("fit")
        data_module.train_dataloader()
        messages = [r.getMessage() for r in caplog.records if "sorted by class" in r.getMessage()]
        assert bool(messages) == warned, caplog.text
        if warned:
            assert "--data.shuffle_window 0" in messages[0] and str(data) in messages[0]


def test_a_resumed_run_keeps_the_window_its_checkpoint_was_written_with(caplog):
    from types import SimpleNamespace

    from imagenet_cls.data.sampling import training_sampler

    class Records:
        records = SimpleNamespace(labels=np.random.default_rng(0).integers(0, 10, 1000))

        def __len__(self) -> int:
            return 1000

        def groups(self) -> np.ndarray:
            return GROUPS

    dataset = Records()
    sampler = training_sampler(dataset, 7, 1, 0, 10, 1024, (3, 5, 64), "--data.data_dir x")
    assert sampler.window == 64 and "the checkpoint's 64 is kept" in caplog.text
    uninterrupted = ResumableSampler(1000, 7, 1, 0, GROUPS, 64)
    uninterrupted.set_epoch(3)
    assert list(sampler) == list(uninterrupted)[50:]  # epoch 3 after its first 5 batches of 10


class _Draws(torch.utils.data.Dataset):
    """Each item: what torch, NumPy and ``random`` draw under ``seeded(seed)``, as an augmentation would."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        with seeded(1000 + index):
            return torch.rand(2), np.random.rand(2), random.random()


def test_seeded_draws_alike_in_workers_and_restores_the_main_process_generators(monkeypatch):
    def seeds_cuda(seed):  # torch.manual_seed does; each call formats the call stack (~130 us an item)
        raise AssertionError("seeded() seeded CUDA's generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeds_cuda)
    dataset = _Draws()
    torch.default_generator.manual_seed(5), np.random.seed(5), random.seed(5)
    main = [dataset[index] for index in range(4)]
    after = torch.rand(1), np.random.rand(1), random.random()
    torch.default_generator.manual_seed(5), np.random.seed(5), random.seed(5)
    assert (
        torch.equal(after[0], torch.rand(1)),
        np.array_equal(after[1], np.random.rand(1)),
        after[2] == random.random(),
    ) == (True, True, True)
    monkeypatch.undo()  # the DataLoader seeds its workers with torch.manual_seed
    workers = list(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2))
    for (torch_a, numpy_a, random_a), (torch_b, numpy_b, random_b) in zip(main, workers, strict=True):
        assert torch.equal(torch_a, torch_b) and np.array_equal(numpy_a, numpy_b) and random_a == random_b
