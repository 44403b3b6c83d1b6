"""What a training stage trains (:class:`TrainPlan`); the engine (components/train/engine.py) does the rest.

Kept free of heavy imports: stage packages import it, and components.config imports their configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from components.errors import StageError

if TYPE_CHECKING:
    import torch

    from components.stage import StageIO


class BatchSource(Protocol):
    """Training data indexed by micro step: the same arguments always give the same batch."""

    def batch(
        self, step: int, micro_batch: int, rank: int, world_size: int
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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
    #: The tokenize output: validation split, index (vocab, bytes per token) and tokenizer.
    data_dir: str
    #: Where the Hugging Face export goes (the DVC out); checkpoints go to ``<output>.ckpt/``.
    output: str
    #: An exported model to start from (fresh optimizer); None: random init.
    init_from: str | None = None
    #: Anything else that shapes the run (part of the checkpoint fingerprint), e.g. the parent model.
    identity: dict[str, Any] = field(default_factory=dict)
    #: Recorded in ``training.json`` (e.g. the size of the data mix).
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_dir(self) -> str:
        """Resumable checkpoints of this stage, outside the DVC output."""
        return f"{self.output.rstrip('/')}.ckpt"


def exported_model_input(io: StageIO, stage: str) -> Path:
    """The model exported by ``stage`` (the first ``--input``), checked to be a finished export."""
    if not io.inputs:
        raise StageError(f"missing --input #1: the exported {stage} model (models/{stage})")
    model_dir = Path(io.inputs[0])
    if not (model_dir / "training.json").is_file():
        raise StageError(f"{model_dir}: no training.json (did the {stage} stage finish?)")
    return model_dir
