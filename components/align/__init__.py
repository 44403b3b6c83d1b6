"""align stage: RRTF (PanGu-Coder2) on the shared engine, after sft.

Inputs (in this order): ``models/sft`` (the policy to start from), ``data/tokenize`` (tokenizer and the
validation split the engine reports on) and ``data/problems`` (problems with tests). Output:
``models/align``; earlier iterations' models and ranked responses in ``models/align.iterations/``.

Each of ``align.iterations``:
1. sample ``align.samples`` responses per training problem from the current policy, plus the teacher's
   (``teacher``; without one, the policy's own greedy answer stands in);
2. score each in the sandbox by PanGu-Coder2's feedback levels and rank them (``feedback.py``);
3. train the DeepSpeed engine on them with RRHF's loss: the ranking hinge loss on length-normalised
   log-likelihoods plus cross-entropy on the best response, the prompt masked
   (``components/train/losses.RankingLoss``).

Before the first iteration and after each, on the held-out problems: the policy's greedy pass rate
(with a bootstrap interval), and on responses sampled once from the starting policy plus each problem's
canonical solution, ranking accuracy (how often the likelihood order agrees with the test order) and
the ranking and SFT losses (the SFT loss is that of the best response). They are logged to MLflow per
iteration (step = iteration) and kept in the report (``before.*``, ``after.*``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.align.feedback import LEVEL_NAMES, Response, hinge, ranked, ranking_pairs
from components.align.responses import encode_response, reference_response, sample, score
from components.align.teacher import LocalTeacher, Teacher, load_teacher
from components.benchmarks import Problem, stable_subset
from components.errors import StageError
from components.evaluate.evaluator import load_model, model_prompt
from components.evaluate.generate import Decoding
from components.evaluate.stats import Measure, paired_difference, scored
from components.params import StageContext
from components.params.align import AlignJob
from components.problems import read_split
from components.report import StageReport
from components.stage_runner import Input, Stage, StageIO
from components.tokens.dataset import TokenizedData, read_index
from components.tracking import RunLogger
from components.train.batches import EpochOrder, Example, collate
from components.train.launch import launch
from components.train.losses import RankedBatch, RankingLoss, response_logprobs
from components.train.optim import Cosine
from components.train.plan import TrainPlan
from components.train.stage import TOKENS, model_input, training_report

#: Bootstrap settings of the held-out pass rate's interval (as evaluate's defaults).
RESAMPLES, CONFIDENCE = 1000, 0.95


@dataclass(frozen=True)
class RankedGroup:
    """One problem's tokenized responses, best first, with their scores."""

    examples: tuple[Example, ...]
    scores: tuple[float, ...]


class RankedBatches(EpochOrder[RankedGroup]):
    """Micro-batches of ``micro_batch`` problems (all their responses), indexed by micro step."""

    def __init__(self, groups: Sequence[RankedGroup], seed: int, pad_id: int, max_len: int) -> None:
        super().__init__(groups, seed)
        self.pad_id, self.max_len = pad_id, max_len

    def batch(self, step: int, micro_batch: int, rank: int = 0, world_size: int = 1) -> RankedBatch:
        """The ranked responses of micro step ``step``'s problems on ``rank``."""
        chosen = self.chosen(step, micro_batch, rank, world_size)
        rows = [example for group in chosen for example in group.examples]
        input_ids, labels = collate(rows, self.pad_id, self.max_len)
        groups = [number for number, group in enumerate(chosen) for _ in group.examples]
        scores = [value for group in chosen for value in group.scores]
        return RankedBatch(input_ids, labels, torch.tensor(groups), torch.tensor(scores, dtype=torch.float32))


