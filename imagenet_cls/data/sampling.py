"""The training order and per-sample seeds that make a mid-epoch resume exact.

:class:`ResumableSampler` draws each epoch's order from ``(seed, epoch)`` alone and hands each sample its own seed
(:func:`sample_seed`); datasets run an item under :func:`seeded` so its augmentations do not depend on which worker
ran before. The callback that saves and restores the rest lives in ``imagenet_cls.callbacks.resume``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffled ``(index, sample_seed)`` pairs for one process of ``num_replicas``, reproducible per epoch.

    The order depends only on ``seed`` and the epoch (set by Lightning through ``set_epoch``), never on the
    global random state; :meth:`resume_at` makes the next iteration of that epoch skip its first batches.
    A DistributedSampler, so Lightning does not wrap it under DDP.
    """

    def __init__(self, dataset_size: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this process to skip)

    def resume_at(self, epoch: int, samples: int) -> None:
        """Skip the first ``samples`` of this process when epoch ``epoch`` is iterated next."""
        self._skip = (epoch, samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        first = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            first = self._skip[1]
        self._skip = None
        for position in range(first, len(indices)):
            index = indices[position]
            yield index, sample_seed(self.seed, self.epoch, index)


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
    """Run the block with torch, NumPy and Python's ``random`` seeded by ``seed``; their states are restored after."""
    with random_state_kept():
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
