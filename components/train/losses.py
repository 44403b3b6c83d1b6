"""Training losses, pluggable into the engine's ``train_step``.

A loss returns the *sum* of its per-target terms for one micro-batch and says how many targets that
micro-batch holds. The engine divides the sum over the whole accumulation window (all micro-batches of
all ranks) by the window's target count (torchtitan), so a micro-batch with three reply tokens weighs
three tokens, not as much as one with three hundred.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

IGNORED = -100


@dataclass(frozen=True)
class RankedBatch:
    """Responses to problems, ranked: rows of one problem (``groups``) are contiguous and best first;
    ``scores`` orders them (higher is better; equal scores are a tie). Labels are -100 on the prompt."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    scores: torch.Tensor

    def to(self, device: torch.device) -> RankedBatch:
        """The batch on ``device``."""
        return RankedBatch(
            self.input_ids.to(device), self.labels.to(device), self.groups.to(device), self.scores.to(device)
        )


#: A batch: token ids ``(rows, length)``, or ``(input_ids, labels)`` of one shape with -100 where no loss
#: is taken (SFT prompts, padding), or ranked responses. Targets are the next tokens: ``labels[:, 1:]``.
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | RankedBatch


class TrainLoss(Protocol):
    """What ``train_step`` needs of a loss."""

    def targets(self, batch: Batch) -> int:
        """How many targets ``batch`` holds (the normaliser's share of this micro-batch)."""
        ...

    def __call__(self, model: Any, batch: Batch) -> torch.Tensor:
        """The summed loss of ``batch`` (a scalar tensor that backpropagates)."""
        ...

    def pop_parts(self) -> dict[str, torch.Tensor]:
        """The summed named terms of the loss since the last call (logged per target beside the loss)."""
        ...


def inputs_and_targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens[:, :-1], labels[:, 1:])`` of a batch."""
    if isinstance(batch, RankedBatch):
        tokens, labels = batch.input_ids, batch.labels
    else:
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

    def pop_parts(self) -> dict[str, torch.Tensor]:
        """None: the loss is one term."""
        return {}


def response_logprobs(model: Any, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's length-normalised log-likelihood: the mean log-probability of its labelled tokens."""
    inputs, targets = input_ids[:, :-1], labels[:, 1:]
    logits = model(input_ids=inputs).logits.float()
    nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=IGNORED)
    counted = targets != IGNORED
    return -(nats * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)


def group_starts(groups: torch.Tensor) -> torch.Tensor:
    """True on the first row of each run of equal group ids (the best response of its problem)."""
    first = torch.ones_like(groups, dtype=torch.bool)
    first[1:] = groups[1:] != groups[:-1]
    return first


def rrhf_terms(
    logprobs: torch.Tensor, groups: torch.Tensor, scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RRHF's two sums over the problems of a batch: the ranking hinge loss (every pair of one problem
    whose scores differ adds ``max(0, p_worse - p_better)``) and the cross-entropy of each problem's best
    response (``-p_best``), ``p`` being length-normalised log-likelihoods."""
    same = groups[:, None] == groups[None, :]
    worse = scores[:, None] < scores[None, :]
    gaps = torch.relu(logprobs[:, None] - logprobs[None, :])
    hinge = (gaps * (same & worse)).sum()
    sft = -logprobs[group_starts(groups)].sum()
    return hinge, sft


class RankingLoss:
    """RRHF (Yuan et al. 2023) as PanGu-Coder2's RRTF trains with it: ``rank_weight * hinge +
    sft_weight * cross-entropy of the best response``, summed per problem; a problem is one target."""

    def __init__(self, rank_weight: float = 1.0, sft_weight: float = 1.0) -> None:
        self.rank_weight, self.sft_weight = rank_weight, sft_weight
        self._parts: dict[str, torch.Tensor] = {}

    def targets(self, batch: Batch) -> int:
        """The problems of ``batch``."""
        if not isinstance(batch, RankedBatch):
            raise TypeError("RankingLoss needs RankedBatch batches")
        return int(group_starts(batch.groups).sum())

    def __call__(self, model: Any, batch: Batch) -> torch.Tensor:
        """The weighted sum of both terms over the batch's problems."""
        if not isinstance(batch, RankedBatch):
            raise TypeError("RankingLoss needs RankedBatch batches")
        logprobs = response_logprobs(model, batch.input_ids, batch.labels)
        hinge, sft = rrhf_terms(logprobs, batch.groups, batch.scores)
        for name, value in (("rank_loss", hinge), ("sft_loss", sft)):
            self._parts[name] = self._parts.get(name, torch.zeros((), device=value.device)) + value.detach()
        return self.rank_weight * hinge + self.sft_weight * sft

    def pop_parts(self) -> dict[str, torch.Tensor]:
        """The summed ranking and SFT terms since the last call."""
        parts, self._parts = self._parts, {}
        return parts
