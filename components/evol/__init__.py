"""evol stage: Evol-Instruct (WizardCoder, PanGu-Coder2): a teacher evolves seed instructions into harder
ones and answers them; rule-based filters and decontamination keep what SFT may train on.

Inputs (in this order): ``models/anneal`` (the teacher when ``teacher:`` is null: the model post-training
starts from, with its tokenizer's chat template, so the stage runs everywhere) and ``data/problems``
(seeds). Output: ``data/evol/train.jsonl`` (``{"instruction", "response", ...}``, which
``sft.stages[*].source: evolved`` reads); dropped ones with their rule in ``data/evol.excluded``
(``codemill inspect evol``).

1. Seeds: the problems stage's training problems (``evol.seed_problems``) and your files
   (``evol.seed_files``), at most ``evol.max_seeds`` (lowest hash of the instruction).
2. Each of ``evol.rounds`` evolves the previous round's survivors with one operation of
   ``evol.operations`` (a hash of the id and the round picks it; sampled at ``evol.temperature``). An
   evolution that is empty, repeats its input (``evolution_failed``) or copies the template
   (``evolution_leaked_template``) is dropped and not evolved further.
3. The teacher answers every evolved instruction greedily (``respond`` template); ``evol.answer_seeds``
   answers the seeds too.
4. Filters, in order, each counted by name: ``instruction_length``, ``response_length``, ``refusal``,
   ``no_code``, ``wrong_language``, ``code_does_not_parse`` (Python), ``duplicate_instruction`` (against
   the seeds and everything kept), ``benchmark_overlap`` (the clean stage's check against
   ``evaluate.benchmarks``).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from components.align.teacher import LocalTeacher, Teacher, load_teacher
from components.clean.decontam import BenchmarkIndex, benchmark_index, normalize_whitespace
from components.errors import StageError
from components.evaluate.evaluator import load_model
from components.evaluate.generate import CODE_BLOCK, Decoding
from components.params import StageContext
from components.params.base import StrictModel
from components.params.evol import EvolFilterConfig, EvolJob
from components.problems import read_split
from components.report import StageReport
from components.shards import iter_jsonl
from components.stage_runner import Exclusions, Input, Stage, StageIO, shard_outputs
from components.tokens.packing import unit_hash
from components.train.stage import model_input

#: The output file SFT reads.
TRAIN_FILE = "train.jsonl"
#: Fence tags that name a language by another spelling.
FENCE_ALIASES = {"py": "python", "python3": "python", "js": "javascript", "c++": "cpp", "sh": "shell"}
#: A reply this short that apologises is a refusal (WizardLM's elimination rule).
REFUSAL = re.compile(r"\b(sorry|as an ai|i cannot|i can't)\b", re.IGNORECASE)
REFUSAL_MAX_WORDS = 80
#: A label the teacher may repeat before its rewrite.
REWRITE_LABEL = re.compile(r"^\s*#?\s*rewritten question\s*#?\s*:?\s*", re.IGNORECASE)


class Operations(StrictModel):
    """The prompt templates and evolution operations of ``evol.operations`` (see operations.yaml)."""

    evolve: str
    respond: str
    operations: dict[str, str] = Field(min_length=1)
    leaked_phrases: list[str] = Field(default_factory=list)

    @field_validator("evolve")
    @classmethod
    def _evolve_fields(cls, text: str) -> str:
        for field in ("{method}", "{instruction}"):
            if field not in text:
                raise ValueError(f"must contain {field}")
        return text

    @field_validator("respond")
    @classmethod
    def _respond_fields(cls, text: str) -> str:
        if "{instruction}" not in text:
            raise ValueError("must contain {instruction}")
        return text


def read_operations(path: str) -> Operations:
    """The templates of ``path``; a StageError naming the file and the field if they are malformed."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"evol.operations {path}: {exc}") from exc
    try:
        return Operations.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise StageError(f"evol.operations {path}: {fields}") from exc


@dataclass(frozen=True)
class Instruction:
    """A seed or an evolved instruction, with where it came from."""

    id: str
    text: str
    language: str
    seed_id: str
    operation: str | None = None
    round: int = 0


def seed_request(prompt: str, language: str) -> str:
    """A tested problem as a seed instruction: implement the function its prompt starts."""
    return f"Implement the {language} function below.\n\n```{language}\n{prompt.rstrip()}\n```"


