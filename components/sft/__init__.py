"""sft stage: instruction tuning of the annealed model (OpenCoder two-stage SFT) on the shared engine.

Inputs (in this order): ``models/anneal`` (the exported model), ``data/tokenize`` (tokenizer, splits and
the validation data the engine evaluates on), ``data/clean`` (where docstring pairs are mined),
``data/problems`` (tested problems: OpenCoder's second, practical-coding stage) and ``data/evol``
(Evol-Instruct pairs).
Output: ``models/sft``, a Hugging Face checkpoint with ``training.json``; checkpoints in ``models/sft.ckpt``.

- ``sft.stages`` run in order in one engine run: stage ``k`` trains its ``steps`` (or ``epochs`` over its
  examples) on its own data with its own LR (warmup, then cosine to ``min_lr_ratio * lr``).
- A stage's data (``source``, one or a list) is the pairs mined from the training split
  (``components/sft/mine.py``), the problems stage's training problems (evaluation's chat request -> the
  whole solution in a code block), the evol stage's Evol-Instruct pairs, or the user's JSON-lines files
  (decontaminated against ``evaluate.benchmarks``).
  Conversations are rendered with the chat template; loss only on the
  assistant replies unless ``sft.loss_on_prompt`` (``components/sft/data.py``).
- Batches are ``(input_ids, labels)`` (right-padded with ``<fim_pad>``, labels -100 on prompt and padding),
  so the engine's loss ignores the prompt.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.benchmarks import Problem
from components.clean.decontam import benchmark_index
from components.errors import StageError
from components.evaluate.generate import chat_reply, chat_request
from components.evol import read_evolved
from components.params import StageContext
from components.params.sft import SftJob, SftStageConfig
from components.problems import read_split
from components.sft.data import (
    Example,
    Message,
    SftBatches,
    encode_conversation,
    pair_messages,
    read_conversations,
)
from components.sft.mine import mine_pairs
from components.stage_runner import Input, Stage, StageIO
from components.tokens.dataset import TokenizedData
from components.train.losses import Batch
from components.train.optim import Cosine
from components.train.plan import BatchSource, TrainPlan
from components.train.stage import DOCUMENTS, TOKENS, model_input, run_training


@dataclass(frozen=True)
class StagedSchedule:
    """Stage ``k``'s schedule from its first optimizer step on (``starts`` ascending, ``starts[0] == 0``)."""

    starts: tuple[int, ...]
    schedules: tuple[Cosine, ...]

    def __call__(self, step: int) -> float:
        stage = max(k for k, start in enumerate(self.starts) if start <= step)
        return self.schedules[stage](step - self.starts[stage])


@dataclass(frozen=True)
class StagedBatches:
    """Stage ``k``'s batches from its first micro step on (``starts`` ascending, ``starts[0] == 0``)."""

    starts: tuple[int, ...]
    sources: tuple[BatchSource, ...]

    def batch(self, step: int, micro_batch: int, rank: int, world_size: int) -> Batch:
        """The batch of micro step ``step`` from the stage it falls in."""
        stage = max(k for k, start in enumerate(self.starts) if start <= step)
        return self.sources[stage].batch(step - self.starts[stage], micro_batch, rank, world_size)


def stage_steps(stage: SftStageConfig, examples: int, examples_per_step: int) -> int:
    """Optimizer steps of a stage: its ``steps``, or ``epochs`` passes over its examples."""
    if stage.steps is not None:
        return stage.steps
    epochs = stage.epochs or 1.0  # the config requires one of steps and epochs
    return max(1, math.ceil(epochs * examples / examples_per_step))


def stage_schedule(stage: SftStageConfig, steps: int) -> Cosine:
    """Warmup, then cosine from ``lr`` to ``min_lr_ratio * lr`` over the stage's steps."""
    return Cosine(
        lr=stage.lr, min_lr=stage.lr * stage.min_lr_ratio, warmup=min(stage.warmup, steps - 1), steps=steps
    )


def source_conversations(
    source: str, stage: SftStageConfig, job: SftJob, io: StageIO, details: dict[str, Any], cache: dict
) -> list[list[Message]]:
    """The conversations one source gives a stage (mined pairs are mined once, in ``cache``)."""
    cfg = job.sft
    if source == "files":
        conversations = [messages for path in stage.data for messages in read_conversations(path)]
        return decontaminated(conversations, job, details)
    if source == "problems":
        conversations = [problem_messages(problem) for problem in read_split(io.input("problems"), "train")]
        if not conversations:
            raise StageError(f"sft stage {stage.name!r}: {io.input('problems')} has no training problems")
        return conversations
    if source == "evolved":  # filtered and decontaminated by the evol stage
        return [
            pair_messages(pair["instruction"], pair["response"]) for pair in read_evolved(io.input("evolved"))
        ]
    if not cfg.mined.enabled:
        raise StageError(f"sft stage {stage.name!r} mines pairs but sft.mined.enabled is false")
    if "mined" not in cache:
        pairs, drops = mine_pairs(
            io.input("documents"), io.input("tokens"), cfg.mined, job.decontam, job.benchmarks
        )
        cache["mined"] = [pair_messages(pair.instruction, pair.response) for pair in pairs]
        details["mined_pairs"], details["mined_drops"] = len(pairs), dict(sorted(drops.items()))
    return cache["mined"]


