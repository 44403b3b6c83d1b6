"""Training losses, pluggable into the engine's ``train_step``.

A loss returns the *sum* of its per-target terms for one micro-batch and says how many targets that
micro-batch holds. The engine divides the sum over the whole accumulation window (all micro-batches of
all ranks) by the window's target count (torchtitan), so a micro-batch with three reply tokens weighs
three tokens, not as much as one with three hundred.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

#: A batch: token ids ``(rows, length)``, or ``(input_ids, labels)`` of one shape with -100 where no loss
#: is taken (SFT prompts, padding). Targets are the next tokens: ``labels[:, 1:]``.
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
IGNORED = -100


class TrainLoss(Protocol):
    """What ``train_step`` needs of a loss."""

    def targets(self, batch: Batch) -> int:
        """How many targets ``batch`` holds (the normaliser's share of this micro-batch)."""
        ...

    def __call__(self, model: Any, batch: Batch) -> torch.Tensor:
        """The summed loss of ``batch`` (a scalar tensor that backpropagates)."""
        ...


def inputs_and_targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens[:, :-1], labels[:, 1:])`` of a batch."""
    tokens, labels = batch if isinstance(batch, tuple) else (batch, batch)
    return tokens[:, :-1], labels[:, 1:]


def next_token_nats(model: Any, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy (nats) of predicting every target of ``batch`` (-100 targets ignored)."""
    inputs, targets = inputs_and_targets(batch)
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")


def target_count(batch: Batch) -> int:
    """Targets of ``batch`` that count (not -100)."""
    return int((inputs_and_targets(batch)[1] != IGNORED).sum())


class NextTokenLoss:
    """Next-token cross-entropy: pretraining, annealing and SFT (loss on the labelled tokens only)."""

    def targets(self, batch: Batch) -> int:
        """Labelled next tokens of ``batch``."""
        return target_count(batch)

    def __call__(self, model: Any, batch: Batch) -> torch.Tensor:
        """Summed cross-entropy over the labelled next tokens."""
        return next_token_nats(model, batch)
