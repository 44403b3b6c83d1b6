"""pretrain stage: train the model from scratch on the tokenized corpus with the DeepSpeed engine.

Input: ``data/tokenize`` (token files, index, tokenizer). Output: ``models/pretrain`` — a plain Hugging
Face checkpoint (fp32 weights, config, tokenizer) plus ``training.json`` (final metrics and the loss
curve). Resumable checkpoints live in ``models/pretrain.ckpt/``; rerunning a killed stage with the same
params resumes from the latest one. Engine and launch: ``components/train/``; see docs/training.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from components.errors import StageError
from components.report import StageReport
from components.train.optim import Cosine, WarmupStableDecay
from components.train.plan import TrainPlan

if TYPE_CHECKING:  # components.config imports this package's config: no runtime import back
    from components.config import Params
    from components.stage import StageIO


def schedule(params: Params) -> WarmupStableDecay | Cosine:
    """The pretraining LR schedule from ``pretrain:`` params."""
    cfg = params.pretrain
    if cfg.schedule == "cosine":
        return Cosine(lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, steps=cfg.steps)
    return WarmupStableDecay(
        lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, steps=cfg.steps, decay_fraction=cfg.decay_fraction
    )


def tokenized_input(io: StageIO, position: int = 0) -> str:
    """The tokenize output among the stage inputs, checked to exist."""
    if len(io.inputs) <= position:
        raise StageError(f"missing --input #{position + 1}: the tokenize output (data/tokenize)")
    data_dir = io.inputs[position]
    if not (Path(data_dir) / "index.json").is_file():
        raise StageError(f"{data_dir}: no index.json (did the tokenize stage run?)")
    return data_dir


def train_plan(params: Params, io: StageIO) -> TrainPlan:
    """What pretraining trains: random init, the train split with FIM, the pretraining schedule."""
    from components.tokenize.dataset import TokenDataset

    data_dir = tokenized_input(io)
    tok = params.tokenize
    data = TokenDataset(
        data_dir,
        "train",
        params.model.seq_len,
        params.project.seed,
        fim_rate=tok.fim_rate,
        fim_spm_rate=tok.fim_spm_rate,
    )
    return TrainPlan(
        stage="pretrain",
        steps=params.pretrain.steps,
        schedule=schedule(params),
        weight_decay=params.pretrain.weight_decay,
        train_data=data,
        data_dir=data_dir,
        output=str(io.output),
        identity={"fim": [tok.fim_rate, tok.fim_spm_rate]},
    )


def run(params: Params, io: StageIO) -> StageReport:
    """Pretrain the model from scratch with DeepSpeed and export a Hugging Face checkpoint."""
    from components.tokenize.dataset import read_index
    from components.train.launch import launch, training_report

    data_dir = tokenized_input(io)
    summary = launch("pretrain", params, io)
    return training_report("pretrain", summary, read_index(data_dir), str(io.output))
