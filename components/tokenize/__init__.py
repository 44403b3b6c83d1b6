"""The tokenize stage: byte-level BPE, StarCoder metadata and FIM, packed token files for training.

Modules: :mod:`~components.tokenize.tokenizer` (special tokens, training, codec),
:mod:`~components.tokenize.packing` (split by repo, metadata, files on disk),
:mod:`~components.tokenize.fim` (fill-in-the-middle), :mod:`~components.tokenize.dataset`
(:class:`TokenDataset`, what the trainer reads) and :mod:`~components.tokenize.pipeline` (the stage).
Imports are lazy: ``components.config`` imports this package, and ``tokenizers`` need not load with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.config import Params
    from components.report import StageReport
    from components.stage import StageIO


def run(params: Params, io: StageIO) -> StageReport:
    """Train the byte-level BPE tokenizer and pack the train/val token files the trainer reads."""
    from components.tokenize.pipeline import run as run_stage

    return run_stage(params, io)


__all__ = ["run"]
