"""pretrain stage: train the model from scratch on the tokenized corpus with the DeepSpeed engine.

Input: ``data/tokenize`` (token files, index, tokenizer). Output: ``models/pretrain`` — a plain Hugging
Face checkpoint (fp32 weights, config, tokenizer) plus ``training.json`` (final metrics and the loss
curve). Resumable checkpoints live in ``models/pretrain.ckpt/``; rerunning a killed stage with the same
params resumes from the latest one. Engine and launch: ``components/train/``; see docs/training.md.
"""

from __future__ import annotations

from components.params import StageContext
from components.params.pretrain import PretrainJob
from components.stage_runner import Stage, StageIO
from components.tokens.dataset import TokenizedData
from components.train.optim import Cosine, WarmupStableDecay
from components.train.plan import TrainPlan
from components.train.stage import TOKENS, run_training


def schedule(job: PretrainJob) -> WarmupStableDecay | Cosine:
    """The pretraining LR schedule from ``pretrain:`` params."""
    cfg = job.pretrain
    if cfg.schedule == "cosine":
        return Cosine(lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, steps=cfg.steps)
    return WarmupStableDecay(
        lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, steps=cfg.steps, decay_fraction=cfg.decay_fraction
    )


def train_plan(job: PretrainJob, context: StageContext, io: StageIO) -> TrainPlan:
    """What pretraining trains: random init, the train split with FIM, the pretraining schedule."""
    data = TokenizedData(io.input("tokens"), job.model.seq_len, context.seed)
    return TrainPlan(
        stage="pretrain",
        steps=job.pretrain.steps,
        schedule=schedule(job),
        weight_decay=job.pretrain.weight_decay,
        train_data=data.train(job.fim.rate, job.fim.spm_rate),
        data=data,
        output=io.require_output("pretrain"),
    )


STAGE = Stage("pretrain", run_training, inputs=(TOKENS,))

__all__ = ["STAGE", "train_plan"]
