"""anneal stage: continue from the pretrained model with the LR decaying to 0 on a high-quality mix.

OLMo / OpenCoder annealing. Inputs (in this order): ``models/pretrain`` (the exported model and its
``training.json``), ``data/tokenize`` and ``data/clean`` (for the quality signals curate computed).

- Weights come from the exported pretrain checkpoint; the optimizer starts fresh.
- The LR starts at pretraining's final LR (``final_lr`` in ``models/pretrain/training.json``) and decays
  linearly to 0 over ``anneal.steps``.
- Data: a share ``anneal.hq_fraction`` of the micro-batches comes from the high-quality subset of the
  training split, the rest from the original training mix. The subset is the rule ``anneal.hq_rule``
  applied to the ``quality_score``, ``has_docstring`` and ``has_tests`` columns of ``data/clean``:
  ``quality_score >= quantile(min_quality_quantile)`` over the training documents, and if required
  ``has_docstring`` / ``has_tests`` true. Micro-batch ``i`` is high-quality when
  ``floor((i + 1) * f) > floor(i * f)``: an exact, deterministic ratio, and each source is read in order.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.errors import StageError
from components.params import StageContext
from components.params.anneal import AnnealJob, HighQualityRule
from components.shards import iter_tables
from components.stage_runner import Stage, StageIO
from components.tokens.dataset import TokenizedData
from components.train.losses import Batch
from components.train.optim import LinearToZero
from components.train.plan import BatchSource, TrainPlan
from components.train.stage import DOCUMENTS, TOKENS, model_input, run_training

SIGNAL_COLUMNS = ("quality_score", "has_docstring", "has_tests")


@dataclass(frozen=True)
class MixedBatches:
    """Micro-batches from ``high_quality`` with share ``hq_fraction``, the rest from ``base``."""

    base: BatchSource
    high_quality: BatchSource
    hq_fraction: float

    def hq_before(self, step: int) -> int:
        """How many of micro steps ``0 .. step - 1`` come from the high-quality source."""
        return math.floor(step * self.hq_fraction)

    def batch(self, step: int, micro_batch: int, rank: int, world_size: int) -> Batch:
        """The batch of micro step ``step`` from the source it falls on."""
        taken = self.hq_before(step)
        if self.hq_before(step + 1) > taken:
            return self.high_quality.batch(taken, micro_batch, rank, world_size)
        return self.base.batch(step - taken, micro_batch, rank, world_size)


def _signal_table(clean_dir: str) -> pa.Table:
    """``id`` and the quality-signal columns of every document in ``clean_dir``."""
    tables = []
    for table in iter_tables(clean_dir):
        missing = [name for name in ("id", *SIGNAL_COLUMNS) if name not in table.column_names]
        if missing:
            raise StageError(f"{clean_dir}: shards lack the quality-signal columns {missing} (from curate)")
        tables.append(table.select(["id", *SIGNAL_COLUMNS]))
    return pa.concat_tables(tables)


def high_quality_ids(clean_dir: str, rule: HighQualityRule, train_ids: list[str]) -> list[str]:
    """Ids of training documents that satisfy ``rule`` (sorted); see the module docstring."""
    signals = _signal_table(clean_dir).to_pandas().set_index("id")
    signals = signals[signals.index.isin(set(train_ids))]
    if signals.empty:
        return []
    scores = signals["quality_score"].fillna(0.0).to_numpy(dtype=float)
    keep = scores >= np.quantile(scores, rule.min_quality_quantile)
    if rule.require_docstring:
        keep &= signals["has_docstring"].fillna(False).to_numpy(dtype=bool)
    if rule.require_tests:
        keep &= signals["has_tests"].fillna(False).to_numpy(dtype=bool)
    return sorted(signals.index[keep])


def train_plan(job: AnnealJob, context: StageContext, io: StageIO) -> TrainPlan:
    """What annealing trains: the pretrained weights, LR from its final value to 0, the HQ mix."""
    model_dir = Path(io.input("pretrain"))
    pretrain_summary = (model_dir / "training.json").read_bytes()
    start_lr = json.loads(pretrain_summary)["final_lr"]
    cfg = job.anneal
    data = TokenizedData(io.input("tokens"), job.model.seq_len, context.seed)
    base = data.train(job.fim.rate, job.fim.spm_rate)
    hq_ids = high_quality_ids(io.input("documents"), cfg.hq_rule, base.ids)
    if cfg.hq_fraction > 0 and not hq_ids:
        raise StageError(f"anneal.hq_rule selects no training document of {io.input('documents')}; loosen it")
    train_data: BatchSource = base
    if cfg.hq_fraction > 0:
        train_data = MixedBatches(base, data.train(job.fim.rate, job.fim.spm_rate, hq_ids), cfg.hq_fraction)
    return TrainPlan(
        stage="anneal",
        steps=cfg.steps,
        schedule=LinearToZero(start_lr=start_lr, steps=cfg.steps),
        weight_decay=cfg.weight_decay,
        train_data=train_data,
        data=data,
        output=io.require_output("anneal"),
        init_from=str(model_dir),
        identity={
            "pretrain": hashlib.sha256(pretrain_summary).hexdigest(),
            "hq_ids": hashlib.sha256("\n".join(hq_ids).encode()).hexdigest(),
        },
        details={"start_lr": start_lr, "hq_documents": len(hq_ids), "train_documents": len(base.ids)},
    )


STAGE = Stage("anneal", run_training, inputs=(model_input("pretrain"), TOKENS, DOCUMENTS))

__all__ = ["STAGE", "MixedBatches", "high_quality_ids", "train_plan"]
