"""ImageNetDataModule: train/val/test loaders over an ImageNet-style folder, and predict loaders over any images."""

from __future__ import annotations

import logging
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from imagenet_cls.data.classes import read_class_map
from imagenet_cls.data.layout import DatasetLayout, read_layout
from imagenet_cls.data.loaders import BoundedDataLoader, EvalSampler, ignore_shutdown_signals
from imagenet_cls.errors import UserError

log = logging.getLogger(__name__)


class ImageNetDataModule(LightningDataModule):
    """Images in class folders for fit/validate/test, or any image files for predict.

    Args:
        data_dir: Dataset folder: ``train/``, ``val/`` and optional ``test/`` with one folder per class, or one
            folder of class folders, split per class into train/val/test by ``split``. Never modified.
        mode: ``train`` reads ``data_dir``; ``predict`` reads ``predict_path``.
        predict_path: Images to classify: a file, a folder (recursive), a glob pattern or a ``.txt`` list.
        class_map: Class names file (columns folder, number, classes). Default: ``data_dir``'s
            ``folder_num_class_map.txt`` if it exists, else ImageNet's names for WordNet-id folders, else the
            folder names.
        split: Train, val and test fractions for a folder of class folders (stratified, deterministic).
        split_seed: Seed of that split.
        batch_size: Images per batch (per device).
        num_workers: DataLoader worker processes; default: the CPU count, at most 8.
        pin_memory: Pin host memory for faster copies to the GPU; default: on when CUDA is available.
        hflip: Horizontal flip probability in training.
        crop_scale: Random-resized-crop area range in training.
        crop_ratio: Random-resized-crop aspect-ratio range in training.
        auto_augment: Training augmentation: a timm string (``rand-m9-mstd0.5-inc1`` RandAugment, ``augmix-m5``,
            ``original`` AutoAugment) or ``ta_wide`` (TrivialAugmentWide).
        color_jitter: Colour jitter strength in training (off when None).
        sample_timeout: Seconds one image may take to read and preprocess before the run stops with an error naming
            it (a hung network mount, a stuck read), instead of hanging; None: no limit.
        skip_bad_images: Skip files that cannot be decoded (each logged; ``val_images``/``test_images`` count the
            images metrics were computed over) instead of stopping with an error naming the file.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        mode: Literal["train", "predict"] = "train",
        predict_path: str | None = None,
        class_map: Path | None = None,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        auto_augment: str | None = None,
        color_jitter: float | None = None,
        skip_bad_images: bool = False,
        sample_timeout: float | None = 120.0,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.mode = mode
        self.predict_path = predict_path
        self.class_map = Path(class_map) if class_map is not None else None
        self.split = tuple(split)
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_options = {
            "hflip": hflip,
            "scale": tuple(crop_scale),
            "ratio": tuple(crop_ratio),
            "auto_augment": auto_augment,
            "color_jitter": color_jitter,
        }
        self.skip_bad_images = skip_bad_images
        self.sample_timeout = sample_timeout
        self.datasets: dict[str, Any] = {}
        self.predict_root: Path | None = None
        self.order_seed: int | None = None  # the training order's seed, kept in checkpoints
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    # ---- classes -------------------------------------------------------------------------------------------
    @cached_property
    def layout(self) -> DatasetLayout:
        """The classes and per-split samples of ``data_dir`` (scanned once, on first use)."""
        if self.data_dir is None:
            raise UserError("--data.data_dir is not set: point it at a folder of class folders (or train/ val/)")
        return read_layout(self.data_dir, self.split, self.split_seed)

    @property
    def classes(self) -> list[str] | None:
        """Class folder ids in index order (sorted), or None in predict mode."""
        return None if self.mode == "predict" else self.layout.classes

    @property
    def has_test_split(self) -> bool:
        """Whether the data folder has test images."""
        return self.mode == "train" and bool(self.layout.splits.get("test"))

    def classes_without_data(self, num_classes: int) -> list[str] | None:
        """Class folders when there is no data folder: the class map's (sorted), or ImageNet's for 1000 classes."""
        if self.class_map is not None:
            folders = sorted(read_class_map(self.class_map))
            return folders if len(folders) == num_classes else None
        if num_classes == 1000:
            from imagenet_cls.data.classes import imagenet_class_names

            return sorted(imagenet_class_names())
        return None

    def class_names(self, classes: list[str]) -> list[str]:
        """Human-readable names for ``classes``: from the class map, else ImageNet's, else the folder names."""
        names: dict[str, str] = {}
        class_map = self.class_map
        if class_map is None and self.data_dir is not None and (self.data_dir / "folder_num_class_map.txt").is_file():
            class_map = self.data_dir / "folder_num_class_map.txt"
        if class_map is not None:
            names = read_class_map(class_map)
        elif any(c.startswith("n") and c[1:].isdigit() and len(c) == 9 for c in classes):
            from imagenet_cls.data.classes import imagenet_class_names

            names = imagenet_class_names()
        return [names.get(folder, folder) for folder in classes]

    # ---- datasets ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Build the datasets of ``stage`` with the model's own preprocessing (``model.data_config``)."""
        from imagenet_cls.data.datasets import ImageFileDataset, PredictDataset, resolve_predict_paths
        from imagenet_cls.data.transforms import create_eval_transform, create_train_transform

        data_config = self.trainer.lightning_module.data_config
        if stage == "predict":
            if self.mode != "predict" or not self.predict_path:
                raise UserError("predict needs --data.mode predict and --data.predict_path <file|folder|glob|list>")
            paths, self.predict_root = resolve_predict_paths(self.predict_path)
            transform = create_eval_transform(data_config)
            self.datasets["predict"] = PredictDataset(paths, transform, (800, 600), self.sample_timeout)
            log.info("predict: %d images under %s", len(paths), self.predict_root)
            return
        if self.mode != "train":
            raise UserError(f"{stage} needs --data.mode train (got predict) and --data.data_dir")
        eval_transform = create_eval_transform(data_config)
        skip = self.skip_bad_images
        if stage == "fit":
            train_config = {**data_config, "input_size": self.trainer.lightning_module.train_input_size}
            train_transform = create_train_transform(train_config, **self.train_options)
            self.datasets["train"] = ImageFileDataset(
                self.layout.samples("train"), train_transform, skip, self.sample_timeout
            )
        if stage in ("fit", "validate"):
            self.datasets["val"] = ImageFileDataset(
                self.layout.samples("val"), eval_transform, skip, self.sample_timeout
            )
        elif stage == "test":
            self.datasets["test"] = ImageFileDataset(
                self.layout.samples("test"), eval_transform, skip, self.sample_timeout
            )

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled by a :class:`ResumableSampler`.

        The order depends only on the seed and the epoch; a run resumed from a mid-epoch checkpoint continues with
        the batch after the last one done.
        """
        from imagenet_cls.callbacks.resume import ResumableSampler

        if self.order_seed is None:
            self.order_seed = torch.initial_seed() % 2**31  # seed_everything's seed
        dataset = self.datasets["train"]
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(len(dataset), self.order_seed, num_replicas=world, rank=rank)
        drop_last = len(dataset) > self.batch_size
        if self._resume_at is not None:
            # Lightning makes this loader's first iterator before it sets the epoch: set it here.
            epoch, batches = self._resume_at
            per_epoch = len(sampler) // self.batch_size if drop_last else math.ceil(len(sampler) / self.batch_size)
            if batches < per_epoch:  # a mid-epoch checkpoint: continue after the batches done
                sampler.set_epoch(epoch)
                sampler.resume_at(epoch, batches * self.batch_size)
            else:  # an end-of-epoch checkpoint: the next epoch
                sampler.set_epoch(epoch + 1)
            self._resume_at = None
        return self._loader(dataset, sampler=sampler, drop_last=drop_last)

    def state_dict(self) -> dict[str, Any]:
        """The training order's seed and how far into the current epoch training got (saved in checkpoints)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or self.order_seed is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"order_seed": self.order_seed, "epoch": trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "order_seed" in state_dict:
            self.order_seed = state_dict["order_seed"]
            self._resume_at = (state_dict["epoch"], state_dict["batches_done"])

    def val_dataloader(self) -> DataLoader:
        """Validation batches in file order; under DDP each image goes to exactly one process (no padding)."""
        return self._loader(self.datasets["val"], sampler=self._eval_sampler(self.datasets["val"]))

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order; under DDP each image goes to exactly one process (no padding)."""
        return self._loader(self.datasets["test"], sampler=self._eval_sampler(self.datasets["test"]))

    def _eval_sampler(self, dataset) -> EvalSampler:
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return EvalSampler(dataset, num_replicas=world, rank=rank)

    def predict_dataloader(self) -> DataLoader:
        from imagenet_cls.data.datasets import collate_predict

        return self._loader(self.datasets["predict"], collate_fn=collate_predict)

    def _loader(self, dataset, sampler=None, drop_last: bool = False, collate_fn=None) -> DataLoader:
        if collate_fn is None and self.skip_bad_images:
            from imagenet_cls.data.datasets import collate_skipping_bad

            collate_fn = collate_skipping_bad
        # The wait for one batch is bounded too, for a read stuck where the per-image limit cannot reach it (in the
        # kernel): every image of the batch at its limit, plus one more for the worker's start.
        timeout = self.sample_timeout * (self.batch_size + 1) if self.sample_timeout and self.num_workers else 0
        return BoundedDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            # Its own generator: creating iterators (worker seeds) never draws from the global random state.
            generator=torch.Generator().manual_seed(self.split_seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
            worker_init_fn=ignore_shutdown_signals,  # SIGTERM to the whole job: the main process saves and exits
            timeout=timeout,
        )