def read_seeds(job: EvolJob, io: StageIO) -> list[Instruction]:
    """The seeds: training problems and the user's files, at most ``evol.max_seeds`` (lowest hash)."""
    seeds = []
    if job.evol.seed_problems:
        for problem in read_split(io.input("problems"), "train"):
            text = seed_request(problem.prompt, problem.language)
            seeds.append(Instruction(problem.task_id, text, problem.language, problem.task_id))
    for path in job.evol.seed_files:
        stem = PurePosixPath(path).name.split(".")[0]
        for where, record in iter_jsonl(path):
            instruction, language = record.get("instruction"), record.get("language", "python")
            if not isinstance(instruction, str) or not instruction.strip() or not isinstance(language, str):
                raise StageError(f"{where}: expected a string 'instruction' (and optionally 'language')")
            seed_id = f"{stem}/{where.rsplit(':', 1)[-1]}"
            seeds.append(Instruction(seed_id, instruction, language, seed_id))
    seeds.sort(key=lambda seed: (unit_hash("evol-seed", seed.text), seed.id))
    return seeds[: job.evol.max_seeds]


def pick_operation(names: list[str], instruction_id: str, round_: int) -> str:
    """The operation applied to an instruction in a round (a hash: the same on every run)."""
    return names[int(unit_hash(f"evol-{round_}", instruction_id) * len(names))]


def cleaned_evolution(text: str) -> str:
    """The rewritten instruction without a repeated label or surrounding whitespace."""
    return REWRITE_LABEL.sub("", text.strip(), count=1).strip()


def evolution_failure(evolved: str, source: str, leaked: list[str]) -> str | None:
    """Why an evolution is unusable, or None (WizardLM's elimination rules)."""
    if not evolved.strip() or normalize_whitespace(evolved) == normalize_whitespace(source):
        return "evolution_failed"
    lowered = evolved.lower()
    if any(phrase.lower() in lowered for phrase in leaked):
        return "evolution_leaked_template"
    return None


