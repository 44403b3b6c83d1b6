"""Bits per byte: the one measure of held-out loss, used by training's validation and the evaluate stage.

``bpb = nats / (ln 2 * tokens * bytes_per_token)``: nats per byte of text, in bits. It does not depend on
the tokenizer, so runs with different tokenizers compare fairly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from components.tokens.dataset import TokenDataset
from components.train.losses import next_token_nats, target_count


def bits_per_byte(nats: float, tokens: int | float, bytes_per_token: float) -> float:
    """Bits per byte of text from summed nats over ``tokens`` targets of ``bytes_per_token`` bytes each."""
    return nats / (math.log(2) * tokens * bytes_per_token)


@torch.no_grad()
def sequence_nats(
    model: Any, data: TokenDataset, indices: Sequence[int], batch_size: int, device: torch.device
) -> tuple[float, int]:
    """Summed next-token nats and target count of ``model`` over sequences ``indices`` of ``data``."""
    was_training = model.training
    model.eval()
    nats, tokens = 0.0, 0
    for first in range(0, len(indices), batch_size):
        rows = [data.sequence(index) for index in indices[first : first + batch_size]]
        batch = torch.from_numpy(np.stack(rows)).to(device)
        nats += next_token_nats(model, batch).item()
        tokens += target_count(batch)
    if was_training:
        model.train()
    return nats, tokens


def spread_indices(available: int, count: int) -> list[int]:
    """``count`` (at most ``available``) indices spread evenly over ``range(available)``."""
    count = min(count, available)
    return [index * available // count for index in range(count)]
