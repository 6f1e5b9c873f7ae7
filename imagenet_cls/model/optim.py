"""Optimizer parameter groups, learning-rate scaling by batch size, and per-step learning-rate schedules."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from imagenet_cls.errors import UserError

log = logging.getLogger(__name__)

Schedule = Literal["cosine", "step", "multistep", "constant"]


def parameter_groups(
    backbone: nn.Module,
    head: Sequence[nn.Parameter],
    weight_decay: float,
    backbone_lr_scale: float = 1.0,
    layer_decay: float | None = None,
) -> list[dict]:
    """Parameter groups with ``weight_decay`` except on norm and bias (1-d) tensors, each with an ``lr_scale``.

    ``layer_decay`` (timm's layer-wise LR decay, as in BEiT/DeiT fine-tuning) scales each layer's learning rate by
    ``layer_decay ** (depth from the top)``; otherwise ``backbone_lr_scale`` scales everything but the ``head``.
    """
    from timm.optim import param_groups_layer_decay

    skip = set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()
    if layer_decay is not None:
        if backbone_lr_scale != 1.0:
            raise UserError("--model.layer_decay and --model.backbone_lr_scale both scale the backbone: set one")
        groups = param_groups_layer_decay(backbone, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
        return [group for group in groups if group["params"]]
    head_ids = {id(p) for p in head}
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in backbone.named_parameters():
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name in skip
        buckets.setdefault((id(param) in head_ids, no_decay), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": 1.0 if is_head else backbone_lr_scale,
        }
        for (is_head, no_decay), params in sorted(buckets.items())
    ]


def create_optimizer(
    groups: list[dict], name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """The optimizer from timm's ``create_optimizer_v2`` over ``groups``; each group's LR is ``lr * lr_scale``."""
    from timm.optim import create_optimizer_v2

    groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    try:
        return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum)
    except (AssertionError, ValueError) as error:
        raise UserError(f"--model.optimizer {name!r}: {error}") from None


def scale_lr(lr: float, global_batch_size: int, base_batch_size: int | None, rule: str = "linear") -> float:
    """``lr`` given for ``base_batch_size`` images per step, scaled to ``global_batch_size`` (linear or sqrt)."""
    if not base_batch_size:
        return lr
    ratio = global_batch_size / base_batch_size
    return lr * (math.sqrt(ratio) if rule == "sqrt" else ratio)


def lr_schedule(
    kind: Schedule,
    warmup_steps: int,
    total_steps: float,
    steps_per_epoch: float,
    min_ratio: float = 0.0,
    start_ratio: float = 0.01,
    decay_rate: float = 0.1,
    step_epochs: float = 30.0,
    milestones: Sequence[float] = (),
) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup from ``start_ratio``, then the schedule ``kind``.

    ``cosine`` falls to ``min_ratio`` at ``total_steps``; ``step`` multiplies by ``decay_rate`` every
    ``step_epochs``; ``multistep`` at each epoch of ``milestones``; ``constant`` stays at 1. Epochs count from the
    start of training (warmup included), as in torchvision's and timm's schedulers.
    """
    step_size = max(1.0, step_epochs * steps_per_epoch)
    milestone_steps = sorted(m * steps_per_epoch for m in milestones)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_ratio + (1.0 - start_ratio) * step / warmup_steps
        if kind == "step":
            return max(min_ratio, decay_rate ** math.floor(step / step_size))
        if kind == "multistep":
            return max(min_ratio, decay_rate ** bisect.bisect_right(milestone_steps, step))
        if kind == "constant" or not math.isfinite(total_steps):
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def create_optimization(
    backbone: nn.Module,
    head: Sequence[nn.Parameter],
    hparams: Mapping[str, Any],
    *,
    global_batch_size: int | None,
    total_steps: float,
    max_epochs: int | None,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: the optimizer and a learning-rate schedule stepped every step.

    Args:
        backbone: The network; its norm and bias parameters get no weight decay.
        head: The classifier's parameters (``backbone_lr_scale`` applies to everything else).
        hparams: The model's hyper-parameters (``lr``, ``optimizer``, ``scheduler``, ``warmup_epochs`` ...).
        global_batch_size: Images per optimizer step over all devices; None: ``lr`` is used as given.
        total_steps: Optimizer steps of the whole run (``inf`` when unknown: no schedule length).
        max_epochs: Epochs of the run (to turn epochs into steps), None or -1 when unbounded.
    """
    hp = hparams
    batch = global_batch_size if global_batch_size is not None else (hp["lr_base_batch_size"] or 1)
    groups = parameter_groups(backbone, head, hp["weight_decay"], hp["backbone_lr_scale"], hp["layer_decay"])
    lr = scale_lr(hp["lr"], batch, hp["lr_base_batch_size"], hp["lr_scaling"])
    if lr != hp["lr"]:
        log.info("learning rate %g for %d images per step (%g per %d)", lr, batch, hp["lr"], hp["lr_base_batch_size"])
    optimizer = create_optimizer(groups, hp["optimizer"], lr, hp["weight_decay"], hp["momentum"])
    total = float(total_steps) if math.isfinite(total_steps) else math.inf
    bounded = bool(max_epochs) and max_epochs > 0 and math.isfinite(total)
    warmup = int(round(hp["warmup_epochs"] * total / max_epochs)) if bounded and hp["warmup_epochs"] else 0
    schedule = lr_schedule(
        hp["scheduler"],
        warmup_steps=warmup,
        total_steps=total,
        steps_per_epoch=total / max_epochs if bounded else math.inf,
        min_ratio=hp["min_lr"] / lr,
        start_ratio=hp["warmup_lr_ratio"],
        decay_rate=hp["decay_rate"],
        step_epochs=hp["step_epochs"],
        milestones=hp["milestones"] or (),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