def response_failure(response: str, language: str, rules: EvolFilterConfig) -> str | None:
    """The first response rule ``response`` breaks, or None."""
    if not rules.min_response_chars <= len(response) <= rules.max_response_chars:
        return "response_length"
    if REFUSAL.search(response) and len(response.split()) < REFUSAL_MAX_WORDS:
        return "refusal"
    block = CODE_BLOCK.search(response)
    if block is None:
        return "no_code" if rules.require_code else None
    if not rules.check_language:
        return None
    tag = response[block.start() + 3 : response.index("\n", block.start())].strip().lower()
    if tag and FENCE_ALIASES.get(tag, tag) != language:
        return "wrong_language"
    if language == "python":
        try:
            compile(block.group(1), "<evolved>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return "code_does_not_parse"
    return None


def _excluded(instruction: Instruction, response: str = "") -> dict[str, Any]:
    content = f"{instruction.text}\n\n{response}".strip()
    return {
        "id": instruction.id,
        "repo": "seed",
        "path": instruction.seed_id,
        "lang": instruction.language,
        "content": content,
    }


def evolve(
    teacher: Teacher, seeds: list[Instruction], job: EvolJob, ops: Operations, seed: int, drops: Exclusions
) -> list[Instruction]:
    """Every round's surviving evolutions, round by round."""
    cfg = job.evol
    decoding = Decoding(cfg.evolve_max_new_tokens, cfg.temperature, cfg.top_p)
    names = sorted(ops.operations)
    current, evolved = seeds, []
    for round_ in range(1, cfg.rounds + 1):
        operations = [pick_operation(names, item.id, round_) for item in current]
        requests = [
            ops.evolve.format(method=ops.operations[name], instruction=item.text)
            for item, name in zip(current, operations, strict=True)
        ]
        texts = teacher.reply(requests, decoding, seed + round_) if requests else []
        survivors = []
        for item, name, text in zip(current, operations, texts, strict=True):
            text = cleaned_evolution(text)
            child = Instruction(f"{item.seed_id}/r{round_}", text, item.language, item.seed_id, name, round_)
            failure = evolution_failure(child.text, item.text, ops.leaked_phrases)
            if failure is None:
                survivors.append(child)
            else:
                drops.drop(failure, _excluded(child), name)
        evolved += survivors
        current = survivors
    return evolved


def kept_pairs(
    candidates: list[tuple[Instruction, str]],
    seeds: list[Instruction],
    rules: EvolFilterConfig,
    index: BenchmarkIndex | None,
    drops: Exclusions,
) -> list[tuple[Instruction, str]]:
    """The answered instructions that pass every filter (see the module docstring), in order."""
    seen = {normalize_whitespace(seed.text) for seed in seeds}
    kept = []
    for instruction, response in candidates:
        reason: str | None = None
        detail = None
        key = normalize_whitespace(instruction.text)
        is_seed = instruction.round == 0
        if not rules.min_instruction_chars <= len(instruction.text) <= rules.max_instruction_chars:
            reason = "instruction_length"
        else:
            reason = response_failure(response, instruction.language, rules)
        if reason is None and key in seen and not is_seed:
            reason = "duplicate_instruction"
        if reason is None and index is not None:
            contamination = index.first_contamination(f"{instruction.text}\n{response}")
            if contamination is not None:
                reason = "benchmark_overlap"
                detail = f"{contamination.benchmark}/{contamination.task_id} ({contamination.reason})"
        if reason is not None:
            drops.drop(reason, _excluded(instruction, response), detail)
            continue
        seen.add(key)
        kept.append((instruction, response))
    return kept


def record(instruction: Instruction, response: str) -> dict[str, Any]:
    """The output record of a kept pair (SFT reads ``instruction`` and ``response``)."""
    return {
        "id": instruction.id,
        "instruction": instruction.text,
        "response": response,
        "language": instruction.language,
        "seed_id": instruction.seed_id,
        "operation": instruction.operation,
        "round": instruction.round,
    }


def teacher_of(job: EvolJob, io: StageIO, work: Path) -> tuple[Teacher, str]:
    """The configured teacher (a registry model is downloaded to ``work``), or the annealed model; and
    a description for the report."""
    if job.teacher is not None:
        return load_teacher(job.teacher, work), job.teacher.endpoint or job.teacher.model or ""
    model = io.input("model")
    return LocalTeacher(*load_model(Path(model))), f"{model} (no teacher configured)"


def run(job: EvolJob, context: StageContext, io: StageIO) -> StageReport:
    """Seed, evolve, answer, filter and decontaminate (see the module docstring)."""
    cfg = job.evol
    output = io.require_output("evol")
    ops = read_operations(cfg.operations)
    seeds = read_seeds(job, io)
    if not seeds:
        raise StageError(
            "evol: no seed instruction (evol.seed_problems found no problem, evol.seed_files none)"
        )
    drops = Exclusions()
    with shard_outputs(output) as out, tempfile.TemporaryDirectory(prefix="codemill-teacher-") as work:
        teacher, described = teacher_of(job, io, Path(work))
        evolved = evolve(teacher, seeds, job, ops, context.seed, drops)
        asked = (seeds if cfg.answer_seeds else []) + evolved
        requests = [ops.respond.format(instruction=item.text, language=item.language) for item in asked]
        decoding = Decoding(cfg.response_max_new_tokens)
        responses = teacher.reply(requests, decoding, context.seed) if requests else []
        index = benchmark_index(job.decontam, job.benchmarks) if job.decontam.enabled else None
        kept = kept_pairs(list(zip(asked, responses, strict=True)), seeds, cfg.filter, index, drops)
        records = [record(item, response) for item, response in kept]
        text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
        Path(out.output, TRAIN_FILE).write_text(text, encoding="utf-8")
        drops.write(out.exclusions("part-00000.parquet"))
    report = StageReport(stage="evol")
    report.files_in, report.files_out = len(seeds), len(records)
    report.merge_drops(drops.counts)
    report.metrics = {
        "seeds": float(len(seeds)),
        "evolved": float(len(evolved)),
        "answered": float(len(asked)),
        "kept": float(len(records)),
        "kept_fraction": len(records) / len(asked) if asked else 0.0,
    }
    per_round = Counter(item.round for item, _ in kept)
    report.details = {
        "teacher": described,
        "operations": dict(sorted(Counter(item.operation or "seed" for item, _ in kept).items())),
        "kept_per_round": {str(key): value for key, value in sorted(per_round.items())},
    }
    return report


def read_evolved(directory: str) -> list[dict[str, Any]]:
    """The kept instruction/response records of an evol output."""
    path = Path(directory, TRAIN_FILE)
    if not path.is_file():
        raise StageError(f"{path}: missing (did the evol stage run?)")
    return [record for _, record in iter_jsonl(str(path))]


STAGE = Stage(
    "evol",
    run,
    inputs=(model_input("model"), Input("problems", "dir")),
)

__all__ = ["STAGE", "read_evolved", "read_operations", "run"]
