"""Training examples and how batches are drawn from them, shared by the stages that train on their own
examples (SFT's conversations, align's ranked responses).

- :class:`Example`: token ids and labels, -100 where no loss is taken (prompts, padding).
- :func:`collate` truncates to ``max_len`` and right-pads with the pad token, labels -100 on padding.
  The engine shifts: position ``t`` is trained to predict ``labels[t + 1]``.
- :class:`EpochOrder` indexes items by micro step (epoch ``e`` visits them in a permutation seeded by
  ``(seed, e)``), as the engine's resumable loop needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from components.train.losses import IGNORED

IGNORE_INDEX = IGNORED
Item = TypeVar("Item")


@dataclass(frozen=True)
class Example:
    """One tokenized conversation: ``labels`` is ``tokens`` with -100 where no loss is taken."""

    tokens: np.ndarray
    labels: np.ndarray

    @property
    def trained_tokens(self) -> int:
        """Tokens that carry loss."""
        return int((self.labels != IGNORE_INDEX).sum())


def collate(examples: Sequence[Example], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of shape ``(batch, longest)``: truncated to ``max_len``, right-padded with
    ``pad_id`` (labels -100 on padding)."""
    longest = min(max_len, max(len(example.tokens) for example in examples))
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = min(longest, len(example.tokens))
        input_ids[row, :length] = torch.from_numpy(example.tokens[:length])
        labels[row, :length] = torch.from_numpy(example.labels[:length])
    return input_ids, labels


class EpochOrder(Generic[Item]):
    """Items indexed by micro step: epoch ``e`` visits them in a permutation seeded by ``(seed, e)``, so
    the same arguments always give the same items (the engine's resumable loop needs that)."""

    def __init__(self, items: Sequence[Item], seed: int) -> None:
        if not items:
            raise ValueError("no training examples")
        self.items = list(items)
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s item order (the two latest epochs are cached: a batch may straddle them)."""
        if epoch not in self._orders:
            self._orders = {key: value for key, value in self._orders.items() if key == epoch - 1}
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
        return self._orders[epoch]

    def chosen(self, step: int, micro_batch: int, rank: int = 0, world_size: int = 1) -> list[Item]:
        """The items of micro step ``step`` on ``rank``."""
        first = (step * world_size + rank) * micro_batch
        chosen = []
        for position in range(first, first + micro_batch):
            epoch, offset = divmod(position, len(self.items))
            chosen.append(self.items[self._order(epoch)[offset]])
        return chosen