# ------------------------------------------------------------------------------ the ranks' side
def read_groups(path: str) -> list[dict[str, Any]]:
    """The ranked responses of one iteration (JSONL: task_id, prompt, responses best first)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def ranked_groups(
    records: Sequence[dict[str, Any]], tokenizer: Any, chat: bool, max_len: int
) -> tuple[list[RankedGroup], int]:
    """The trainable groups (two responses or more with a response token in context) and how many
    problems were left out."""
    groups, dropped = [], 0
    for record in records:
        examples, scores = [], []
        for response in record["responses"]:
            example = encode_response(tokenizer, record["prompt"], response["text"], chat)
            if (example.labels[1:max_len] != -100).any():
                examples.append(example)
                scores.append(float(response["score"]))
        if len(examples) < 2:
            dropped += 1
            continue
        groups.append(RankedGroup(tuple(examples), tuple(scores)))
    return groups, dropped


def train_plan(job: AlignJob, context: StageContext, io: StageIO) -> TrainPlan:
    """What one iteration trains: the policy's weights on its ranked responses, with RRHF's loss."""
    cfg = job.align
    data = TokenizedData(io.input("tokens"), job.model.seq_len, context.seed)
    records = read_groups(io.input("groups"))
    max_len = job.model.seq_len + 1
    groups, dropped = ranked_groups(records, data.tokenizer, cfg.chat, max_len)
    if not groups:
        raise StageError(f"align: no problem of {io.input('groups')} has two responses within the context")
    policy = Path(io.input("policy"))
    return TrainPlan(
        stage="align",
        steps=cfg.steps,
        schedule=Cosine(lr=cfg.lr, min_lr=cfg.lr * cfg.min_lr_ratio, warmup=cfg.warmup, steps=cfg.steps),
        weight_decay=cfg.weight_decay,
        train_data=RankedBatches(groups, context.seed, data.tokenizer.pad_token_id, max_len),
        data=data,
        output=io.require_output("align"),
        init_from=str(policy),
        loss=RankingLoss(cfg.rank_weight, cfg.sft_weight),
        identity={
            "policy": hashlib.sha256((policy / "training.json").read_bytes()).hexdigest(),
            "groups": hashlib.sha256(Path(io.input("groups")).read_bytes()).hexdigest(),
        },
        report_drops={"no_two_responses_in_context": dropped} if dropped else {},
        report_metrics={"align_groups": float(len(groups))},
    )


# ------------------------------------------------------------------------------ the stage's side
#: A loaded model and its tokenizer.
Loaded = tuple[Any, Any]


def respond(
    policy: Loaded,
    problems: Sequence[Problem],
    job: AlignJob,
    seed: int,
    n: int,
    teacher: Teacher | None,
    reference: bool = False,
) -> list[list[Response]]:
    """Each problem's scored responses: ``n`` sampled from the policy, then the teacher's greedy one,
    then (``reference``) the problem's canonical solution."""
    cfg = job.align
    decoding = Decoding(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    texts = sample(*policy, problems, n, decoding, cfg.chat, seed)
    sources = [["policy"] * n for _ in problems]
    if teacher is not None:
        greedy = teacher.answer(problems, cfg.chat, cfg.max_new_tokens, seed)
        texts = [[*mine, theirs] for mine, theirs in zip(texts, greedy, strict=True)]
        sources = [[*who, "teacher"] for who in sources]
    if reference:
        for problem, mine, who in zip(problems, texts, sources, strict=True):
            solution = reference_response(problem, cfg.chat)
            if solution is not None:
                mine.append(solution)
                who.append("reference")
    return score(problems, texts, sources, cfg.chat, job.sandbox)


def group_records(
    problems: Sequence[Problem], responses: Sequence[Sequence[Response]], tokenizer: Any, chat: bool
) -> list[dict[str, Any]]:
    """The JSONL records of ranked responses: each problem's model prompt and responses, best first."""
    return [
        {
            "task_id": problem.task_id,
            "prompt": model_prompt(problem, tokenizer, chat),
            "responses": [
                {"text": r.text, "source": r.source, "kind": r.kind, "score": r.score}
                for r in ranked(answers)
            ],
        }
        for problem, answers in zip(problems, responses, strict=True)
    ]


@torch.no_grad()
def probe_logprobs(model: Any, pad_id: int, groups: Sequence[RankedGroup], max_len: int) -> list[list[float]]:
    """The length-normalised log-likelihood of every probe response under ``model``, best first."""
    model.eval()
    device = next(model.parameters()).device
    result = []
    for group in groups:
        input_ids, labels = collate(group.examples, pad_id, max_len)
        logprobs = response_logprobs(model, input_ids.to(device), labels.to(device))
        result.append([float(value) for value in logprobs.float().cpu()])
    return result


def heldout_metrics(
    model: Any,
    tokenizer: Any,
    heldout: Sequence[Problem],
    probe: Sequence[RankedGroup],
    job: AlignJob,
    seed: int,
) -> tuple[dict[str, float], Measure | None]:
    """The policy's held-out figures (see the module docstring) and its pass-rate measure."""
    cfg = job.align
    metrics: dict[str, float] = {}
    measure = None
    if heldout:
        greedy = sample(model, tokenizer, heldout, 1, Decoding(cfg.max_new_tokens), cfg.chat, seed)
        outcomes = score(heldout, greedy, [["policy"]] * len(heldout), cfg.chat, job.sandbox)
        passed = [float(answers[0].kind == "passed") for answers in outcomes]
        measure = Measure.mean("heldout_pass_rate", [p.task_id for p in heldout], passed)
        metrics.update(scored(measure, RESAMPLES, CONFIDENCE, seed))
    if probe:
        logprobs = probe_logprobs(model, tokenizer.pad_token_id, probe, job.model.seq_len + 1)
        agreeing = pairs = 0
        rank_loss = sft_loss = 0.0
        for group, values in zip(probe, logprobs, strict=True):
            found, counted = ranking_pairs(values, group.scores)
            agreeing, pairs = agreeing + found, pairs + counted
            rank_loss += hinge(values, group.scores)
            sft_loss -= values[0]
        metrics["ranking_problems"] = float(len(probe))
        metrics["ranking_pairs"] = float(pairs)
        if pairs:
            metrics["ranking_accuracy"] = agreeing / pairs
        metrics["heldout_rank_loss"] = rank_loss / len(probe)
        metrics["heldout_sft_loss"] = sft_loss / len(probe)
    return metrics, measure


def level_counts(responses: Sequence[Sequence[Response]]) -> dict[str, float]:
    """How many responses reached each feedback level."""
    counts = dict.fromkeys(LEVEL_NAMES, 0.0)
    for answers in responses:
        for response in answers:
            counts[LEVEL_NAMES[response.level]] += 1
    return {f"responses.{name}": value for name, value in counts.items()}


def iteration_dir(output: str, iteration: int) -> Path:
    """Where iteration ``iteration`` keeps its ranked responses (and, before the last, its model)."""
    return Path(f"{output.rstrip('/')}.iterations") / f"iter-{iteration}"


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write ``records`` as JSON lines (through a temporary file, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records), encoding="utf-8")
    tmp.replace(path)


