"""AdamW parameter groups and learning-rate schedules (pure functions of the optimizer step).

A schedule maps the optimizer step ``s`` (0-based: the update number ``s + 1`` uses ``lr(s)``) to the
learning rate. ``lr(steps)`` is where the schedule ends: the *final LR* that the anneal stage starts from.
The optimizer is built with ``lr=1.0`` and a ``LambdaLR`` whose factor is the schedule itself, so the
optimizer's LR at any step is exactly ``schedule(step)``; DeepSpeed steps the scheduler and saves its state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices (linear and embedding weights), none on biases, norms, 1-D params."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 partitions leave an empty tensor
            (decay if len(shape) >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup(step: int, warmup: int, lr: float) -> float:
    """Linear warmup that reaches ``lr`` at step ``warmup`` (the first step already moves: nanoGPT)."""
    return lr * (step + 1) / (warmup + 1)


@dataclass(frozen=True)
class WarmupStableDecay:
    """Warmup, constant ``lr``, then linear decay to ``min_lr`` over the last ``decay_fraction`` of steps."""

    lr: float
    min_lr: float
    warmup: int
    steps: int
    decay_fraction: float

    def __call__(self, step: int) -> float:
        decay_steps = round(self.decay_fraction * self.steps)
        decay_start = self.steps - decay_steps
        if step < self.warmup:
            return _warmup(step, self.warmup, self.lr)
        if step < decay_start or decay_steps == 0:
            return self.lr
        progress = min(1.0, (step - decay_start) / decay_steps)
        return self.lr + progress * (self.min_lr - self.lr)


@dataclass(frozen=True)
class Cosine:
    """Warmup, then cosine decay from ``lr`` to ``min_lr`` at ``steps``."""

    lr: float
    min_lr: float
    warmup: int
    steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return _warmup(step, self.warmup, self.lr)
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)


@dataclass(frozen=True)
class LinearToZero:
    """The anneal schedule: from ``start_lr`` at step 0 linearly to 0 at ``steps`` (OLMo, OpenCoder)."""

    start_lr: float
    steps: int

    def __call__(self, step: int) -> float:
        return self.start_lr * max(0.0, 1.0 - step / self.steps)


def scheduler(optimizer: torch.optim.Optimizer, schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that sets the LR of every group to ``schedule(step)`` (the groups' base LR is 1.0)."""
    for group in optimizer.param_groups:
        group["lr"] = 1.0
        group.pop("initial_lr", None)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
