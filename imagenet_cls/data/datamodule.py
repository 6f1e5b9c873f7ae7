"""ImageNetDataModule: train/val/test loaders over an ImageNet-style folder, and predict loaders over any images."""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from imagenet_cls.data.layout import DatasetLayout
from imagenet_cls.data.loaders import BoundedDataLoader, EvalSampler, ignore_shutdown_signals
from imagenet_cls.errors import UserError

if TYPE_CHECKING:
    from imagenet_cls.data.datasets import ImageFileDataset

log = logging.getLogger(__name__)


DEFAULT_SPLIT = (0.8, 0.1, 0.1)  # --data.split's default: train, val, test fractions of one folder of class folders
DISPLAY_SIZE = (800, 600)  # predict's annotated copies fit within this (width, height)


def scan_data_dir(
    data_dir: Path | None,
    split: tuple[float, float, float],
    split_seed: int,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> DatasetLayout:
    """The classes and per-split samples of ``--data.data_dir`` (a one-line error when it is not set).

    The backend (class folders, optimized, parquet, WebDataset) is decided by :mod:`~imagenet_cls.data.backends`.
    """
    from imagenet_cls.data.backends import open_layout

    if data_dir is None:
        raise UserError("--data.data_dir is not set: point it at a folder of class folders (or train/ val/)")
    layout = open_layout(data_dir, tuple(split), split_seed, storage_options, cache_dir)
    if layout.kind != "class folders" and (tuple(split) != DEFAULT_SPLIT or split_seed != 0):
        log.warning(
            "--data.split/--data.split_seed do not apply to %s (%s): its splits are fixed (%s)",
            data_dir,
            layout.kind,
            ", ".join(f"{name} {len(samples)}" for name, samples in layout.splits.items()),
        )
    return layout


class ImageNetDataModule(LightningDataModule):
    """Images in class folders for fit/validate/test, or any image files for predict.

    Args:
        data_dir: Dataset folder: ``train/``, ``val/`` and optional ``test/`` with one folder per class, or one
            folder of class folders, split per class into train/val/test by ``split``. Never modified. Or an
            optimized dataset (``python -m imagenet_cls.prepare SOURCE DEST --format litdata``): its folder or
            its object-store prefix (``s3://bucket/prefix``).
        mode: ``train`` reads ``data_dir``; ``predict`` reads ``predict_path`` (the ``predict`` subcommand sets it).
        predict_path: Images to classify: a file, a folder (recursive), a glob pattern, a ``.txt`` list, or one
            split of an optimized dataset (``DATASET/val``, ``s3://bucket/prefix/val``).
        class_map: Class names file (columns folder, number, classes). Default: ``data_dir``'s
            ``folder_num_class_map.txt`` if it exists, else ImageNet's names for WordNet-id folders, else the
            folder names.
        split: Train, val and test fractions for a folder of class folders (stratified, deterministic). Split
            folders and optimized datasets have their splits already (a warning says so when this is changed).
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
        class_subset: In validate and test of a model that knows more classes than ``data_dir`` holds (a checkpoint
            or pretrained ImageNet weights on some of their classes): score only the classes present, as timm does
            for ImageNet-A/R (the other classes' logits are masked). Off: the model chooses among all its classes.
        skip_bad_images: Skip files that cannot be decoded (each logged; ``val_images``/``test_images`` count the
            images metrics were computed over) instead of stopping with an error naming the file.
        storage_options: Object-store options for an ``s3://`` data_dir or predict_path (e.g.
            ``{endpoint_url: ...}``, keys); default: the usual AWS variables (``AWS_ENDPOINT_URL``,
            ``AWS_ACCESS_KEY_ID`` ...). For an optimized dataset ``max_attempts`` (5), ``read_timeout`` (20 s) and
            ``connect_timeout`` (10 s) bound each read's tries.
        cache_dir: Where indexes of remote data are kept (images are fetched by byte range, not stored): LitData's of an
            optimized dataset (default ``~/.lightning/chunks``) and the tar offsets of ``s3://`` WebDataset shards, per
            shard and ETag, in ``wds-index/`` (default ``$XDG_CACHE_HOME/imagenet_cls/wds-index``).
        shuffle_window: Parquet or WebDataset training: each epoch deals the shuffled row groups (shards) to the
            DDP processes and shuffles each one's images in windows of this many: reads stay within a few groups
            (each worker holds a window: ~110 MB of ImageNet at 1024). 0, or a dataset no larger: one permutation
            of all images, as for folders (on parquet a row group read per image).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        mode: Literal["train", "predict"] = "train",
        predict_path: str | None = None,
        class_map: Path | None = None,
        split: tuple[float, float, float] = DEFAULT_SPLIT,
        split_seed: int = 0,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        hflip: float = 0.5,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        auto_augment: str | None = None,
        color_jitter: float | None = None,
        class_subset: bool = False,
        skip_bad_images: bool = False,
        sample_timeout: float | None = 120.0,
        storage_options: dict[str, Any] | None = None,
        cache_dir: Path | None = None,
        shuffle_window: int = 1024,
    ) -> None:
        # Long for its signature: each typed parameter is a --data.* option (jsonargparse).
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
        self.class_subset = class_subset
        self.skip_bad_images = skip_bad_images
        self.sample_timeout = sample_timeout
        self.storage_options = dict(storage_options or {})
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        if shuffle_window < 0:
            raise UserError(f"--data.shuffle_window {shuffle_window} must be 0 (a full shuffle) or more images")
        self.shuffle_window = shuffle_window
        self.datasets: dict[str, Any] = {}
        self.predict_root: Path | None = None
        self.order_seed: int | None = None  # the training order's seed, kept in checkpoints
        self._resume_at: tuple[int, int, int | None] | None = None  # (epoch, batches done, window) of a checkpoint
        self.data_config: dict[str, Any] | None = None  # set_preprocessing
        self.train_input_size: tuple[int, int, int] | None = None
        self.label_map: list[int] | None = None  # data class index -> model class index (use_layout)
        self.display_size: tuple[int, int] | None = DISPLAY_SIZE  # None: predict makes no display copies

    # ---- what the CLI hands over: the scanned folder, the model's classes and preprocessing -------------------
    @cached_property
    def layout(self) -> DatasetLayout:
        """The classes and per-split samples of ``data_dir`` (scanned once: here on first use, or by the CLI)."""
        return scan_data_dir(self.data_dir, self.split, self.split_seed, self.storage_options, self.cache_dir)

    def use_layout(self, layout: DatasetLayout, model_classes: list[str] | None = None) -> None:
        """Read ``layout`` (already scanned) instead of scanning ``data_dir`` again.

        Args:
            layout: The scanned data folder.
            model_classes: The model's class folders in index order, when they differ from the folder's own (a
                checkpoint or pretrained model evaluated on some of its classes): labels are mapped by name.
        """
        self.layout = layout
        if model_classes is not None and list(model_classes) != layout.classes:
            index = {folder: i for i, folder in enumerate(model_classes)}
            self.label_map = [index[folder] for folder in layout.classes]

    def set_preprocessing(self, data_config: dict[str, Any], train_input_size: tuple[int, int, int] | None = None):
        """The model's preprocessing (timm ``data_config``: input size, crop, interpolation) and training crop."""
        self.data_config = data_config
        self.train_input_size = train_input_size or data_config["input_size"]

    def set_display(self, wanted: bool) -> None:
        """Whether predict items carry a display copy (for annotated images); without, only the model input is made."""
        self.display_size = DISPLAY_SIZE if wanted else None

    @property
    def classes(self) -> list[str] | None:
        """Class folder ids in index order (sorted), or None in predict mode."""
        return None if self.mode == "predict" else self.layout.classes

    @property
    def has_test_split(self) -> bool:
        """Whether the data folder has test images."""
        return self.mode == "train" and bool(self.layout.splits.get("test"))

    # ---- datasets ------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Drop credentials from ``sys.argv``, which W&B records when its run starts (right after this hook).

        Lightning calls this once the DDP processes are launched (its launcher re-runs ``sys.argv``), on the first
        process of each node, before any logger starts.
        """
        import sys

        from imagenet_cls.data.secrets import redact_argv

        sys.argv[:] = redact_argv(sys.argv)

    def setup(self, stage: str) -> None:
        """Build the datasets of ``stage`` with the preprocessing handed over by ``set_preprocessing``."""
        from imagenet_cls.data.backends import open_predict_split
        from imagenet_cls.data.datasets import PredictDataset, resolve_predict_paths
        from imagenet_cls.data.records import RecordPredictDataset
        from imagenet_cls.data.streaming import OptimizedSplit, StreamingPredictDataset
        from imagenet_cls.data.transforms import create_eval_transform, create_train_transform

        if self.data_config is None:
            raise RuntimeError("ImageNetDataModule.set_preprocessing(model.data_config, ...) must come before setup")
        eval_transform = create_eval_transform(self.data_config)
        if stage == "predict":
            if not self.predict_path:
                raise UserError("predict needs --data.predict_path <file|folder|glob|list>")
            split = open_predict_split(self.predict_path, self.storage_options, self.cache_dir)
            self.predict_root = None  # records (optimized or not) have no folder; image files set it
            if isinstance(split, OptimizedSplit):
                dataset = StreamingPredictDataset(split, eval_transform, self.display_size, self.sample_timeout)
            elif split is not None:
                dataset = RecordPredictDataset(split, eval_transform, self.display_size, self.sample_timeout)
            else:
                paths, self.predict_root = resolve_predict_paths(self.predict_path)
                dataset = PredictDataset(
                    paths, self.predict_root, eval_transform, self.display_size, self.sample_timeout
                )
            self.datasets["predict"] = dataset
            log.info("predict: %d images under %s", len(dataset), self.predict_root or self.predict_path)
            return
        if self.mode != "train":
            raise UserError(f"{stage} needs --data.data_dir (and --data.mode train, not predict)")
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]
        for split in splits:
            transform = eval_transform
            if split == "train":
                train_config = {**self.data_config, "input_size": self.train_input_size}
                transform = create_train_transform(train_config, **self.train_options)
            self.datasets[split] = self._dataset(split, transform)

    def _dataset(self, split: str, transform) -> ImageFileDataset:
        """``split``'s labelled images: files of the folder layout, or items of an optimized dataset."""
        from imagenet_cls.data.datasets import ImageFileDataset
        from imagenet_cls.data.records import RecordDataset, RecordLayout
        from imagenet_cls.data.streaming import OptimizedLayout, StreamingImageDataset

        if isinstance(self.layout, RecordLayout):
            records = self.layout.labelled(split)
            return RecordDataset(records, transform, self.skip_bad_images, self.sample_timeout, self.label_map)
        if isinstance(self.layout, OptimizedLayout):
            return StreamingImageDataset(
                self.layout.split_url(split),
                len(self.layout.samples(split)),
                transform,
                self.skip_bad_images,
                self.sample_timeout,
                self.label_map,
                self.layout.storage_options,
                self.cache_dir,
            )
        return ImageFileDataset(self._samples(split), transform, self.skip_bad_images, self.sample_timeout)

    def _samples(self, split: str) -> list:
        """``(path, model class index)`` of ``split``."""
        samples = self.layout.samples(split)
        if self.label_map is None:
            return samples
        return [(path, self.label_map[label]) for path, label in samples]

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled by a :class:`ResumableSampler`.

        The order depends only on the seed and the epoch; a run resumed from a mid-epoch checkpoint continues with
        the batch after the last one done.
        """
        from imagenet_cls.data.sampling import training_sampler

        if self.order_seed is None:
            self.order_seed = torch.initial_seed() % 2**31  # seed_everything's seed
        dataset = self.datasets["train"]
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = training_sampler(dataset, self.order_seed, world, rank, self.batch_size, self.shuffle_window,
                                   self._resume_at, f"--data.data_dir {self.data_dir}")  # fmt: skip
        self._resume_at = None
        return self._loader(dataset, sampler=sampler, drop_last=len(dataset) > self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The training order's seed and how far into the current epoch training got (saved in checkpoints)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or self.order_seed is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "order_seed": self.order_seed,
            "epoch": trainer.current_epoch,
            "batches_done": progress.processed,
            "shuffle_window": self.shuffle_window,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "order_seed" in state_dict:
            self.order_seed = state_dict["order_seed"]
            self._resume_at = (state_dict["epoch"], state_dict["batches_done"], state_dict.get("shuffle_window"))

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
        from imagenet_cls.data.batches import collate_predict

        return self._loader(self.datasets["predict"], collate_fn=collate_predict)

    def _loader(self, dataset, sampler=None, drop_last: bool = False, collate_fn=None) -> DataLoader:
        from imagenet_cls.data.batches import collate_labeled

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
            collate_fn=collate_fn or collate_labeled,
            worker_init_fn=ignore_shutdown_signals,  # SIGTERM to the whole job: the main process saves and exits
            timeout=timeout,
        )
