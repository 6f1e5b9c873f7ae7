"""The training order and per-sample seeds that make a mid-epoch resume exact.

:class:`ResumableSampler` draws each epoch's order from ``(seed, epoch)`` alone and hands each sample its own seed
(:func:`sample_seed`); datasets run an item under :func:`seeded` so its augmentations do not depend on which worker
ran before. The callback that saves and restores the rest lives in ``imagenet_cls.callbacks.resume``.

Records stored many to a file (parquet row groups, WebDataset shards) are read a group at a time: a full random
permutation of 1.28M rows would read a whole row group for each image. For them the order is :func:`grouped_order`:
the groups shuffled and dealt to the processes, then each process's images shuffled in windows of consecutive groups,
so reads stay within a few groups at a time and the cost per image does not grow with the dataset.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch.utils.data import DistributedSampler, get_worker_info

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """Shuffled ``(index, sample_seed)`` pairs for one process of ``num_replicas``, reproducible per epoch.

    The order depends only on ``seed`` and the epoch (set by Lightning through ``set_epoch``), never on the
    global random state; :meth:`resume_at` makes the next iteration of that epoch skip its first batches.
    A DistributedSampler, so Lightning does not wrap it under DDP.

    Args:
        dataset_size: Samples in the dataset.
        seed: The order's seed.
        num_replicas: Processes (DDP world size).
        rank: This process.
        groups: Start of each group of samples stored together and the end (``[0, ..., dataset_size]``), or None.
        window: With ``groups``: images shuffled together (:func:`grouped_order`); 0, or a dataset no larger: one
            random permutation of every sample (DistributedSampler's).
    """

    def __init__(
        self,
        dataset_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        groups: np.ndarray | None = None,
        window: int = 0,
    ) -> None:
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this process to skip)
        self.groups = groups if groups is not None and window > 0 and dataset_size > window else None
        self.window = window

    def resume_at(self, epoch: int, samples: int) -> None:
        """Skip the first ``samples`` of this process when epoch ``epoch`` is iterated next."""
        self._skip = (epoch, samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.groups is None:
            indices = list(super().__iter__())
        else:
            indices = grouped_order(
                self.groups, self.seed + self.epoch, self.num_replicas, self.num_samples, self.window
            )[self.rank].tolist()
        first = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            first = self._skip[1]
        self._skip = None
        for position in range(first, len(indices)):
            index = indices[position]
            yield index, sample_seed(self.seed, self.epoch, index)


def training_sampler(
    dataset,
    seed: int,
    world: int,
    rank: int,
    batch_size: int,
    window: int,
    resume_at: tuple[int, int, int | None] | None,
    where: str,
) -> ResumableSampler:
    """The training sampler of ``dataset``: grouped when it has groups (records), set to continue a resumed epoch.

    Args:
        dataset: The training dataset (a ``groups()`` method: records stored many to a file).
        seed: The order's seed.
        world: Processes (DDP world size).
        rank: This process.
        batch_size: Images per batch (to turn batches done into samples to skip).
        window: ``--data.shuffle_window``.
        resume_at: ``(epoch, batches done, the checkpoint's window or None)`` of a resumed run, else None.
        where: The option and data, for a warning.
    """
    groups = dataset.groups() if hasattr(dataset, "groups") else None
    if resume_at is not None and resume_at[2] not in (None, window):
        window = resume_at[2]  # a resumed run keeps its order: the window it was started with
        log.warning(f"--data.shuffle_window: the checkpoint's {window} is kept, so the resumed run stays exact")
    sampler = ResumableSampler(len(dataset), seed, world, rank, groups, window)
    if sampler.groups is not None and rank == 0:
        found, shuffled = classes_per_group(sampler.groups, dataset.records.labels)
        if found < 0.5 * shuffled:
            log.warning(
                f"{where}: its row groups (shards) hold {found:.1f} classes each on average (shuffled rows would "
                f"give {shuffled:.0f}): rows sorted by class make --data.shuffle_window {window}'s batches hold few "
                "classes; shuffle the rows once, or give --data.shuffle_window 0 (a full shuffle: slower on parquet)"
            )
    if resume_at is not None:  # Lightning makes the loader's first iterator before it sets the epoch: set it here
        epoch, batches, _ = resume_at
        drop_last = len(dataset) > batch_size
        per_epoch = len(sampler) // batch_size if drop_last else math.ceil(len(sampler) / batch_size)
        if batches < per_epoch:  # a mid-epoch checkpoint: continue after the batches done
            sampler.set_epoch(epoch)
            sampler.resume_at(epoch, batches * batch_size)
        else:  # an end-of-epoch checkpoint: the next epoch
            sampler.set_epoch(epoch + 1)
    return sampler


def grouped_order(groups: np.ndarray, seed: int, world: int, per_rank: int, window: int) -> list[np.ndarray]:
    """Each process's order of the samples in ``groups`` (starts and end, ``[0, ..., n]``) for one epoch.

    The groups are shuffled and dealt, whole, to the process with the fewest samples so far; a process with more
    than ``per_rank`` hands its last samples to those with fewer, and the last processes repeat samples from the
    start when ``per_rank * world`` exceeds ``n`` (as DistributedSampler pads). Each process's samples are then
    shuffled in consecutive windows of ``window``. Every sample goes to exactly one process; the order depends only
    on the arguments (not on DataLoader workers).
    """
    import heapq

    generator = torch.Generator().manual_seed(seed)
    sizes = np.diff(groups)
    dealt: list[list[int]] = [[] for _ in range(world)]
    fewest = [(0, rank) for rank in range(world)]
    for group in torch.randperm(len(sizes), generator=generator).tolist():
        count, rank = heapq.heappop(fewest)
        dealt[rank].append(group)
        heapq.heappush(fewest, (count + int(sizes[group]), rank))
    ranks = [_group_samples(groups, owned) for owned in dealt]
    spare = np.concatenate([samples[per_rank:] for samples in ranks])
    ranks = [samples[:per_rank] for samples in ranks]
    padding = np.concatenate([*ranks, spare])  # repeats, when every sample is placed and some process is short
    for rank, samples in enumerate(ranks):
        short = per_rank - len(samples)
        if short > 0:
            taken, spare = spare[:short], spare[short:]
            repeated = np.resize(padding, short - len(taken)) if short > len(taken) else taken[:0]
            ranks[rank] = np.concatenate([samples, taken, repeated])
    for samples in ranks:
        for start in range(0, len(samples), window):
            part = samples[start : start + window]
            samples[start : start + window] = part[torch.randperm(len(part), generator=generator).numpy()]
    return ranks


def classes_per_group(groups: np.ndarray, labels: np.ndarray, most: int = 256) -> tuple[float, float]:
    """Distinct labels per group on average, and what shuffled rows would give (a group's size, at most the classes).

    Far fewer than shuffled means rows stored sorted by class. Up to ``most`` groups, spread over the data, are read.
    """
    picked = np.unique(np.linspace(0, len(groups) - 2, min(most, len(groups) - 1)).astype(np.int64))
    found = [len(np.unique(labels[groups[g] : groups[g + 1]])) for g in picked]
    classes = len(np.unique(labels))
    shuffled = [min(int(groups[g + 1] - groups[g]), classes) for g in picked]
    return float(np.mean(found)), float(np.mean(shuffled))


def _group_samples(groups: np.ndarray, owned: list[int]) -> np.ndarray:
    """The samples of groups ``owned``, group after group."""
    if not owned:
        return np.zeros(0, dtype=np.int64)
    starts, ends = groups[owned].astype(np.int64), groups[np.asarray(owned) + 1].astype(np.int64)
    lengths = ends - starts
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample in one epoch (augmentations draw from it)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


@contextmanager
def random_state_kept() -> Iterator[None]:
    """Restore torch's, NumPy's and Python's global random states after the block."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator, NumPy and Python's ``random`` seeded by ``seed``.

    In the main process their states are restored after, so the training loop's own draws go on undisturbed; in a
    DataLoader worker, where every item seeds them afresh, they are left (NumPy's state saved and put back: ~90 us).
    The CPU generator alone, where augmentations draw: ``torch.manual_seed`` also queues seeds for CUDA, XPU and MTIA,
    formatting the call stack each time (~130 us an item, a twentieth of decoding and cropping one; Intel Xeon).
    """
    with random_state_kept() if get_worker_info() is None else nullcontext():
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
