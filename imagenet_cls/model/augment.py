"""Batch augmentation (random erasing, mixup/cutmix: timm's, on the device), the training loss and its guard."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from imagenet_cls.errors import UserError

log = logging.getLogger(__name__)

TrainingLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def create_mixup(
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float,
    switch_prob: float,
    label_smoothing: float,
):
    """Timm's ``Mixup`` (soft targets with label smoothing), or None when both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def create_random_erasing(prob: float, mode: str, max_count: int):
    """Timm's ``RandomErasing`` of a normalised batch, or None when ``prob`` is 0."""
    if prob <= 0:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(prob, mode=mode, max_count=max_count, device="cpu")


def mixup_active(mixup, off_epoch: int | None, epoch: int, batch_size: int) -> bool:
    """Whether to mix this batch: mixup is on, before ``off_epoch``, and the batch pairs up.

    timm's Mixup pairs images: an odd last batch is left unmixed.
    """
    return mixup is not None and (off_epoch is None or epoch < off_epoch) and batch_size % 2 == 0


def create_training_loss(kind: str, label_smoothing: float, bce_target_threshold: float | None) -> TrainingLoss:
    """The training loss over logits and hard (B,) or soft (B, num_classes) targets."""
    if kind == "bce":
        from timm.loss import BinaryCrossEntropy

        return BinaryCrossEntropy(smoothing=label_smoothing, target_threshold=bce_target_threshold)

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 2:  # soft targets from mixup/cutmix, already smoothed
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return cross_entropy


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


def finite_or_skipped(loss: torch.Tensor, policy: str, step: int, epoch: int) -> bool:
    """True for a finite loss; for a non-finite one, False under the ``skip`` policy (logged), else an error."""
    if torch.isfinite(loss):
        return True
    if policy == "skip":
        log.warning("non-finite training loss at step %d (epoch %d): update skipped", step, epoch)
        return False
    raise TrainingDiverged(
        f"training loss is {loss.item()} at step {step} (epoch {epoch}): "
        "lower --model.lr, add --trainer.gradient_clip_val, or --model.nonfinite_loss skip"
    )