def run(job: AlignJob, context: StageContext, io: StageIO) -> StageReport:
    """Run ``align.iterations`` of sample -> rank -> train (see the module docstring)."""
    cfg, seed = job.align, context.seed
    output = io.require_output("align")
    train_problems = stable_subset(read_split(io.input("problems"), "train"), cfg.max_problems)
    heldout = read_split(io.input("problems"), "heldout")
    if not train_problems:
        raise StageError(f"{io.input('problems')}/train.jsonl: no training problems to align on")
    logger = RunLogger()
    policy = io.input("policy")
    model, tokenizer = load_model(Path(policy))
    teacher = (
        load_teacher(job.teacher, iteration_dir(output, 0).parent / "teacher")
        if job.teacher is not None
        else None
    )
    # The canonical solution joins the policy's samples: a tiny policy's samples all fail alike, and
    # the pair (passing solution, failing sample) is there at every scale.
    probe_responses = respond(
        (model, tokenizer), heldout, job, seed + 1, cfg.heldout_samples, teacher=None, reference=True
    )
    # Only responses with a token in context are compared: one cut off entirely would tie at 0.
    probe_records = group_records(heldout, probe_responses, tokenizer, cfg.chat)
    probe, _ = ranked_groups(probe_records, tokenizer, cfg.chat, job.model.seq_len + 1)
    before, before_measure = heldout_metrics(model, tokenizer, heldout, probe, job, seed)
    logger.log_metrics(0, before)
    history = [before]
    metrics: dict[str, float] = {f"before.{key}": value for key, value in before.items()}
    summary: dict[str, Any] = {}
    after_measure = before_measure
    for iteration in range(cfg.iterations):
        work = iteration_dir(output, iteration)
        # Without a teacher, the policy's own greedy answer stands in for it.
        answerer = teacher or LocalTeacher(model, tokenizer)
        responses = respond(
            (model, tokenizer), train_problems, job, seed + 2 + iteration, cfg.samples, answerer
        )
        write_jsonl(work / "groups.jsonl", group_records(train_problems, responses, tokenizer, cfg.chat))
        metrics.update({f"iter{iteration}.{key}": value for key, value in level_counts(responses).items()})
        target = output if iteration == cfg.iterations - 1 else str(work / "model")
        inputs = {"policy": policy, "tokens": io.input("tokens"), "groups": str(work / "groups.jsonl")}
        summary = launch(job, context, StageIO(inputs, target))
        policy = target
        model, tokenizer = load_model(Path(policy))
        after, after_measure = heldout_metrics(model, tokenizer, heldout, probe, job, seed)
        logger.log_metrics(iteration + 1, after)
        history.append(after)
    metrics.update({f"after.{key}": value for key, value in history[-1].items()})
    if before_measure is not None and after_measure is not None:
        change = paired_difference(before_measure, after_measure, RESAMPLES, CONFIDENCE, seed)
        metrics["heldout_pass_rate.change"] = float(change["difference"])
    report = training_report("align", summary, read_index(io.input("tokens")), output)
    report.files_in = len(train_problems)
    report.metrics.update(metrics)
    report.details["heldout_history"] = history
    return report


STAGE = Stage("align", run, inputs=(model_input("policy"), TOKENS, Input("problems", "dir")))
#: What the ranks of one iteration read: the policy it starts from, the tokenizer, its ranked responses.
WORKER_STAGE = Stage("align", run, inputs=(model_input("policy"), TOKENS, Input("groups", "file")))

__all__ = ["STAGE", "WORKER_STAGE", "RankedBatches", "run", "train_plan"]
