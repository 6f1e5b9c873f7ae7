"""DataLoader pieces: an unpadded evaluation sampler for DDP and a DataLoader whose wait for a batch is bounded."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from imagenet_cls.errors import UserError


class EvalSampler(DistributedSampler):
    """A contiguous share of a dataset for each process, in order, without padding (:func:`evaluation_share`).

    Lightning's own DistributedSampler repeats samples until every process has as many; those repeats would enter
    the metrics, ``val_images`` and the evaluation report. Here every sample goes to exactly one process, and the
    processes may run one batch more or less than each other (evaluation has no per-batch collective). Contiguous
    shares keep each process inside its own parquet row groups and WebDataset shards (a strided share would make
    every process read every group). A DistributedSampler, so Lightning does not replace it under DDP.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        size = len(dataset)
        if 0 < size < num_replicas:
            # A process without a single batch would skip the metric synchronisation the others wait in.
            raise UserError(
                f"{size} evaluation images for {num_replicas} processes: every process needs at least one; "
                "use fewer --trainer.devices (or --trainer.num_nodes) for this evaluation"
            )
        self.share = evaluation_share(size, num_replicas, rank)
        self.num_samples = len(self.share)
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(self.share)


def evaluation_share(size: int, world: int, rank: int) -> range:
    """The samples process ``rank`` of ``world`` evaluates: a contiguous run, the first ``size % world`` one longer."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class BoundedDataLoader(DataLoader):
    """A DataLoader whose wait for the next batch from its workers ends, after ``timeout`` s, in a one-line error.

    The wait covers a read stuck below Python (a hard network mount in the kernel) that the per-image time limit
    inside the worker cannot interrupt. ``timeout_option`` names the option that sets the limit, for the message.
    """

    def __init__(self, *args: Any, timeout_option: str = "--data.sample_timeout", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_option = timeout_option

    def _get_iterator(self) -> Any:
        if self.num_workers == 0 or not self.timeout:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        return _BoundedIterator(self)


class _BoundedIterator(_MultiProcessingDataLoaderIter):
    def __init__(self, loader: BoundedDataLoader) -> None:
        super().__init__(loader)
        self._timeout_option = loader.timeout_option

    def _get_data(self) -> Any:
        # PyTorch's own timeout waits in one piece and notices a dead worker only at its end; here the wait is cut
        # into PyTorch's status-check interval, so a killed worker still stops the run within seconds.
        deadline = time.monotonic() + self._timeout
        while True:
            if self._pin_memory and not self._pin_memory_thread.is_alive():
                raise RuntimeError("Pin memory thread exited unexpectedly")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UserError(
                    f"no batch from the data-loading workers for {self._timeout:g} s: a read is stuck (a hung network "
                    f"mount?): check the storage, or raise {self._timeout_option} (the limit per image)"
                )
            success, data = self._try_get_data(min(remaining, MP_STATUS_CHECK_INTERVAL))
            if success:
                return data


def ignore_shutdown_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM and SIGINT; the main process decides what they mean.

    SLURM, ``timeout`` and ``kill -- -PGID`` signal every process of the job: a worker killed by SIGTERM would stop
    the run with a worker error before the main process saves its checkpoint. The main process ends its workers
    itself when it stops, and a worker whose main process died exits on its own (PyTorch's watchdog). Lightning's
    worker seeding (``seed_everything(workers=True)``) still applies.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