def sft_examples(job: SftJob, io: StageIO, tokenizer: Any) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """The tokenized examples of each stage (by name) and what was read, mined and dropped."""
    cfg = job.sft
    max_len = job.model.seq_len + 1
    details: dict[str, Any] = {"mined_pairs": 0, "mined_drops": {}, "stages": []}
    cache: dict[str, list[list[Message]]] = {}
    result: dict[str, list[Example]] = {}
    for stage in cfg.stages:
        per_source = {
            source: source_conversations(source, stage, job, io, details, cache) for source in stage.sources
        }
        conversations = [conversation for found in per_source.values() for conversation in found]
        encoded = [
            encode_conversation(c, tokenizer, cfg.chat_template, cfg.loss_on_prompt) for c in conversations
        ]
        # Truncated to the context, an example must still have a trained token (as a next-token target).
        kept = [example for example in encoded if (example.labels[1:max_len] != -100).any()]
        if not kept:
            raise StageError(
                f"sft stage {stage.name!r}: none of its {len(encoded)} examples has a response token within "
                f"model.seq_len + 1 = {max_len} tokens"
            )
        result[stage.name] = kept
        details["stages"].append(
            {
                "name": stage.name,
                "examples": len(kept),
                "conversations": {source: len(found) for source, found in per_source.items()},
                "dropped_no_response_in_context": len(encoded) - len(kept),
            }
        )
    return result, details


def problem_messages(problem: Problem) -> list[Message]:
    """A tested problem as a conversation: evaluation's chat request, and the whole solution as reply."""
    code = f"{problem.prompt}{problem.gold or ''}"
    return pair_messages(chat_request(problem.prompt, problem.language), chat_reply(code, problem.language))


def decontaminated(
    conversations: list[list[Message]], job: SftJob, details: dict[str, Any]
) -> list[list[Message]]:
    """The user's conversations that overlap no configured benchmark (the dropped ones are counted)."""
    if not job.decontam.enabled:
        return conversations
    index = benchmark_index(job.decontam, job.benchmarks)
    kept = [c for c in conversations if index.first_contamination("\n".join(m["content"] for m in c)) is None]
    drops = details.setdefault("mined_drops", {})
    drops["user_data_benchmark_overlap"] = (
        drops.get("user_data_benchmark_overlap", 0) + len(conversations) - len(kept)
    )
    return kept


def _examples_digest(examples: dict[str, list[Example]]) -> str:
    digest = hashlib.sha256()
    for name, stage_examples in examples.items():
        digest.update(name.encode())
        for example in stage_examples:
            digest.update(example.tokens.tobytes())
            digest.update(example.labels.tobytes())
    return digest.hexdigest()


def train_plan(job: SftJob, context: StageContext, io: StageIO) -> TrainPlan:
    """What SFT trains: the annealed weights, then each ``sft.stages`` entry in turn on its examples."""
    model_dir = Path(io.input("anneal"))
    data = TokenizedData(io.input("tokens"), job.model.seq_len, context.seed)
    tokenizer = data.tokenizer
    examples, details = sft_examples(job, io, tokenizer)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    examples_per_step = job.train.micro_batch * job.train.grad_accum * world
    steps, sources, schedules = [], [], []
    for stage, stage_examples in zip(job.sft.stages, examples.values(), strict=True):
        count = stage_steps(stage, len(stage_examples), examples_per_step)
        steps.append(count)
        schedules.append(stage_schedule(stage, count))
        sources.append(
            SftBatches(stage_examples, context.seed, tokenizer.pad_token_id, job.model.seq_len + 1)
        )
        details["stages"][len(steps) - 1]["steps"] = count
    starts = tuple(sum(steps[:k]) for k in range(len(steps)))
    anneal_summary = (model_dir / "training.json").read_bytes()
    return TrainPlan(
        stage="sft",
        steps=sum(steps),
        schedule=StagedSchedule(starts, tuple(schedules)),
        weight_decay=job.sft.weight_decay,
        train_data=StagedBatches(tuple(start * job.train.grad_accum for start in starts), tuple(sources)),
        data=data,
        output=io.require_output("sft"),
        init_from=str(model_dir),
        identity={
            "anneal": hashlib.sha256(anneal_summary).hexdigest(),
            "examples": _examples_digest(examples),
        },
        details={"sft": details},
        report_drops=details["mined_drops"],
        report_metrics={"sft_examples": sum(stage["examples"] for stage in details["stages"])},
    )


STAGE = Stage(
    "sft",
    run_training,
    inputs=(model_input("anneal"), TOKENS, DOCUMENTS, Input("problems", "dir"), Input("evolved", "dir")),
)

__all__ = ["STAGE", "StagedBatches", "StagedSchedule", "stage_steps", "train_plan"]
