"""What a training stage trains (:class:`TrainPlan`); the engine (``engine.py``) does the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from components.tokens.dataset import TokenizedData
from components.train.losses import Batch, NextTokenLoss, TrainLoss


def checkpoint_dir(output: str) -> str:
    """Resumable checkpoints of the stage exporting to ``output``: ``<output>.ckpt``, outside the DVC out."""
    return f"{output.rstrip('/')}.ckpt"


def run_summary_path(output: str) -> Path:
    """Where rank 0 leaves a run's full summary (timings included) for the stage process."""
    return Path(checkpoint_dir(output)) / "run-summary.json"


class BatchSource(Protocol):
    """Training data indexed by micro step: the same arguments always give the same batch."""

    def batch(self, step: int, micro_batch: int, rank: int, world_size: int) -> Batch:
        """Token ids, shape ``(micro_batch, seq_len + 1)``; or ``(input_ids, labels)`` of one shape (at most
        that), labels -100 where no loss is taken (SFT prompts, padding). The engine shifts by one."""
        ...


@dataclass
class TrainPlan:
    """What one training stage trains; built by the stage package on every rank."""

    stage: str
    steps: int
    #: Learning rate of optimizer step ``s`` (0-based); ``schedule(steps)`` is the final LR.
    schedule: Callable[[int], float]
    weight_decay: float
    train_data: BatchSource
    #: The opened tokenize output: index, tokenizer and validation split.
    data: TokenizedData
    #: Where the Hugging Face export goes (the DVC out); checkpoints go to ``<output>.ckpt/``.
    output: str
    #: An exported model to start from (fresh optimizer); None: random init.
    init_from: str | None = None
    loss: TrainLoss = field(default_factory=NextTokenLoss)
    #: Anything else that shapes the run (part of the checkpoint fingerprint), e.g. the parent model.
    identity: dict[str, Any] = field(default_factory=dict)
    #: Recorded in ``training.json`` (e.g. the size of the data mix).
    details: dict[str, Any] = field(default_factory=dict)
    #: Drops per reason and extra metrics for the stage report (e.g. SFT's mined pairs).
    report_drops: dict[str, int] = field(default_factory=dict)
    report_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def checkpoint_dir(self) -> str:
        """Resumable checkpoints of this stage, outside the DVC output."""
        return checkpoint_dir(self.output)

    @property
    def run_summary(self) -> Path:
        """Where rank 0 leaves the run's full summary for the stage process."""
        return run_summary_path(self.output)
